import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, it, mock } from "node:test";
import { create } from "@bufbuild/protobuf";
import { type Entry, EntrySchema } from "../gen/switchboard/v1/entry_pb.js";
import { ReorderBuffer, type ReorderOptions } from "./reorder.js";

function entry(conversationId: string, seq: number): Entry {
  return create(EntrySchema, {
    conversationId,
    seq: BigInt(seq),
    body: { case: "message", value: { payload: new TextEncoder().encode(`m${seq}`) } },
  });
}

function seqs(entries: readonly Entry[]): number[] {
  return entries.map((e) => Number(e.seq));
}

interface Harness {
  buffer: ReorderBuffer;
  syncs: Array<{ conversationId: string; afterSeq: bigint; limit: number }>;
  duplicates: Array<{ conversationId: string; seq: bigint }>;
}

function harness(initial: Array<[string, bigint]> = [], extra: Partial<ReorderOptions> = {}): Harness {
  const syncs: Harness["syncs"] = [];
  const duplicates: Harness["duplicates"] = [];
  const buffer = new ReorderBuffer(initial, {
    gapTimeoutMs: 500,
    pageSize: 100,
    requestSync: (conversationId, afterSeq, limit) => syncs.push({ conversationId, afterSeq, limit }),
    onDuplicate: (conversationId, seq) => duplicates.push({ conversationId, seq }),
    ...extra,
  });
  return { buffer, syncs, duplicates };
}

describe("ReorderBuffer", () => {
  beforeEach(() => mock.timers.enable({ apis: ["setTimeout"] }));
  afterEach(() => mock.timers.reset());

  it("releases in-order entries at once", () => {
    const { buffer, syncs } = harness([["d_a", 0n]]);
    assert.deepEqual(seqs(buffer.offer([entry("d_a", 1), entry("d_a", 2), entry("d_a", 3)])), [1, 2, 3]);
    assert.equal(buffer.cursor("d_a"), 3n);
    assert.equal(syncs.length, 0);
  });

  it("holds out-of-order entries until the gap fills, then releases them in order", () => {
    const { buffer } = harness([["d_a", 0n]]);
    assert.deepEqual(seqs(buffer.offer([entry("d_a", 3)])), []);
    assert.deepEqual(seqs(buffer.offer([entry("d_a", 2)])), []);
    assert.equal(buffer.heldCount("d_a"), 2);
    assert.deepEqual(seqs(buffer.offer([entry("d_a", 1)])), [1, 2, 3]);
    assert.equal(buffer.heldCount("d_a"), 0);
  });

  it("drops duplicates, below the cursor and among held entries, and reports them", () => {
    const { buffer, duplicates } = harness([["d_a", 5n]]);
    assert.deepEqual(seqs(buffer.offer([entry("d_a", 4), entry("d_a", 5)])), []);
    assert.deepEqual(seqs(buffer.offer([entry("d_a", 7), entry("d_a", 7)])), []);
    assert.deepEqual(seqs(buffer.offer([entry("d_a", 6), entry("d_a", 6)])), [6, 7]);
    assert.deepEqual(
      duplicates.map((d) => Number(d.seq)),
      [4, 5, 7, 6],
    );
  });

  it("keeps conversations independent", () => {
    const { buffer } = harness([
      ["d_a", 0n],
      ["g_b", 10n],
    ]);
    const out = buffer.offer([entry("g_b", 12), entry("d_a", 1), entry("g_b", 11), entry("d_a", 2)]);
    assert.deepEqual(
      out.map((e) => `${e.conversationId}:${e.seq}`),
      ["d_a:1", "g_b:11", "g_b:12", "d_a:2"],
    );
  });

  it("takes the first entry of an unknown conversation as its start (joined late)", () => {
    const { buffer, syncs } = harness();
    assert.deepEqual(seqs(buffer.offer([entry("g_x", 17), entry("g_x", 18)])), [17, 18]);
    assert.equal(buffer.cursor("g_x"), 18n);
    assert.equal(syncs.length, 0);
    // Older entries arriving later are duplicates, not a reason to go back.
    assert.deepEqual(seqs(buffer.offer([entry("g_x", 16)])), []);
  });

  it("requests a gap at once with the last released seq, and once only while it is out", () => {
    const { buffer, syncs } = harness([["d_a", 2n]]);
    buffer.offer([entry("d_a", 5)]);
    assert.deepEqual(syncs, [{ conversationId: "d_a", afterSeq: 2n, limit: 100 }]);
    buffer.offer([entry("d_a", 6)]);
    assert.equal(syncs.length, 1);
  });

  it("asks again when the gap is still open after the timeout, and not when live traffic filled it", () => {
    const a = harness([["d_a", 0n]]);
    a.buffer.offer([entry("d_a", 3)]);
    assert.equal(a.syncs.length, 1);
    mock.timers.tick(499);
    assert.equal(a.syncs.length, 1);
    mock.timers.tick(1);
    assert.equal(a.syncs.length, 2);
    assert.equal(a.syncs[1]?.afterSeq, 0n);
    // The retry interval doubles.
    mock.timers.tick(999);
    assert.equal(a.syncs.length, 2);
    mock.timers.tick(1);
    assert.equal(a.syncs.length, 3);

    const b = harness([["d_b", 0n]]);
    b.buffer.offer([entry("d_b", 3)]);
    assert.deepEqual(seqs(b.buffer.offer([entry("d_b", 1), entry("d_b", 2)])), [1, 2, 3]);
    mock.timers.tick(5_000);
    assert.equal(b.syncs.length, 1);
  });

  it("fills a gap from a sync page and releases held entries behind it", () => {
    const { buffer } = harness([["d_a", 1n]]);
    buffer.offer([entry("d_a", 4), entry("d_a", 5)]);
    const out = buffer.answer({
      conversationId: "d_a",
      afterSeq: 1n,
      entries: [entry("d_a", 2), entry("d_a", 3), entry("d_a", 4)],
      lastSeq: 5n,
      hasMore: true,
      errorCode: 0,
    });
    assert.deepEqual(seqs(out), [2, 3, 4, 5]);
    assert.equal(buffer.cursor("d_a"), 5n);
  });

  it("pages on while the server says there is more", () => {
    const { buffer, syncs } = harness([["d_a", 0n]]);
    buffer.offer([entry("d_a", 10)]);
    assert.equal(syncs.length, 1);
    const out = buffer.answer({
      conversationId: "d_a",
      afterSeq: 0n,
      entries: [entry("d_a", 1), entry("d_a", 2), entry("d_a", 3)],
      lastSeq: 10n,
      hasMore: true,
      errorCode: 0,
    });
    assert.deepEqual(seqs(out), [1, 2, 3]);
    assert.deepEqual(syncs[1], { conversationId: "d_a", afterSeq: 3n, limit: 100 });
  });

  it("skips seqs an authoritative page leaves out (not visible to this device)", () => {
    const { buffer, syncs } = harness([["g_a", 20n]]);
    buffer.offer([entry("g_a", 31)]);
    const out = buffer.answer({
      conversationId: "g_a",
      afterSeq: 20n,
      entries: [entry("g_a", 30), entry("g_a", 31)],
      lastSeq: 31n,
      hasMore: false,
      errorCode: 0,
    });
    assert.deepEqual(seqs(out), [30, 31]);
    mock.timers.tick(10_000);
    assert.equal(syncs.length, 1);
  });

  it("jumps over an invisible stretch inside a page and pages on from its end", () => {
    const { buffer, syncs } = harness([["g_a", 20n]]);
    buffer.offer([entry("g_a", 40)]);
    assert.equal(syncs.length, 1);
    const out = buffer.answer({
      conversationId: "g_a",
      afterSeq: 20n,
      entries: [entry("g_a", 25), entry("g_a", 26)],
      lastSeq: 40n,
      hasMore: true,
      errorCode: 0,
    });
    assert.deepEqual(seqs(out), [25, 26]);
    assert.deepEqual(syncs[1], { conversationId: "g_a", afterSeq: 26n, limit: 100 });
  });

  it("does not chase a last_seq it cannot see", () => {
    const { buffer, syncs } = harness([["g_a", 21n]]);
    const out = buffer.answer({
      conversationId: "g_a",
      afterSeq: 21n,
      entries: [],
      lastSeq: 30n,
      hasMore: false,
      errorCode: 0,
    });
    assert.deepEqual(out, []);
    mock.timers.tick(10_000);
    assert.equal(syncs.length, 0);
    assert.deepEqual(buffer.gaps(), []);
  });

  it("stops fetching a conversation the device may no longer read", () => {
    const { buffer, syncs } = harness([["g_a", 3n]]);
    buffer.offer([entry("g_a", 9)]);
    buffer.answer({
      conversationId: "g_a",
      afterSeq: 3n,
      entries: [],
      lastSeq: 0n,
      hasMore: false,
      errorCode: 7,
    });
    mock.timers.tick(10_000);
    assert.equal(syncs.length, 1);
    assert.equal(buffer.heldCount("g_a"), 0);
  });

  it("retries after a transient sync error on the timer", () => {
    const { buffer, syncs } = harness([["g_a", 3n]]);
    buffer.offer([entry("g_a", 9)]);
    buffer.answer({
      conversationId: "g_a",
      afterSeq: 3n,
      entries: [],
      lastSeq: 0n,
      hasMore: false,
      errorCode: 14,
    });
    mock.timers.tick(500);
    assert.equal(syncs.length, 2);
  });

  it("pauses with the stream and asks for open gaps again on resume", () => {
    const { buffer, syncs } = harness([["d_a", 0n]]);
    buffer.offer([entry("d_a", 2)]);
    assert.equal(syncs.length, 1);
    buffer.pause();
    mock.timers.tick(10_000);
    assert.equal(syncs.length, 1);
    buffer.resume();
    assert.equal(syncs.length, 2);
    assert.deepEqual(buffer.gaps(), [{ conversationId: "d_a", afterSeq: 0n }]);
  });

  it("bounds held entries; dropped ones come back through sync", () => {
    const { buffer } = harness([["d_a", 0n]], { maxBufferedPerConversation: 2 });
    buffer.offer([entry("d_a", 2), entry("d_a", 3), entry("d_a", 4)]);
    assert.equal(buffer.heldCount("d_a"), 2);
    assert.deepEqual(seqs(buffer.offer([entry("d_a", 1)])), [1, 2, 3]);
    const out = buffer.answer({
      conversationId: "d_a",
      afterSeq: 0n,
      entries: [entry("d_a", 1), entry("d_a", 2), entry("d_a", 3), entry("d_a", 4)],
      lastSeq: 4n,
      hasMore: false,
      errorCode: 0,
    });
    assert.deepEqual(seqs(out), [4]);
  });

  describe("own entries filed at send_ack", () => {
    const page = (afterSeq: bigint, list: Entry[], lastSeq: number, hasMore = false) => ({
      conversationId: "g_a",
      afterSeq,
      entries: list,
      lastSeq: BigInt(lastSeq),
      hasMore,
      errorCode: 0,
    });

    it("in a conversation the device has seen, go out in order like any entry", () => {
      const { buffer, syncs } = harness([["g_a", 3n]]);
      assert.deepEqual(seqs(buffer.offerOwn(entry("g_a", 4))), [4]);
      assert.deepEqual(seqs(buffer.offerOwn(entry("g_a", 6))), []);
      assert.deepEqual(syncs, [{ conversationId: "g_a", afterSeq: 4n, limit: 100 }]);
    });

    it("seq 1 starts any conversation: it goes out at once", () => {
      const { buffer, syncs } = harness();
      assert.deepEqual(seqs(buffer.offerOwn(entry("d_b", 1))), [1]);
      assert.equal(syncs.length, 0);
    });

    it("in a conversation new to the device, wait for its start: the stream's first entry", () => {
      // A group the device was just added to: its own send is answered before the group's
      // first entry reaches it. The own entry must not become the start.
      const { buffer, syncs } = harness();
      assert.deepEqual(seqs(buffer.offerOwn(entry("g_a", 2))), []);
      assert.equal(buffer.cursor("g_a"), undefined);
      assert.deepEqual(syncs, [{ conversationId: "g_a", afterSeq: 0n, limit: 100 }]);
      assert.deepEqual(buffer.gaps(), [{ conversationId: "g_a", afterSeq: 0n }]);
      assert.deepEqual(seqs(buffer.offer([entry("g_a", 1)])), [1, 2]);
      assert.deepEqual(buffer.gaps(), []);
      // The sync asked for meanwhile answers with nothing new.
      assert.deepEqual(seqs(buffer.answer(page(0n, [entry("g_a", 1), entry("g_a", 2)], 2))), []);
      assert.equal(buffer.cursor("g_a"), 2n);
    });

    it("in a conversation new to the device, or the answer from the log's start", () => {
      const { buffer } = harness();
      buffer.offerOwn(entry("g_a", 2));
      assert.deepEqual(seqs(buffer.answer(page(0n, [entry("g_a", 1), entry("g_a", 2)], 2))), [1, 2]);
      // The stream's copy of either comes later and is a duplicate.
      assert.deepEqual(seqs(buffer.offer([entry("g_a", 1)])), []);
    });

    it("joined later: the log's first visible entry is the start, and the own entry follows it", () => {
      const { buffer } = harness();
      buffer.offerOwn(entry("g_a", 8));
      assert.deepEqual(seqs(buffer.answer(page(0n, [entry("g_a", 5), entry("g_a", 6)], 8, true))), [5, 6]);
      assert.deepEqual(seqs(buffer.answer(page(6n, [entry("g_a", 7), entry("g_a", 8)], 8))), [7, 8]);
    });

    it("the stream's first entry past a held own entry drops it (the stream counts it pushed)", () => {
      const { buffer } = harness();
      buffer.offerOwn(entry("g_a", 2));
      assert.deepEqual(seqs(buffer.offer([entry("g_a", 3)])), [3]);
      assert.equal(buffer.heldCount("g_a"), 0);
      assert.deepEqual(buffer.gaps(), []);
    });

    it("ask for the start again when the answer is lost, and on a new stream", () => {
      const { buffer, syncs } = harness();
      buffer.offerOwn(entry("g_a", 2));
      mock.timers.tick(500);
      assert.equal(syncs.length, 2);
      assert.equal(syncs[1]?.afterSeq, 0n);
      buffer.pause();
      buffer.resume();
      assert.equal(syncs.length, 3);
    });
  });
});
