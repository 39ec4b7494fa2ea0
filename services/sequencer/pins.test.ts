import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { ConnectError } from "@connectrpc/connect";
import { AppendItemSchema } from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import { OutgoingEntrySchema } from "../../gen/switchboard/v1/entry_pb.js";
import { messageItem } from "../../test/helpers/entries.js";
import { InProcessBus } from "../bus/in-process.js";
import { defaultLimits } from "../common/config.js";
import { createLogger } from "../common/log.js";
import { openLmdbStore } from "../store/lmdb/engine.js";
import type { StoreEngine } from "../store/types.js";
import { Sequencer } from "./sequencer.js";

const log = createLogger({ level: "silent" });
const ALICE = "u_0000000000000000000000000a";
const BOB = "u_0000000000000000000000000b";
const DEVICE = "dv_000000000000000000000000a";

function targeted(conversationId: string, clientMsgId: string, body: "pin" | "delete", targetSeq: number) {
  return create(AppendItemSchema, {
    senderUserId: ALICE,
    senderDeviceId: DEVICE,
    entry: create(OutgoingEntrySchema, {
      clientMsgId,
      conversationId,
      body:
        body === "pin"
          ? { case: "pin", value: { targetSeq: BigInt(targetSeq) } }
          : { case: "delete", value: { targetSeq: BigInt(targetSeq) } },
    }),
  });
}

/**
 * Pins racing deletes of the same message in one sequencer on a real store: whichever gets its
 * seq first, a deleted message is never left pinned, in memory or in the store.
 */
describe("pins and deletes of the same message, at once", () => {
  let dir: string;
  let engine: StoreEngine;
  let sequencer: Sequencer;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "pins-test-"));
    engine = await openLmdbStore({ path: dir });
    sequencer = new Sequencer(engine.conversations, new InProcessBus(log), log, {
      shardCount: 2,
      limits: defaultLimits,
    });
  });
  after(async () => {
    await sequencer.close();
    await engine.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("never leaves a deleted message pinned, whichever of the two is ordered first", async () => {
    const { conversationId: id } = await sequencer.createGroup(ALICE, DEVICE, "race", [BOB]);
    for (let round = 0; round < 40; round++) {
      const [sent] = await sequencer.append([
        messageItem({ userId: ALICE, deviceId: DEVICE }, id, `m${round}`, new Uint8Array([round])),
      ]);
      assert.ok(sent !== undefined && !(sent instanceof ConnectError), String(sent));
      // Separate calls, so each waits on its own read of the target before taking a seq.
      const [pin, del] = await Promise.all([
        sequencer.append([targeted(id, `p${round}`, "pin", sent.seq)]),
        sequencer.append([targeted(id, `d${round}`, "delete", sent.seq)]),
      ]);
      const pinned = pin[0]!;
      const deleted = del[0]!;
      assert.ok(!(deleted instanceof ConnectError), `the delete is never refused: ${String(deleted)}`);
      if (pinned instanceof ConnectError) {
        // The delete came first: the pin was refused as of a deleted message.
        assert.match(pinned.rawMessage, /deleted/);
      } else {
        // A pin that read the message before the delete took its seq must come before the
        // delete, or be refused (the check at the seq: pins.ts, checkPinNow).
        assert.ok(
          pinned.seq < deleted.seq,
          `round ${round}: pin #${pinned.seq} after delete #${deleted.seq}`,
        );
      }
      const { conversation } = await sequencer.getConversation(ALICE, DEVICE, id);
      assert.deepEqual(conversation.pins, [], `round ${round}: nothing pinned after the delete`);
    }
    const stored = await engine.conversations.getConversation(id);
    assert.deepEqual(stored?.pins ?? [], [], "the store holds no pin of a deleted message");
  });
});
