import type { Entry } from "../../gen/switchboard/v1/entry_pb.js";
import { decodeEntry, entryBytes } from "../common/entry-bytes.js";
import type { ConversationRecord, MemberRecord } from "../store/types.js";
import { EncodedTail } from "./encoded-tail.js";
import {
  CURSOR_BYTES,
  keyBytes,
  MEMBER_BYTES,
  SENDER_SLOT_BYTES,
  STATE_OVERHEAD_BYTES,
} from "./hot-state.js";

/**
 * How many recent entries of an active conversation stay in memory, at most; the process-wide
 * byte budget (HotStateBudget) usually keeps fewer.
 */
export const TAIL_ENTRIES = 256;
/**
 * How many recent seqs' senders a state keeps, at least, once it has assigned that many: enough
 * for the receipts of devices that keep up (a cursor moves a few entries at a time), a pointer
 * each.
 */
export const SENDER_SEQS = 128;
/** How many recent idempotency keys of a conversation stay in memory, at most. */
export const RECENT_KEYS = 4096;

/** What `recent` reads as while a state holds no keys. */
const NO_KEYS: ReadonlyMap<string, RecentSend> = new Map();

/** An idempotency key seen recently, with the commit it waits on if not yet durable. */
export interface RecentSend {
  /** The seq assigned to the send. */
  seq: number;
  /** The commit time of the entry, in milliseconds since the Unix epoch. */
  serverTimeMs: number;
  /** When the entry disappears, in milliseconds since the Unix epoch; 0 or absent for never. */
  expiresAtMs?: number;
  /** Resolves when the entry is durable; undefined once it is. */
  durable: Promise<void> | undefined;
}

/** A device's cursors as the shard knows them. */
export interface CursorPair {
  /** Delivered up to this seq. */
  delivered: number;
  /** Read up to this seq. */
  read: number;
}

/**
 * The in-memory state of one conversation in its shard. Mutated only synchronously by the
 * shard, so that checks and seq assignment never interleave with another operation.
 */
export class ConversationState {
  /** Highest seq assigned (may be ahead of the store while a commit is in flight). */
  lastSeq: number;
  /** Highest seq known durable; reads never go past it. */
  committedSeq: number;
  /**
   * Recent entries, ascending and contiguous, ending at lastSeq (empty when evicted: reads then
   * go to the store), kept encoded (encoded-tail.ts): what the tail holds lives for seconds, long
   * enough to be copied into the old generation, and is read back rarely (catch-up reads, a
   * delete's scan). Change it only through pushTail, replaceTail and shed; read it through
   * fromTail and tailAfter.
   */
  private readonly tail = new EncodedTail();
  /**
   * Who sent each recent seq, ascending and contiguous, ending at lastSeq: all a receipt needs of
   * the entries a cursor passes over. It outlives the tail, which the budget sheds first, so a
   * receipt does not read entries back from the store to learn their senders. A slot is the
   * sender's user id (the member record's own string, so a slot costs a pointer), null for a seq
   * that earns no receipt (a membership change), or undefined for one this cannot vouch for (an
   * entry with an expiry, which reads as a stub once past it): receipts then read the entries.
   * Between SENDER_SEQS and twice that many slots.
   */
  private senders: Array<string | null | undefined> = [];
  /**
   * Recent idempotency keys ("deviceId\nclientMsgId"); undefined while there are none. Add through
   * remember(), which keeps the byte count. The map goes when its last key does: a JS Map that
   * empties allocates a smaller table, and for a map as long-lived as its state that table stayed
   * until the next send emptied the map again (a conversation's keys go as each send settles), so
   * many outlived two scavenges and were promoted. A map made at the first key lives only while
   * keys wait to settle.
   */
  private keys: Map<string, RecentSend> | undefined;
  private recentBytes = 0;
  /**
   * Keys remembered since load. Keys enter `recent` in this order and leave it from the front, so
   * the key at position i of `recent` was the `keysRemembered - recent.size + i`th remembered.
   */
  private keysRemembered = 0;
  /**
   * For each operation in flight, how many keys had been remembered when it began (its mark),
   * with how many operations hold each mark. Marks never decrease, so the first is the oldest.
   * Undefined while no operation is in flight: an emptied Map keeps its table (about 200 bytes),
   * which every resident state would hold.
   */
  private marks: Map<number, number> | undefined;
  /** Commit time of the newest entry, in milliseconds since the Unix epoch; 0 if none since load. */
  lastServerTimeMs = 0;
  /** Device cursors loaded so far. */
  readonly deviceCursors = new Map<string, CursorPair>();
  /** Operations between load and completion; a busy state is never dropped. */
  busy = 0;
  /**
   * Acquired since its shard's count eviction last passed it: that walk gives it a second
   * chance instead of dropping it (Shard.evict; common/second-chance.ts).
   */
  usedSinceWalk = false;
  /**
   * Grows whenever a member's mute changes. It starts at the load time, so a version handed out
   * before a restart is always older than any after it.
   */
  mutesVersion = Date.now();
  /** Settles when the latest assigned entry is durable (rejects if its commit failed). */
  lastDurable: Promise<void> = Promise.resolve();

  constructor(
    readonly id: string,
    public record: ConversationRecord | undefined,
    readonly members: Map<string, MemberRecord>,
    lastSeq: number,
  ) {
    this.lastSeq = lastSeq;
    this.committedSeq = lastSeq;
  }

  /** How many entries the tail holds. */
  get tailLength(): number {
    return this.tail.length;
  }

  /** The bytes the tail holds, as the budget counts them (part of bytes()). */
  get tailBytes(): number {
    return this.tail.bytes;
  }

  /** The seq of the oldest entry in the tail, or lastSeq + 1 when the tail is empty. */
  tailStart(): number {
    return this.tail.first ?? this.lastSeq + 1;
  }

  /** The entry at seq if it is still in the tail (decoded: a new object at each call). */
  fromTail(seq: number): Entry | undefined {
    const bytes = this.tail.at(seq);
    return bytes === undefined ? undefined : decodeEntry(bytes);
  }

  /** The tail's entries with seq > after, at most limit of them, decoded. */
  tailAfter(after: number, limit?: number): Entry[] {
    return this.tail.after(after, limit).map(decodeEntry);
  }

  /** Adds a newly assigned entry. */
  pushTail(entry: Entry): void {
    this.tail.push(Number(entry.seq), entryBytes(entry));
    this.lastServerTimeMs = Math.max(this.lastServerTimeMs, Number(entry.serverTimeMs));
    if (this.tail.length > TAIL_ENTRIES) this.tail.drop(this.tail.length - TAIL_ENTRIES);
    this.senders.push(this.senderSlot(entry));
    // Trimmed by half its length at a time, so a push moves the list once per SENDER_SEQS.
    if (this.senders.length >= 2 * SENDER_SEQS) this.senders = this.senders.slice(SENDER_SEQS);
  }

  /** Replaces the tail's entry at the same seq, if the tail still holds it. */
  replaceTail(entry: Entry): void {
    const seq = Number(entry.seq);
    this.tail.replace(seq, entryBytes(entry));
    const slot = seq - this.sendersStart();
    if (slot >= 0 && slot < this.senders.length) this.senders[slot] = this.senderSlot(entry);
  }

  /**
   * The users who sent the entries in (from, to] that earn receipts, other than `except`, if
   * this state can vouch for every one of those seqs; undefined if not (read the entries).
   */
  receiptSenders(from: number, to: number, except: string): string[] | undefined {
    const start = this.sendersStart();
    if (from + 1 < start || to > this.lastSeq) return undefined;
    const out = new Set<string>();
    for (let seq = from + 1; seq <= to; seq++) {
      const sender = this.senders[seq - start];
      if (sender === undefined) return undefined;
      if (sender !== null && sender !== except) out.add(sender);
    }
    return [...out];
  }

  private sendersStart(): number {
    return this.lastSeq + 1 - this.senders.length;
  }

  /** What the list of senders holds for this entry (see `senders`). */
  private senderSlot(entry: Entry): string | null | undefined {
    if (entry.expired || entry.expiresAtMs > 0n) return undefined;
    if (entry.body.case === "membership" || entry.senderUserId === "") return null;
    // The member's own string: an entry's is a fresh copy per decoded request.
    return this.members.get(entry.senderUserId)?.userId ?? entry.senderUserId;
  }

  /** Marks the state in use by one more operation; returns the operation's mark, for end(). */
  begin(): number {
    this.busy++;
    const mark = this.keysRemembered;
    this.marks ??= new Map();
    this.marks.set(mark, (this.marks.get(mark) ?? 0) + 1);
    return mark;
  }

  /** Ends an operation begun with begin(). */
  end(mark: number): void {
    this.busy--;
    const marks = this.marks;
    if (marks === undefined) return;
    const left = (marks.get(mark) ?? 1) - 1;
    if (left > 0) marks.set(mark, left);
    else if (marks.delete(mark) && marks.size === 0) this.marks = undefined;
  }

  /** The recent idempotency keys, oldest first (see `keys`). */
  get recent(): ReadonlyMap<string, RecentSend> {
    return this.keys ?? NO_KEYS;
  }

  /** Remembers an idempotency key. */
  remember(key: string, send: RecentSend): void {
    this.keys ??= new Map();
    if (!this.keys.has(key)) {
      this.recentBytes += keyBytes(key);
      this.keysRemembered++;
    }
    this.keys.set(key, send);
    if (this.keys.size > RECENT_KEYS) {
      const oldest = this.keys.keys().next().value;
      if (oldest !== undefined) this.forgetKey(oldest);
    }
  }

  /** Drops the committed tail entries (the store has them; reads fall back to it). */
  shed(): number {
    const first = this.tail.first;
    if (first === undefined) return 0;
    const entries = Math.min(this.tail.length, Math.max(0, this.committedSeq + 1 - first));
    this.tail.drop(entries);
    // Shedding is to give memory back: what the dropped entries left in the buffer too.
    this.tail.compact();
    return entries;
  }

  /** The estimated bytes this state holds: tail, keys, members, cursors and itself. */
  bytes(): number {
    return (
      STATE_OVERHEAD_BYTES +
      this.tail.bytes +
      this.recentBytes +
      this.senders.length * SENDER_SLOT_BYTES +
      this.members.size * MEMBER_BYTES +
      this.deviceCursors.size * CURSOR_BYTES
    );
  }

  /**
   * Forgets the durable keys remembered before the oldest operation in flight began (every key
   * when none is); returns how many.
   *
   * An append looks for its key here, then in the store, then here again in the synchronous
   * block that assigns its seq. A key remembered after it began may be one it missed in the
   * store just before that key's commit: it must stay until the append ends, or the retry would
   * be sequenced twice. A key remembered before it began was either still here at its first
   * look, or had already gone, which it does once durable (then the store had it) or, as before
   * these marks, when RECENT_KEYS newer keys push it out.
   */
  forgetSettledKeys(): number {
    const oldest: number = this.marks?.keys().next().value ?? this.keysRemembered;
    const settled = oldest - (this.keysRemembered - this.recent.size);
    let count = 0;
    for (const [key, send] of this.recent) {
      if (count >= settled || send.durable !== undefined) break;
      this.forgetKey(key);
      count++;
    }
    return count;
  }

  private forgetKey(key: string): void {
    const keys = this.keys;
    if (keys === undefined || !keys.delete(key)) return;
    this.recentBytes -= keyBytes(key);
    if (keys.size === 0) this.keys = undefined;
  }

  /** Whether the user is a member. */
  isMember(userId: string): boolean {
    return this.members.has(userId);
  }

  /** Whether the user is an admin. */
  isAdmin(userId: string): boolean {
    return this.members.get(userId)?.role === "admin";
  }
}
