import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { create, fromBinary, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { AppendItemSchema } from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import {
  DeleteBodySchema,
  type Entry,
  EntrySchema,
  MembershipBodySchema,
  MessageBodySchema,
  type OutgoingEntry,
  OutgoingEntrySchema,
  ReactionBodySchema,
} from "../../gen/switchboard/v1/entry_pb.js";
import { messageItem } from "../../test/helpers/entries.js";
import { InProcessBus } from "../bus/in-process.js";
import { defaultLimits } from "../common/config.js";
import { entryBytes as encodedEntry } from "../common/entry-bytes.js";
import { createLogger } from "../common/log.js";
import { openLmdbStore } from "../store/lmdb/engine.js";
import type { ConversationStore, StoreEngine } from "../store/types.js";
import { ConversationState, RECENT_KEYS, SENDER_SEQS, TAIL_ENTRIES } from "./conversation.js";
import {
  MIN_BUFFER_BYTES,
  OFFSET_BYTES,
  REPLACED_OVERHEAD_BYTES,
  TAIL_OVERHEAD_BYTES,
} from "./encoded-tail.js";
import {
  EVICT_TO,
  HotStateBudget,
  KEY_OVERHEAD_BYTES,
  MEMBER_BYTES,
  SENDER_SLOT_BYTES,
  STATE_OVERHEAD_BYTES,
  type StateOwner,
} from "./hot-state.js";
import { Sequencer } from "./sequencer.js";

const log = createLogger({ level: "silent" });
const ALICE = "u_0000000000000000000000000a";
const BOB = "u_0000000000000000000000000b";
const DEVICE = "dv_000000000000000000000000a";

function entry(seq: number, payloadBytes: number): Entry {
  return create(EntrySchema, {
    conversationId: "g_x",
    seq: BigInt(seq),
    serverTimeMs: BigInt(1000 + seq),
    body: { case: "message", value: create(MessageBodySchema, { payload: new Uint8Array(payloadBytes) }) },
  });
}

function state(id = "g_x"): ConversationState {
  return new ConversationState(id, undefined, new Map(), 0);
}

/** Appends n entries as the sequencer does: assigned, then committed. */
function fill(s: ConversationState, n: number, payloadBytes: number): void {
  for (let i = 0; i < n; i++) {
    s.lastSeq++;
    s.pushTail(entry(s.lastSeq, payloadBytes));
  }
  s.committedSeq = s.lastSeq;
}

/** Owns states like a shard: drops them when idle and committed. */
class Owner implements StateOwner {
  readonly dropped: ConversationState[] = [];
  idle(s: ConversationState): boolean {
    return s.busy === 0 && s.committedSeq === s.lastSeq && !this.dropped.includes(s);
  }
  drop(s: ConversationState): boolean {
    if (!this.idle(s)) return false;
    this.dropped.push(s);
    return true;
  }
}

describe("ConversationState byte accounting", () => {
  it("keeps tail entries as their encoding, counted by its size, holding nothing of the request", () => {
    // A request decoded from one buffer: its payload is a view into the whole of it.
    const big = entry(1, 1000);
    const request = new Uint8Array(1_000_000);
    const encoded = toBinary(EntrySchema, big);
    request.set(encoded, 500);
    const decoded = fromBinary(EntrySchema, request.subarray(500, 500 + encoded.length));
    assert.equal(decoded.body.case, "message");
    const payloadBefore = decoded.body.case === "message" ? decoded.body.value.payload : undefined;
    assert.equal(payloadBefore?.buffer.byteLength, 1_000_000, "decoded bytes are a view (the premise)");

    const s = state();
    const empty = s.bytes();
    assert.equal(empty, STATE_OVERHEAD_BYTES);
    s.lastSeq = 1;
    s.pushTail(decoded);
    const back = s.fromTail(1);
    assert.ok(back !== undefined && back !== decoded, "read back as a new object");
    assert.deepEqual(back, decoded);
    const payload = back.body.case === "message" ? back.body.value.payload : undefined;
    assert.equal(payload?.byteLength, 1000);
    assert.equal(payload?.buffer.byteLength, encoded.length, "the tail holds only the entry's encoding");
    assert.deepEqual(encodedEntry(back), encoded);
    assert.equal(encodedEntry(back).buffer, payload?.buffer, "read back, it is not encoded again");
    // The tail's first buffer has room for the entry twice over; nothing else grows but the
    // entry's offset and its sender's slot.
    assert.equal(
      s.tailBytes,
      TAIL_OVERHEAD_BYTES + Math.max(MIN_BUFFER_BYTES, 2 * encoded.length) + OFFSET_BYTES,
    );
    assert.equal(s.bytes() - empty, s.tailBytes + SENDER_SLOT_BYTES);
    assert.equal(s.lastServerTimeMs, 1001);
    assert.equal(s.fromTail(0), undefined);
    assert.equal(s.fromTail(2), undefined);
  });

  it("reads the tail after a seq, a limited number at a time", () => {
    const s = state();
    fill(s, 10, 10);
    const seqs = (entries: Entry[]) => entries.map((e) => Number(e.seq));
    assert.deepEqual(seqs(s.tailAfter(0)), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert.deepEqual(seqs(s.tailAfter(7)), [8, 9, 10]);
    assert.deepEqual(seqs(s.tailAfter(3, 2)), [4, 5]);
    assert.deepEqual(seqs(s.tailAfter(10)), []);
    s.shed();
    s.lastSeq++;
    s.pushTail(entry(11, 10));
    assert.equal(s.tailStart(), 11, "a tail emptied and filled again starts at its first entry");
    assert.deepEqual(seqs(s.tailAfter(0)), [11]);
    assert.equal(Number(s.fromTail(11)?.seq), 11);
  });

  it("keeps the count right when the tail passes its entry limit", () => {
    const s = state();
    fill(s, TAIL_ENTRIES + 50, 100);
    assert.equal(s.tailLength, TAIL_ENTRIES);
    assert.equal(Number(s.tailAfter(0)[0]?.seq), 51, "the oldest went");
    // The senders' list is trimmed on its own schedule (below): SENDER_SEQS slots or more, fewer
    // than twice that.
    const slots = (s.bytes() - STATE_OVERHEAD_BYTES - s.tailBytes) / SENDER_SLOT_BYTES;
    assert.ok(Number.isInteger(slots) && slots >= SENDER_SEQS && slots < 2 * SENDER_SEQS, `${slots} slots`);
  });

  it("counts idempotency keys once each, members and cursors by number", () => {
    const s = state();
    s.remember("dv_a\nm1", { seq: 1, serverTimeMs: 1, durable: undefined });
    s.remember("dv_a\nm1", { seq: 1, serverTimeMs: 1, durable: undefined });
    assert.equal(s.bytes() - STATE_OVERHEAD_BYTES, KEY_OVERHEAD_BYTES + 2 * "dv_a\nm1".length);
    s.members.set(ALICE, {
      userId: ALICE,
      role: "admin",
      joinedSeq: 1,
      addedAtMs: 0,
      deliveredUpTo: 0,
      readUpTo: 0,
    });
    assert.equal(s.bytes() - STATE_OVERHEAD_BYTES, KEY_OVERHEAD_BYTES + 14 + MEMBER_BYTES);
  });

  it("sheds committed entries only, gives their memory back, and counts a tombstone while its entry stays", () => {
    const s = state();
    fill(s, 10, 5000);
    s.lastSeq++;
    s.pushTail(entry(11, 5000)); // assigned, not yet committed
    const before = s.bytes();
    const tomb = create(EntrySchema, { ...entry(3, 0), redacted: true });
    s.replaceTail(tomb);
    assert.equal(s.bytes(), before + REPLACED_OVERHEAD_BYTES + toBinary(EntrySchema, tomb).length);
    assert.equal(s.fromTail(3)?.redacted, true, "the tail reads the tombstone back");
    assert.equal(s.fromTail(4)?.redacted, false);
    assert.equal(s.shed(), 10);
    assert.deepEqual(
      s.tailAfter(0).map((e) => Number(e.seq)),
      [11],
      "the uncommitted entry stays",
    );
    assert.equal(s.tailStart(), 11);
    // The senders outlive the tail: a pointer per seq.
    const senders = 11 * SENDER_SLOT_BYTES;
    // The tombstone went with its entry, and the buffer holds the one entry left, no more.
    const left = toBinary(EntrySchema, entry(11, 5000)).length;
    assert.equal(s.tailBytes, TAIL_OVERHEAD_BYTES + left + OFFSET_BYTES);
    assert.equal(s.bytes(), STATE_OVERHEAD_BYTES + s.tailBytes + senders);
    assert.equal(Number(s.fromTail(11)?.seq), 11);
    s.committedSeq = 11;
    assert.equal(s.shed(), 1);
    assert.equal(s.bytes(), STATE_OVERHEAD_BYTES + senders);
    assert.equal(s.tailStart(), 12, "an empty tail starts after lastSeq");
  });
});

describe("ConversationState's idempotency keys", () => {
  const sent = (seq: number, durable?: Promise<void>) => ({ seq, serverTimeMs: 1, durable });
  const keys = (s: ConversationState) => [...s.recent.keys()];

  it("forgets only durable keys remembered before the oldest operation in flight began", () => {
    const s = state();
    s.remember("k1", sent(1));
    s.remember("k2", sent(2));
    const first = s.begin(); // may have missed k3 and later in the store: they stay while it runs
    s.remember("k3", sent(3));
    const second = s.begin();
    s.remember("k4", sent(4));
    assert.equal(s.forgetSettledKeys(), 2);
    assert.deepEqual(keys(s), ["k3", "k4"]);
    s.end(second);
    assert.equal(s.forgetSettledKeys(), 0, "the first operation still holds k3 and k4");
    s.end(first);
    assert.equal(s.busy, 0);
    // A key whose commit is not durable yet stays, and every key after it.
    let durable!: () => void;
    s.remember("k5", sent(5, new Promise<void>((resolve) => (durable = resolve))));
    s.remember("k6", sent(6));
    assert.equal(s.forgetSettledKeys(), 2);
    assert.deepEqual(keys(s), ["k5", "k6"]);
    durable();
    s.recent.get("k5")!.durable = undefined;
    assert.equal(s.forgetSettledKeys(), 2);
    assert.equal(s.bytes(), STATE_OVERHEAD_BYTES, "and their bytes went with them");
  });

  it("keeps the marks right when the oldest keys go for the count limit", () => {
    const s = state();
    for (let i = 0; i < 10; i++) s.remember(`a${i}`, sent(i));
    const op = s.begin();
    for (let i = 0; i < RECENT_KEYS; i++) s.remember(`b${i}`, sent(i));
    assert.equal(s.recent.size, RECENT_KEYS);
    assert.equal(keys(s)[0], "b0", "the ten oldest went for the limit");
    assert.equal(s.forgetSettledKeys(), 0, "every key left came after the operation began");
    s.end(op);
    assert.equal(s.forgetSettledKeys(), RECENT_KEYS);
  });
});

describe("ConversationState's senders, for receipts", () => {
  const CAROL = "u_0000000000000000000000000c";

  function member(userId: string) {
    return { userId, role: "member" as const, joinedSeq: 1, addedAtMs: 0, deliveredUpTo: 0, readUpTo: 0 };
  }

  /** Assigns an entry as the sequencer does. */
  function assign(s: ConversationState, init: MessageInitShape<typeof EntrySchema>): void {
    s.lastSeq++;
    s.pushTail(create(EntrySchema, { conversationId: s.id, seq: BigInt(s.lastSeq), ...init }));
  }

  function message(senderUserId: string): MessageInitShape<typeof EntrySchema> {
    return { senderUserId, body: { case: "message", value: create(MessageBodySchema, {}) } };
  }

  it("names the senders of a range but the one asking, without membership changes, after the tail is shed", () => {
    const s = new ConversationState(
      "g_x",
      undefined,
      new Map([ALICE, BOB, CAROL].map((u) => [u, member(u)])),
      0,
    );
    assign(s, { senderUserId: ALICE, body: { case: "membership", value: create(MembershipBodySchema, {}) } });
    assign(s, message(ALICE));
    assign(s, message(BOB));
    assign(s, message(ALICE));
    assign(s, message(CAROL));
    s.committedSeq = s.lastSeq;
    assert.equal(s.shed(), 5);
    assert.deepEqual(s.receiptSenders(0, 5, BOB)?.sort(), [ALICE, CAROL]);
    assert.deepEqual(s.receiptSenders(0, 1, BOB), [], "a membership change earns no receipt");
    assert.deepEqual(s.receiptSenders(2, 3, BOB), []);
    assert.deepEqual(s.receiptSenders(1, 4, ALICE), [BOB]);
    assert.equal(s.receiptSenders(3, 6, BOB), undefined, "past lastSeq");
    // A tombstone keeps its sender.
    s.replaceTail(create(EntrySchema, { ...message(CAROL), conversationId: "g_x", seq: 5n, redacted: true }));
    assert.deepEqual(s.receiptSenders(4, 5, BOB), [CAROL]);
  });

  it("cannot vouch for entries that expire, nor for seqs before it was loaded", () => {
    const s = new ConversationState("g_x", undefined, new Map([ALICE, BOB].map((u) => [u, member(u)])), 10);
    assign(s, message(ALICE));
    assign(s, { ...message(ALICE), expiresAtMs: 5000n });
    assign(s, message(ALICE));
    assert.deepEqual(s.receiptSenders(10, 11, BOB), [ALICE]);
    assert.equal(s.receiptSenders(9, 11, BOB), undefined, "seq 10 was written before the state was loaded");
    assert.equal(s.receiptSenders(10, 13, BOB), undefined, "seq 12 reads as a stub once expired");
    assert.deepEqual(s.receiptSenders(12, 13, BOB), [ALICE]);
  });

  it("keeps at least SENDER_SEQS seqs and at most twice that, counted in its bytes", () => {
    const s = state();
    s.members.set(ALICE, member(ALICE));
    for (let i = 0; i < 5 * SENDER_SEQS + 3; i++) {
      assign(s, message(ALICE));
      s.committedSeq = s.lastSeq;
      s.shed();
      const held = (s.bytes() - STATE_OVERHEAD_BYTES - MEMBER_BYTES) / SENDER_SLOT_BYTES;
      assert.ok(held <= 2 * SENDER_SEQS, `${held} slots after ${s.lastSeq} entries`);
      assert.ok(held >= Math.min(s.lastSeq, SENDER_SEQS), `${held} slots after ${s.lastSeq} entries`);
    }
    assert.deepEqual(s.receiptSenders(s.lastSeq - SENDER_SEQS, s.lastSeq, BOB), [ALICE]);
    assert.equal(s.receiptSenders(0, s.lastSeq, BOB), undefined);
  });
});

describe("HotStateBudget", () => {
  it("sheds the tails of the least recently used conversations first, until within the budget", () => {
    const owner = new Owner();
    const probe = state();
    fill(probe, 4, 10_000);
    const tailBytes = probe.tailBytes;
    // Room, once an eviction is done, for six conversations, three of them with their tails.
    const budget = new HotStateBudget(
      Math.ceil((6 * (STATE_OVERHEAD_BYTES + 4 * SENDER_SLOT_BYTES) + 3 * tailBytes) / EVICT_TO),
    );
    const states = ["a", "b", "c", "d", "e"].map((id) => state(id));
    for (const s of states) {
      s.busy++;
      budget.touch(s, owner);
      fill(s, 4, 10_000);
      s.busy--;
      budget.settle(s);
    }
    const tails = () => Object.fromEntries(states.map((s) => [s.id, s.tailLength]));
    assert.deepEqual(tails(), { a: 0, b: 0, c: 4, d: 4, e: 4 });
    assert.equal(owner.dropped.length, 0, "shedding tails was enough");
    assert.equal(budget.heldBytes, 5 * STATE_OVERHEAD_BYTES + 3 * tailBytes + 5 * 4 * SENDER_SLOT_BYTES);
    assert.equal(budget.metrics.evictedEntries, 8);
    // Using "c" again makes "d" the oldest tail.
    budget.touch(states[2]!, owner);
    const f = state("f");
    budget.touch(f, owner);
    fill(f, 4, 10_000);
    budget.settle(f);
    assert.deepEqual(tails(), { a: 0, b: 0, c: 4, d: 0, e: 4 });
    assert.ok(budget.heldBytes <= budget.limitBytes);
  });

  it("then drops idle conversations whole (members of large groups and all), least recently used first", () => {
    const owner = new Owner();
    const budget = new HotStateBudget(2 * (STATE_OVERHEAD_BYTES + 1000 * MEMBER_BYTES));
    const groups = ["a", "b", "c", "d"].map((id) => {
      const s = state(id);
      for (let i = 0; i < 1000; i++)
        s.members.set(`u_${i}`, {
          userId: `u_${i}`,
          role: "member",
          joinedSeq: 1,
          addedAtMs: 0,
          deliveredUpTo: 0,
          readUpTo: 0,
        });
      return s;
    });
    groups[0]!.busy = 1; // in use: never dropped
    for (const s of groups) {
      budget.touch(s, owner);
      budget.settle(s);
    }
    assert.deepEqual(
      owner.dropped.map((s) => s.id),
      ["b", "c"],
    );
    assert.equal(budget.metrics.evictedConversations, 2);
    assert.equal(budget.conversations, 2);
    assert.ok(budget.heldBytes <= budget.limitBytes);
  });

  it("makes conversations forget the keys no operation needs before dropping any whole", () => {
    const owner = new Owner();
    const key = (i: number) => `dv_a\nm${String(i).padStart(4, "0")}`;
    const keyBytes = KEY_OVERHEAD_BYTES + 2 * key(0).length;
    // Room for four states, one of them with its keys.
    const budget = new HotStateBudget(4 * STATE_OVERHEAD_BYTES + 150 * keyBytes);
    const states = ["a", "b", "c", "d"].map((id) => state(id));
    // In use by an operation that began before its keys came: they stay. ("b" is in use too, by
    // one that began after them: they go.)
    states[2]!.begin();
    for (const s of states) {
      budget.touch(s, owner);
      for (let i = 0; i < 100; i++) s.remember(key(i), { seq: i + 1, serverTimeMs: 1, durable: undefined });
      const late = s.id === "b" ? s.begin() : undefined;
      budget.settle(s);
      if (late !== undefined) s.end(late);
    }
    assert.deepEqual(
      states.map((s) => s.recent.size),
      [0, 0, 100, 0],
    );
    assert.equal(owner.dropped.length, 0, "forgetting keys was enough: every state stays");
    assert.equal(budget.metrics.evictedKeys, 300);
    assert.equal(budget.heldBytes, 4 * STATE_OVERHEAD_BYTES + 100 * keyBytes);
    // With the keys gone, idle states are dropped whole, least recently used first.
    const small = new HotStateBudget(2 * STATE_OVERHEAD_BYTES + 100 * keyBytes);
    for (const s of states) {
      small.touch(s, owner);
      small.settle(s);
    }
    assert.deepEqual(
      owner.dropped.map((s) => s.id),
      ["a", "b"],
    );
    assert.equal(states[2]!.recent.size, 100);
  });

  it("makes a conversation in use shed its committed tail, never its uncommitted entries", () => {
    const owner = new Owner();
    const budget = new HotStateBudget(50_000);
    const hot = state("hot");
    hot.busy = 1;
    budget.touch(hot, owner);
    fill(hot, 20, 10_000);
    hot.lastSeq++;
    hot.pushTail(entry(hot.lastSeq, 10_000));
    budget.settle(hot);
    assert.equal(owner.dropped.length, 0, "a busy conversation is not dropped");
    assert.equal(hot.tailLength, 1);
    assert.equal(Number(hot.tailAfter(0)[0]?.seq), 21);
    assert.equal(budget.metrics.evictedEntries, 20);
    assert.equal(budget.heldBytes, hot.bytes());
    assert.ok(budget.heldBytes <= 50_000);
  });

  it("held over budget by operations in use, looks at each state once per as many operations, and evicts one whose operation ends", () => {
    /** Counts the owner's looks at states: a walk over every state is one look (or two) each. */
    class CountingOwner extends Owner {
      looks = 0;
      override idle(s: ConversationState): boolean {
        this.looks++;
        return super.idle(s);
      }
    }
    const owner = new CountingOwner();
    const remembered = (s: ConversationState, i: number) =>
      s.remember(`dv_a\nm${i}`, { seq: i + 1, serverTimeMs: 1, durable: undefined });
    const budget = new HotStateBudget(10 * STATE_OVERHEAD_BYTES);
    const states = Array.from({ length: 200 }, (_, i) => state(`g_${i}`));
    const marks = states.map((s) => {
      const mark = s.begin(); // in use since before its keys: neither they nor the state can go
      budget.touch(s, owner);
      remembered(s, 0);
      budget.settle(s);
      return mark;
    });
    owner.looks = 0;
    let operations = 0;
    for (let round = 1; round <= 5; round++) {
      for (const s of states) {
        budget.touch(s, owner);
        remembered(s, round);
        budget.settle(s);
        operations++;
      }
    }
    // Before, every settle walked every state: 400 looks an operation.
    assert.ok(owner.looks <= 5 * operations, `${owner.looks} looks for ${operations} operations`);
    assert.equal(owner.dropped.length, 0);
    // An operation ends: its state is evicted at its settle, not at the next walk.
    const done = states[7]!;
    done.end(marks[7]!);
    budget.settle(done);
    assert.equal(done.recent.size, 0, "its keys went");
    assert.deepEqual(owner.dropped, [done], "and, still over budget, the state itself");
    assert.equal(budget.conversations, 199);
    assert.equal(budget.metrics.evictedKeys, 6);
  });

  it("forgets states their shard dropped", () => {
    const owner = new Owner();
    const budget = new HotStateBudget(1 << 30);
    const s = state();
    budget.touch(s, owner);
    fill(s, 3, 1000);
    budget.settle(s);
    assert.equal(budget.heldBytes, s.bytes());
    budget.forget(s);
    budget.forget(s);
    assert.equal(budget.heldBytes, 0);
    assert.equal(budget.conversations, 0);
  });
});

describe("Sequencer with a zero byte budget: nothing stays that can go", () => {
  let dir: string;
  let engine: StoreEngine;
  let sequencer: Sequencer;
  /** Reads after this seq (a delete's scan past its target) take 200 ms, so others commit meanwhile. */
  let slowAfter = Number.POSITIVE_INFINITY;
  /** The next store lookup of this client_msg_id answers 200 ms after it read the store. */
  let slowLookup: string | undefined;
  /** The client_msg_ids looked up in the store. */
  const lookups: string[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hot-state-zero-"));
    engine = await openLmdbStore({ path: dir });
    const slow: ConversationStore = Object.create(engine.conversations);
    slow.readEntries = async (conversationId, afterSeq, limit) => {
      if (afterSeq >= slowAfter) await new Promise((r) => setTimeout(r, 200));
      return engine.conversations.readEntries(conversationId, afterSeq, limit);
    };
    slow.getIdempotency = async (conversationId, deviceId, clientMsgId) => {
      lookups.push(clientMsgId);
      const seq = await engine.conversations.getIdempotency(conversationId, deviceId, clientMsgId);
      if (clientMsgId === slowLookup) {
        slowLookup = undefined;
        await new Promise((r) => setTimeout(r, 200));
      }
      return seq;
    };
    sequencer = new Sequencer(slow, new InProcessBus(log), log, {
      shardCount: 1,
      limits: defaultLimits,
      cacheBytes: 0,
    });
  });
  after(async () => {
    await sequencer.close();
    await engine.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("a retry that missed its key in the store while the original committed gets the original's seq", async () => {
    const { conversationId: id } = await sequencer.createGroup(ALICE, DEVICE, "retry", [BOB]);
    const send = () =>
      sequencer.append([
        create(AppendItemSchema, {
          senderUserId: ALICE,
          senderDeviceId: DEVICE,
          entry: create(OutgoingEntrySchema, {
            clientMsgId: "once",
            conversationId: id,
            body: { case: "message", value: create(MessageBodySchema, { payload: new Uint8Array(10) }) },
          }),
        }),
      ]);
    // The retry looks in memory (nothing), then reads the store (nothing yet) and is slow to
    // hear back; the original, sent meanwhile, is sequenced, committed and done. The budget
    // (zero) forgets every key it may, and must not forget the one the retry still counts on.
    slowLookup = "once";
    const retry = send();
    await new Promise((r) => setTimeout(r, 50));
    const [original] = await send();
    const [again] = await retry;
    assert.ok(original !== undefined && "seq" in original, String(original));
    assert.ok(again !== undefined && "seq" in again, String(again));
    assert.equal(again.seq, original.seq, "sequenced once");
    const page = await sequencer.getHistory(BOB, id, 0, 100);
    assert.equal(page.entries.filter((e) => e.body.case === "message").length, 1);
    // Keys go as soon as no operation in flight can need them (Shard.release), so the original's
    // went when it ended but for the retry's mark: the next retry reads the store.
    lookups.length = 0;
    const [third] = await send();
    assert.ok(third !== undefined && "seq" in third && third.seq === original.seq, String(third));
    assert.deepEqual(lookups, ["once"], "forgotten once nothing in flight needed it");
  });

  it("a delete redacts reactions committed (and shed from the tail) while it scanned the log", async () => {
    const { conversationId: id } = await sequencer.createGroup(ALICE, DEVICE, "race", [BOB]);
    const item = (clientMsgId: string, value: OutgoingEntry["body"]) =>
      create(AppendItemSchema, {
        senderUserId: ALICE,
        senderDeviceId: DEVICE,
        entry: create(OutgoingEntrySchema, { clientMsgId, conversationId: id, body: value }),
      });
    const [message] = await sequencer.append([
      item("m", { case: "message", value: create(MessageBodySchema, { payload: new Uint8Array(100) }) }),
    ]);
    assert.ok(message !== undefined && "seq" in message);
    const targetSeq = BigInt(message.seq);
    // Entries after the target, so the delete has a page of the log to scan.
    await sequencer.append([
      item("after", { case: "message", value: create(MessageBodySchema, { payload: new Uint8Array(1) }) }),
    ]);
    slowAfter = Number(targetSeq);
    const deleting = sequencer.append([
      item("d", { case: "delete", value: create(DeleteBodySchema, { targetSeq }) }),
    ]);
    // While the delete reads its page, reactions commit; the budget sheds them from the tail.
    await new Promise((r) => setTimeout(r, 50));
    const reacted = await sequencer.append(
      Array.from({ length: 3 }, (_, i) =>
        item(`r${i}`, {
          case: "reaction",
          value: create(ReactionBodySchema, { targetSeq, payload: new Uint8Array([1, 2, 3]) }),
        }),
      ),
    );
    const [deleted] = await deleting;
    slowAfter = Number.POSITIVE_INFINITY;
    assert.ok(deleted !== undefined && "seq" in deleted, String(deleted));
    for (const r of reacted) {
      assert.ok("seq" in r, String(r));
      assert.ok(r.seq < deleted.seq, "the reactions were sequenced before the delete (the premise)");
    }
    const page = await sequencer.getHistory(BOB, id, 0, 100);
    const redactable = page.entries.filter((x) => x.seq === targetSeq || x.body.case === "reaction");
    assert.equal(redactable.length, 4);
    for (const e of redactable) {
      assert.equal(e.redacted, true, `seq ${e.seq}, before the delete at ${deleted.seq}, is a tombstone`);
      assert.ok(e.body.case === "message" || e.body.case === "reaction");
      assert.equal(e.body.value.payload.length, 0);
    }
    assert.equal(sequencer.hotState.conversations, 0, "nothing idle is kept");
  });
});

describe("Sequencer within a small byte budget (real LMDB store)", () => {
  let dir: string;
  let engine: StoreEngine;
  let sequencer: Sequencer;
  const BUDGET = 256 * 1024;
  const PAYLOAD = 20_000;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hot-state-test-"));
    engine = await openLmdbStore({ path: dir });
    sequencer = new Sequencer(engine.conversations, new InProcessBus(log), log, {
      shardCount: 4,
      limits: defaultLimits,
      cacheBytes: BUDGET,
    });
  });
  after(async () => {
    await sequencer.close();
    await engine.close();
    await rm(dir, { recursive: true, force: true });
  });

  function send(conversationId: string, clientMsgId: string, i: number) {
    const payload = new Uint8Array(PAYLOAD).fill(i % 251);
    return messageItem({ userId: ALICE, deviceId: DEVICE }, conversationId, clientMsgId, payload);
  }

  it("holds many conversations' large messages within the budget and still serves them whole and in order", async () => {
    const ids: string[] = [];
    for (let g = 0; g < 12; g++)
      ids.push((await sequencer.createGroup(ALICE, DEVICE, `g${g}`, [BOB])).conversationId);
    const perConversation = 40; // 12 x 40 x 20 KB = 9.6 MB sent, 37x the budget
    for (let i = 0; i < perConversation; i++) {
      const results = await sequencer.append(ids.map((id) => send(id, `m${i}`, i)));
      for (const r of results) assert.ok("seq" in r, `append failed: ${String(r)}`);
      assert.ok(
        sequencer.hotState.heldBytes <= BUDGET,
        `held ${sequencer.hotState.heldBytes} bytes, budget ${BUDGET}`,
      );
    }
    assert.ok(
      sequencer.hotState.metrics.evictedConversations + sequencer.hotState.metrics.evictedEntries > 0,
    );
    for (const id of ids) {
      const page = await sequencer.getHistory(BOB, id, 0, 1000);
      assert.deepEqual(
        page.entries.map((e) => Number(e.seq)),
        Array.from({ length: perConversation + 1 }, (_, i) => i + 1),
      );
      for (const e of page.entries.slice(1)) {
        const i = Number(e.seq) - 2;
        assert.equal(e.clientMsgId, `m${i}`);
        assert.ok(e.body.case === "message" && e.body.value.payload.every((b) => b === i % 251));
      }
    }
    // A retry of a send whose key was evicted finds it in the store: same seq, no second entry.
    const [again] = await sequencer.append([send(ids[0]!, "m0", 0)]);
    assert.ok(again !== undefined && "seq" in again && again.seq === 2);
    assert.equal((await sequencer.getHistory(BOB, ids[0]!, 0, 1000)).lastSeq, perConversation + 1);
  });

  it("keeps conversations of many small sends resident, and a retry still finds its seq", async () => {
    // A sequencer of its own: no other test's conversations in its budget.
    const own = new Sequencer(engine.conversations, new InProcessBus(log), log, {
      shardCount: 4,
      limits: defaultLimits,
      cacheBytes: BUDGET,
    });
    const ids: string[] = [];
    for (let g = 0; g < 4; g++)
      ids.push((await own.createGroup(ALICE, DEVICE, `small${g}`, [BOB])).conversationId);
    for (let i = 0; i < 400; i++) {
      const results = await own.append(
        ids.map((id) => messageItem({ userId: ALICE, deviceId: DEVICE }, id, `s${i}`, new Uint8Array(1))),
      );
      for (const r of results) assert.ok("seq" in r, `append failed: ${String(r)}`);
      assert.ok(own.hotState.heldBytes <= BUDGET, `held ${own.hotState.heldBytes} bytes`);
    }
    // 1,600 keys of about 230 bytes each would be more than the budget: each went once its send
    // was durable, and no conversation had to be dropped.
    assert.equal(own.hotState.metrics.evictedConversations, 0);
    for (const id of ids) {
      const [again] = await own.append([
        messageItem({ userId: ALICE, deviceId: DEVICE }, id, "s0", new Uint8Array(1)),
      ]);
      assert.ok(again !== undefined && "seq" in again && again.seq === 2, `the retry of s0 in ${id}`);
      assert.equal((await own.getHistory(BOB, id, 0, 1)).lastSeq, 401);
    }
    await own.close();
  });

  it("a delete redacts reactions that were evicted from the tail", async () => {
    const { conversationId: id } = await sequencer.createGroup(ALICE, DEVICE, "redact", [BOB]);
    const [message] = await sequencer.append([send(id, "target", 1)]);
    assert.ok(message !== undefined && "seq" in message);
    const reaction = (clientMsgId: string) =>
      create(AppendItemSchema, {
        senderUserId: BOB,
        senderDeviceId: "dv_000000000000000000000000b",
        entry: create(OutgoingEntrySchema, {
          clientMsgId,
          conversationId: id,
          body: {
            case: "reaction",
            value: create(ReactionBodySchema, {
              targetSeq: BigInt(message.seq),
              payload: new Uint8Array([0xf0, 0x9f, 0x91, 0x8d]),
            }),
          },
        }),
      });
    await sequencer.append([reaction("r1")]);
    // Enough other traffic to push this conversation out of the budget.
    const others = await sequencer.createGroup(ALICE, DEVICE, "noise", [BOB]);
    for (let i = 0; i < 20; i++) await sequencer.append([send(others.conversationId, `n${i}`, i)]);
    const [deleted] = await sequencer.append([
      create(AppendItemSchema, {
        senderUserId: ALICE,
        senderDeviceId: DEVICE,
        entry: create(OutgoingEntrySchema, {
          clientMsgId: "del",
          conversationId: id,
          body: { case: "delete", value: create(DeleteBodySchema, { targetSeq: BigInt(message.seq) }) },
        }),
      }),
    ]);
    assert.ok(deleted !== undefined && "seq" in deleted, String(deleted));
    const page = await sequencer.getHistory(BOB, id, 0, 100);
    const bySeq = new Map(page.entries.map((e) => [Number(e.seq), e]));
    for (const seq of [message.seq, message.seq + 1]) {
      const e = bySeq.get(seq);
      assert.equal(e?.redacted, true, `seq ${seq} is a tombstone`);
      assert.ok(e?.body.case === "message" || e?.body.case === "reaction");
      assert.equal(e.body.value.payload.length, 0);
    }
  });
});

describe("Sequencer with room to spare: an idempotency key lives as long as a send may need it", () => {
  let dir: string;
  let engine: StoreEngine;
  let sequencer: Sequencer;
  /** The client_msg_ids looked up in the store. */
  const lookups: string[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hot-state-keys-"));
    engine = await openLmdbStore({ path: dir });
    const counting: ConversationStore = Object.create(engine.conversations);
    counting.getIdempotency = (conversationId, deviceId, clientMsgId) => {
      lookups.push(clientMsgId);
      return engine.conversations.getIdempotency(conversationId, deviceId, clientMsgId);
    };
    sequencer = new Sequencer(counting, new InProcessBus(log), log, {
      shardCount: 1,
      limits: defaultLimits,
      cacheBytes: 64 * 1024 * 1024,
    });
  });
  after(async () => {
    await sequencer.close();
    await engine.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("a retry while its send is in flight waits for it in memory; once durable, a retry reads the store", async () => {
    const { conversationId: id } = await sequencer.createGroup(ALICE, DEVICE, "keys", [BOB]);
    const send = (clientMsgId: string) =>
      sequencer.append([
        messageItem({ userId: ALICE, deviceId: DEVICE }, id, clientMsgId, new Uint8Array(10)),
      ]);
    lookups.length = 0;
    // Both at once: whichever is second finds the first's key in memory, not yet durable, at the
    // latest in the block that would assign its seq, and waits for it.
    const [[original], [retry]] = await Promise.all([send("k"), send("k")]);
    assert.ok(original !== undefined && "seq" in original, String(original));
    assert.ok(retry !== undefined && "seq" in retry && retry.seq === original.seq, String(retry));
    // Durable, and nothing in flight: the key went, with room to spare in the budget. A retry
    // now reads the store, which has it, and gets the same seq.
    assert.equal(sequencer.hotState.metrics.evictedKeys, 0, "not an eviction");
    lookups.length = 0;
    const [later] = await send("k");
    assert.ok(later !== undefined && "seq" in later && later.seq === original.seq, String(later));
    assert.deepEqual(lookups, ["k"]);
    const page = await sequencer.getHistory(BOB, id, 0, 100);
    assert.equal(page.entries.filter((e) => e.body.case === "message").length, 1, "sequenced once");
  });
});
