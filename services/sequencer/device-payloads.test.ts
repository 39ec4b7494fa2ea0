import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { AppendItemSchema } from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import {
  DeleteBodySchema,
  DeviceCiphertextSchema,
  MessageBodySchema,
  type OutgoingEntry,
  OutgoingEntrySchema,
} from "../../gen/switchboard/v1/entry_pb.js";
import { InProcessBus } from "../bus/in-process.js";
import { defaultLimits } from "../common/config.js";
import { createLogger } from "../common/log.js";
import { openLmdbStore } from "../store/lmdb/engine.js";
import type { StoreEngine } from "../store/types.js";
import { checkDevicePayloads } from "./device-payloads.js";
import { type Appended, Sequencer } from "./sequencer.js";

const log = createLogger({ level: "silent" });
const ALICE = "u_0000000000000000000000000a";
const BOB = "u_0000000000000000000000000b";
const A1 = "dv_000000000000000000000000a1";
const B1 = "dv_000000000000000000000000b1";
const B2 = "dv_000000000000000000000000b2";

function pairwise(conversationId: string, clientMsgId: string, deviceIds: string[]): OutgoingEntry {
  return create(OutgoingEntrySchema, {
    clientMsgId,
    conversationId,
    body: {
      case: "message",
      value: create(MessageBodySchema, {
        devicePayloads: deviceIds.map((deviceId) =>
          create(DeviceCiphertextSchema, {
            deviceId,
            registrationId: 7,
            ciphertext: new Uint8Array([1, 2]),
            type: 2,
          }),
        ),
      }),
    },
  });
}

describe("checkDevicePayloads", () => {
  const limits = { maxPayloadBytes: 10, maxDevicesPerUser: 2 };
  const refused = (entry: OutgoingEntry, pattern: RegExp) =>
    assert.throws(
      () => checkDevicePayloads(entry.body, limits),
      (e: unknown) =>
        e instanceof ConnectError && e.code === Code.InvalidArgument && pattern.test(e.rawMessage),
    );

  it("passes a well-formed set and a body without one", () => {
    checkDevicePayloads(pairwise("d_x", "m", [B1, B2]).body, limits);
    checkDevicePayloads(create(OutgoingEntrySchema).body, limits);
  });

  it("refuses payload with device_payloads, duplicates, bad ids, empty ciphertexts and oversized sets", () => {
    const both = pairwise("d_x", "m", [B1]);
    if (both.body.case === "message") both.body.value.payload = new Uint8Array([1]);
    refused(both, /not both/);
    refused(pairwise("d_x", "m", [B1, B1]), /appears twice/);
    refused(pairwise("d_x", "m", ["nope"]), /device_id/);
    refused(
      pairwise("d_x", "m", [A1, B1, B2, "dv_000000000000000000000000c1", "dv_000000000000000000000000c2"]),
      /at most 4/,
    );
    const empty = pairwise("d_x", "m", [B1]);
    if (empty.body.case === "message") empty.body.value.devicePayloads[0]!.ciphertext = new Uint8Array();
    refused(empty, /ciphertext: required/);
    const zero = pairwise("d_x", "m", [B1]);
    if (zero.body.case === "message") zero.body.value.devicePayloads[0]!.registrationId = 0;
    refused(zero, /registration_id/);
    const big = pairwise("d_x", "m", [B1, B2]);
    if (big.body.case === "message") big.body.value.devicePayloads[0]!.ciphertext = new Uint8Array(9);
    refused(big, /11 bytes together; the limit is 10/);
  });
});

describe("Sequencer with per-device ciphertexts", () => {
  let dir: string;
  let engine: StoreEngine;
  let sequencer: Sequencer;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "device-payloads-test-"));
    engine = await openLmdbStore({ path: dir });
    sequencer = new Sequencer(engine.conversations, new InProcessBus(log), log, {
      shardCount: 4,
      limits: defaultLimits,
    });
  });
  after(async () => {
    await sequencer.close();
    await engine.close();
    await rm(dir, { recursive: true, force: true });
  });

  async function append(entry: OutgoingEntry): Promise<Appended> {
    const [r] = await sequencer.append([
      create(AppendItemSchema, { senderUserId: ALICE, senderDeviceId: A1, entry }),
    ]);
    if (r instanceof ConnectError) throw r;
    return r!;
  }

  it("stores every ciphertext, and a delete for everyone leaves none in the store", async () => {
    const { conversationId: id } = await sequencer.openDirect(ALICE, BOB, A1);
    const sent = await append(pairwise(id, "m1", [B1, B2]));
    const [stored] = await engine.conversations.readEntries(id, sent.seq - 1, 1);
    assert.ok(stored?.body.case === "message");
    assert.equal(stored.body.value.devicePayloads.length, 2, "the log keeps every device's ciphertext");
    await append(
      create(OutgoingEntrySchema, {
        clientMsgId: "m2",
        conversationId: id,
        body: { case: "delete", value: create(DeleteBodySchema, { targetSeq: BigInt(sent.seq) }) },
      }),
    );
    const [tomb] = await engine.conversations.readEntries(id, sent.seq - 1, 1);
    assert.equal(tomb?.redacted, true);
    assert.ok(tomb?.body.case === "message");
    assert.equal(tomb.body.value.devicePayloads.length, 0);
  });

  it("refuses per-device ciphertexts in a group", async () => {
    const group = await sequencer.createGroup(ALICE, A1, "g", [BOB]);
    await assert.rejects(append(pairwise(group.conversationId, "g1", [B1])), (e: unknown) => {
      return (
        e instanceof ConnectError && e.code === Code.InvalidArgument && /only in direct/.test(e.rawMessage)
      );
    });
  });
});
