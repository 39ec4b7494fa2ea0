import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { create } from "@bufbuild/protobuf";
import { EntrySchema, MessageBodySchema } from "../../gen/switchboard/v1/entry_pb.js";
import { type ConnectResponse, ConnectResponseSchema } from "../../gen/switchboard/v1/gateway_pb.js";
import { encodedSizeBound } from "../common/wire-size.js";
import { Outbound } from "./outbound.js";

const KiB = 1024;

function entry(seq: number, bytes: number) {
  return create(EntrySchema, {
    conversationId: "g_00000000000000000000000000",
    seq: BigInt(seq),
    body: { case: "message", value: create(MessageBodySchema, { payload: new Uint8Array(bytes) }) },
  });
}

function messageFrame(bytes: number): ConnectResponse {
  return create(ConnectResponseSchema, { frame: { case: "message", value: { entries: [entry(1, bytes)] } } });
}

function pong(): ConnectResponse {
  return create(ConnectResponseSchema, { frame: { case: "pong", value: { nonce: 1n } } });
}

describe("Outbound: bounded in frames and bytes", () => {
  it("refuses live frames past the byte bound, not only past the frame bound", () => {
    const q = new Outbound({ frames: 1000, bytes: 100 * KiB, frameBytes: 64 * KiB, frameEntries: 64 });
    assert.ok(q.offer(messageFrame(60 * KiB)));
    assert.ok(!q.offer(messageFrame(60 * KiB)), "a second 60 KiB frame passes 100 KiB");
    assert.ok(q.offer(pong()), "a small frame still fits");
    assert.ok(q.bytes <= 100 * KiB);
  });

  it("joins live entries to the last frame only within the frame's byte bound", () => {
    const q = new Outbound({ frames: 1000, bytes: 1024 * KiB, frameBytes: 64 * KiB, frameEntries: 64 });
    assert.ok(q.offerEntries([entry(1, 40 * KiB)]));
    assert.ok(q.offerEntries([entry(2, 40 * KiB)]));
    assert.equal(q.size, 2, "the second entry did not fit in the first frame");
  });

  it("put waits for room and never overfills when producers wake together", async () => {
    const q = new Outbound({ frames: 1000, bytes: 100 * KiB, frameBytes: 64 * KiB, frameEntries: 64 });
    assert.ok(await q.put(messageFrame(60 * KiB)));
    const waiting = [q.put(messageFrame(60 * KiB)), q.put(messageFrame(60 * KiB))];
    await new Promise((r) => setImmediate(r));
    assert.equal(q.size, 1, "both wait while the queue is full");
    const reader = q.drain();
    await reader.next();
    await new Promise((r) => setImmediate(r));
    assert.equal(q.size, 1, "one producer got the room, the other still waits");
    assert.ok(q.bytes <= 100 * KiB);
    q.end();
    assert.deepEqual(await Promise.all(waiting), [true, false]);
  });

  it("lets answers pass the bounds by as much again, then reports the device as not reading", () => {
    const q = new Outbound({ frames: 10, bytes: 100 * KiB, frameBytes: 64 * KiB, frameEntries: 64 });
    let n = 0;
    while (q.force(pong())) n++;
    assert.equal(n, 20, "twice the frame bound");
    assert.ok(q.bytes <= 200 * KiB);
  });

  it("reports a stall when a producer waits stallMs and the device read nothing", async () => {
    let stalls = 0;
    const q = new Outbound(
      { frames: 1000, bytes: 100 * KiB, frameBytes: 64 * KiB, frameEntries: 64, stallMs: 30 },
      () => {
        stalls++;
        q.end();
      },
    );
    assert.ok(await q.put(messageFrame(60 * KiB)));
    const second = q.put(messageFrame(60 * KiB));
    // The stall timer does not hold the process open (it is unref'd); this wait does.
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(await second, false, "the wait ends with the queue");
    assert.equal(stalls, 1);
  });

  it("measures frames by their encoding, unknown fields included", () => {
    const frame = messageFrame(10);
    const inner = frame.frame.value as { entries: Array<{ $unknown?: unknown }> };
    inner.entries[0]!.$unknown = [{ no: 999, wireType: 2, data: new Uint8Array(300 * KiB) }];
    assert.ok(encodedSizeBound(frame) > 300 * KiB);
  });
});

describe("Outbound: a writer takes what is queued in batches", () => {
  it("hands over every frame queued at the time, at most max, and what was queued before the end", async () => {
    const q = new Outbound({ frames: 1000, bytes: 1024 * KiB, frameBytes: 64 * KiB, frameEntries: 64 });
    for (let i = 0; i < 5; i++) q.force(pong());
    assert.equal(await q.framesReady(), true);
    assert.equal(q.takeBatch(3).length, 3);
    assert.equal(q.takeBatch(3).length, 2);
    const waiting = q.framesReady();
    q.force(pong());
    assert.equal(await waiting, true, "a frame queued later wakes the writer");
    q.end(new Error("stream over"));
    assert.equal(await q.framesReady(), true, "queued before the end: still written");
    assert.equal(q.takeBatch(10).length, 1);
    await assert.rejects(q.framesReady(), /stream over/);
    const clean = new Outbound({ frames: 10, bytes: 100 * KiB, frameBytes: 64 * KiB, frameEntries: 64 });
    clean.end();
    assert.equal(await clean.framesReady(), false);
  });

  it("wakes a waiting writer with the end: false when clean, the error otherwise", async () => {
    const limits = { frames: 10, bytes: 100 * KiB, frameBytes: 64 * KiB, frameEntries: 64 };
    const clean = new Outbound(limits);
    const cleanWait = clean.framesReady();
    clean.end();
    assert.equal(await cleanWait, false);
    const failed = new Outbound(limits);
    const failedWait = failed.framesReady();
    failed.end(new Error("stream over"));
    await assert.rejects(failedWait, /stream over/);
    const aborted = new Outbound(limits);
    aborted.force(pong());
    assert.equal(await aborted.framesReady(), true);
    aborted.takeBatch(1);
    const abortedWait = aborted.framesReady();
    aborted.abort(new Error("gone"));
    await assert.rejects(abortedWait, /gone/);
  });

  it("keeps nothing of a taken batch while the writer waits for the next", async () => {
    // Written as a generator, the reader kept its last batch (every entry and payload in it)
    // for as long as the stream stayed quiet: tens of MiB over a few dozen streams after a burst.
    setFlagsFromString("--expose-gc");
    const gc = runInNewContext("gc") as () => void;
    const q = new Outbound({ frames: 1000, bytes: 4096 * KiB, frameBytes: 64 * KiB, frameEntries: 64 });
    let weak: WeakRef<object> | undefined;
    // As services/server/device-stream.ts writes: the batch goes straight to the encoder.
    const encode = (batch: ConnectResponse[]) => {
      weak ??= new WeakRef(batch[0]!);
    };
    const writer = (async () => {
      while (await q.framesReady()) encode(q.takeBatch(100));
    })();
    q.force(messageFrame(1024 * KiB));
    await new Promise((r) => setImmediate(r));
    assert.ok(weak !== undefined, "the writer took the frame");
    gc();
    await new Promise((r) => setImmediate(r));
    gc();
    assert.equal(weak.deref(), undefined, "the taken frame is still referenced while the writer waits");
    q.end();
    await writer;
  });
});
