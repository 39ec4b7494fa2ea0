import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { AppendItemSchema } from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import { MessageBodySchema, OutgoingEntrySchema } from "../../gen/switchboard/v1/entry_pb.js";
import { messageItem } from "../../test/helpers/entries.js";
import { InProcessBus } from "../bus/in-process.js";
import { defaultLimits } from "../common/config.js";
import { createLogger } from "../common/log.js";
import { openLmdbStore } from "../store/lmdb/engine.js";
import type { ConversationStore, StoreEngine } from "../store/types.js";
import { Sequencer } from "./sequencer.js";

const log = createLogger({ level: "silent" });
const ALICE = "u_0000000000000000000000000a";
const BOB = "u_0000000000000000000000000b";
const DEVICE = "dv_000000000000000000000000a";

function item(conversationId: string, clientMsgId: string) {
  return messageItem({ userId: ALICE, deviceId: DEVICE }, conversationId, clientMsgId, new Uint8Array([1]));
}

describe("Sequencer on a real store with injected commit failures", () => {
  let dir: string;
  let engine: StoreEngine;
  let failCommits = 0;
  let sequencer: Sequencer;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "sequencer-test-"));
    engine = await openLmdbStore({ path: dir });
    // The real store, except that the next `failCommits` commits fail like a full disk would.
    const flaky: ConversationStore = Object.create(engine.conversations);
    flaky.commit = async (writes) => {
      if (failCommits > 0) {
        failCommits--;
        throw new Error("injected: disk full");
      }
      return engine.conversations.commit(writes);
    };
    sequencer = new Sequencer(flaky, new InProcessBus(log), log, { shardCount: 4, limits: defaultLimits });
  });
  after(async () => {
    await sequencer.close();
    await engine.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("a failed commit refuses its sends with UNAVAILABLE and leaves no gap and no reused seq", async () => {
    const group = await sequencer.createGroup(ALICE, DEVICE, "g", [BOB]);
    const id = group.conversationId;
    const ok = await sequencer.append(Array.from({ length: 10 }, (_, i) => item(id, `ok${i}`)));
    assert.deepEqual(
      ok.map((r) => ("seq" in r ? r.seq : -1)),
      Array.from({ length: 10 }, (_, i) => i + 2),
    );
    failCommits = 1;
    const failed = await sequencer.append(Array.from({ length: 5 }, (_, i) => item(id, `lost${i}`)));
    for (const r of failed) {
      assert.ok(
        r instanceof ConnectError && r.code === Code.Unavailable,
        `expected UNAVAILABLE, got ${String(r)}`,
      );
    }
    // Retrying the refused sends (same ids) and new ones continue right after seq 11.
    const retried = await sequencer.append(Array.from({ length: 5 }, (_, i) => item(id, `lost${i}`)));
    assert.deepEqual(
      retried.map((r) => ("seq" in r ? r.seq : -1)),
      [12, 13, 14, 15, 16],
    );
    const page = await sequencer.getHistory(ALICE, id, 0, 100);
    assert.deepEqual(
      page.entries.map((e) => Number(e.seq)),
      Array.from({ length: 16 }, (_, i) => i + 1),
    );
    assert.equal(new Set(page.entries.map((e) => e.clientMsgId)).size, 16);
  });

  it("answers an item that failed for an unexpected reason with a bare INTERNAL, never the cause", async () => {
    const group = await sequencer.createGroup(ALICE, DEVICE, "g-internal", [BOB]);
    let failIdempotencyReads = 1;
    // A fresh replica has no recent-send memory, so the dedupe check reads the store.
    const fresh = new Sequencer(
      Object.assign(Object.create(engine.conversations), {
        getIdempotency: async (...args: Parameters<ConversationStore["getIdempotency"]>) => {
          if (failIdempotencyReads > 0) {
            failIdempotencyReads--;
            throw new Error("injected: read timeout at /var/lib/switchboard/store (host 10.0.0.7)");
          }
          return engine.conversations.getIdempotency(...args);
        },
      }) as ConversationStore,
      new InProcessBus(log),
      log,
      { shardCount: 4, limits: defaultLimits },
    );
    const [failed, next] = await fresh.append([
      item(group.conversationId, "x1"),
      item(group.conversationId, "x2"),
    ]);
    await fresh.close();
    assert.ok(failed instanceof ConnectError, `expected a refusal, got ${String(failed)}`);
    assert.equal(failed.code, Code.Internal);
    assert.equal(failed.rawMessage, "internal error");
    assert.doesNotMatch(failed.message, /injected|var\/lib|10\.0\.0\.7/);
    assert.ok(next !== undefined && "seq" in next, "the other item of the batch is not affected");
  });

  it("concurrent retries of one send get one seq, and a retry after restart finds it in the store", async () => {
    const group = await sequencer.createGroup(ALICE, DEVICE, "g2", [BOB]);
    const id = group.conversationId;
    const results = await sequencer.append(Array.from({ length: 8 }, () => item(id, "same")));
    const seqs = new Set(results.map((r) => ("seq" in r ? r.seq : -1)));
    assert.deepEqual([...seqs], [2]);
    const fresh = new Sequencer(engine.conversations, new InProcessBus(log), log, {
      shardCount: 4,
      limits: defaultLimits,
    });
    const [again] = await fresh.append([item(id, "same")]);
    assert.ok(again !== undefined && "seq" in again && again.seq === 2);
    assert.equal((await fresh.getHistory(ALICE, id, 0, 10)).lastSeq, 2);
    await fresh.close();
  });

  it("refuses a non-member and an unknown conversation with one answer", async () => {
    const group = await sequencer.createGroup(BOB, DEVICE, "bob only", []);
    const [denied] = await sequencer.append([item(group.conversationId, "x")]);
    assert.ok(denied instanceof ConnectError && denied.code === Code.PermissionDenied);
    const [missing] = await sequencer.append([item("g_zzzzzzzzzzzzzzzzzzzzzzzzzz", "x")]);
    // Whether a conversation exists is not told to someone outside it (issue 15, finding 4).
    assert.ok(missing instanceof ConnectError && missing.code === Code.PermissionDenied);
    assert.equal(missing.rawMessage, denied.rawMessage);
  });

  it("bounds a history page in bytes as well as entries, one entry at least", async () => {
    const group = await sequencer.createGroup(ALICE, DEVICE, "big", []);
    const big = (n: number) =>
      create(AppendItemSchema, {
        senderUserId: ALICE,
        senderDeviceId: DEVICE,
        entry: create(OutgoingEntrySchema, {
          clientMsgId: `big-${n}`,
          conversationId: group.conversationId,
          body: { case: "message", value: create(MessageBodySchema, { payload: new Uint8Array(40_000) }) },
        }),
      });
    for (const n of [1, 2, 3]) await sequencer.append([big(n)]);
    const page = await sequencer.getHistory(ALICE, group.conversationId, 1, 10, 100_000);
    assert.deepEqual(
      page.entries.map((e) => Number(e.seq)),
      [2, 3],
      "two 40 KB entries fit 100 KB, a third would not",
    );
    assert.equal(page.hasMore, true);
    const tight = await sequencer.getHistory(ALICE, group.conversationId, 1, 10, 1000);
    assert.equal(tight.entries.length, 1, "one entry even when it alone passes the bound");
    const unbounded = await sequencer.getHistory(ALICE, group.conversationId, 1, 10);
    assert.equal(unbounded.entries.length, 3);
  });
});
