import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { CursorUpdate } from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import {
  DeviceCiphertextSchema,
  MessageBodySchema,
  OutgoingEntrySchema,
} from "../../gen/switchboard/v1/entry_pb.js";
import { wireCodeOf } from "../common/boundary.js";
import { createLogger } from "../common/log.js";
import { OverloadError, SendAdmission } from "./admission.js";
import { CursorBatcher, SendBatcher } from "./batchers.js";

describe("SendBatcher", () => {
  it("turns a sequencer that died mid-call into UNAVAILABLE, which devices retry", async () => {
    // What connect-node reports when the sequencer process is killed during the Append call.
    const reset = Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET", syscall: "read" });
    const died = new ConnectError("read ECONNRESET", Code.Aborted, undefined, undefined, reset);
    const batcher = new SendBatcher(
      {
        append: () => Promise.reject(died),
        updateCursors: () => Promise.resolve(),
      },
      createLogger({ level: "silent" }),
    );
    const entry = create(OutgoingEntrySchema, { clientMsgId: "m1", conversationId: "c_x" });
    await assert.rejects(batcher.append("u_a", "dv_a", entry), (err: unknown) => {
      assert.equal(wireCodeOf(err), Code.Unavailable);
      assert.match((err as Error).message, /^sequencer unavailable: /);
      return true;
    });
  });

  it("refuses past the gateway's capacity at once, by throwing, before the next send is read", async () => {
    let answer: (() => void) | undefined;
    const batcher = new SendBatcher(
      {
        append: (items) =>
          new Promise((resolve) => {
            answer = () =>
              resolve(items.map(() => ({ seq: 1n, serverTimeMs: 0n, errorCode: 0, errorMessage: "" })));
          }),
        updateCursors: () => Promise.resolve(),
      },
      createLogger({ level: "silent" }),
      new SendAdmission({ maxInFlight: 1, maxBytesInFlight: 1 << 30, queueTargetMs: 0 }),
    );
    const entry = create(OutgoingEntrySchema, { clientMsgId: "m1", conversationId: "c_x" });
    const first = batcher.append("u_a", "dv_a", entry);
    // Not a rejected promise: a caller learns of the refusal in the same turn, synchronously.
    assert.throws(
      () => batcher.append("u_a", "dv_a", { ...entry, clientMsgId: "m2" }),
      (err: unknown) => err instanceof OverloadError && (err.retryAfterMs ?? 0) > 0,
    );
    await new Promise((r) => setImmediate(r));
    answer?.();
    assert.equal((await first).seq, 1n);
    // Its slot is free again once it was answered.
    const third = batcher.append("u_a", "dv_a", { ...entry, clientMsgId: "m3" });
    await new Promise((r) => setImmediate(r));
    answer?.();
    assert.equal((await third).seq, 1n);
  });

  it("passes a refusal of the whole batch on as it is", async () => {
    const refused = new ConnectError("not this replica's shard", Code.FailedPrecondition);
    const batcher = new SendBatcher(
      { append: () => Promise.reject(refused), updateCursors: () => Promise.resolve() },
      createLogger({ level: "silent" }),
    );
    const entry = create(OutgoingEntrySchema, { clientMsgId: "m2", conversationId: "c_x" });
    await assert.rejects(batcher.append("u_a", "dv_a", entry), (err: unknown) => {
      assert.ok(err instanceof ConnectError);
      assert.equal(err.code, Code.FailedPrecondition);
      return true;
    });
  });

  it("keeps a batch of group sends with many device ids well within the internal request limit", async () => {
    const batches: number[] = [];
    const batcher = new SendBatcher(
      {
        append: async (items) => {
          batches.push(items.length);
          return items.map((_, i) => ({
            seq: BigInt(i + 1),
            serverTimeMs: 0n,
            errorCode: 0,
            errorMessage: "",
          }));
        },
        updateCursors: () => Promise.resolve(),
      },
      createLogger({ level: "silent" }),
    );
    // 60 KiB of payload and key distributions plus 8,000 device entries: about 430 KB each.
    const devicePayloads = Array.from({ length: 8000 }, (_, i) =>
      create(DeviceCiphertextSchema, {
        deviceId: `dv_${String(i).padStart(26, "0")}`,
        registrationId: 1,
        ciphertext: new Uint8Array(i === 0 ? 1 : 0),
      }),
    );
    const entry = create(OutgoingEntrySchema, {
      clientMsgId: "g",
      conversationId: "g_x",
      body: {
        case: "message",
        value: create(MessageBodySchema, { payload: new Uint8Array(60 * 1024), devicePayloads }),
      },
    });
    await Promise.all(Array.from({ length: 200 }, () => batcher.append("u_a", "dv_a", entry)));
    assert.ok(batches.length > 1, "split by bytes, not only by count");
    // 32 MiB of such sends is 76 of them, far below the 500 a batch may otherwise hold.
    assert.ok(Math.max(...batches) <= 77, `batches of ${batches.join(", ")}`);
  });
});

describe("CursorBatcher", () => {
  it("keeps one flush in flight and sends what came meanwhile in the next, so cursors do not queue up behind a slow sequencer", async () => {
    const calls: CursorUpdate[][] = [];
    const answers: Array<() => void> = [];
    const batcher = new CursorBatcher(
      {
        append: () => Promise.reject(new Error("not used")),
        updateCursors: (updates) => {
          calls.push(updates.map((u) => ({ ...u })));
          return new Promise<void>((resolve) => answers.push(resolve));
        },
      },
      createLogger({ level: "silent" }),
      // No timer ticks during the test: the flushes below are the only ones.
      3_600_000,
    );
    batcher.add("u_1", "dv_1", "c_1", 1n, 0n);
    const first = batcher.flush();
    assert.equal(calls.length, 1);
    // Acks arriving while the sequencer is slow, each followed by a flush (as timer ticks would).
    const waiting: Array<Promise<void>> = [];
    for (let seq = 2n; seq <= 100n; seq++) {
      batcher.add("u_1", "dv_1", "c_1", seq, 0n);
      waiting.push(batcher.flush());
    }
    assert.equal(calls.length, 1, "no second call while the first is in flight");
    answers.shift()!();
    await first;
    await new Promise((r) => setImmediate(r));
    assert.equal(calls.length, 2, "what came meanwhile went in one call");
    assert.equal(calls[1]![0]!.deliveredUpTo, 100n, "the second call carries the latest ack");
    answers.shift()!();
    await Promise.all(waiting);
    assert.equal(calls.length, 2);
    await batcher.close();
  });
});
