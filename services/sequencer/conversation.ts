import type { Entry } from "../../gen/switchboard/v1/entry_pb.js";
import type { ConversationRecord, MemberRecord } from "../store/types.js";

/** How many recent entries of an active conversation stay in memory. */
export const TAIL_ENTRIES = 256;
/** How many recent idempotency keys of a conversation stay in memory. */
const RECENT_KEYS = 4096;

/** An idempotency key seen recently, with the commit it waits on if not yet durable. */
export interface RecentSend {
  /** The seq assigned to the send. */
  seq: number;
  /** The commit time of the entry, in milliseconds since the Unix epoch. */
  serverTimeMs: number;
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
  /** Recent entries, ascending and contiguous, ending at lastSeq. */
  readonly tail: Entry[] = [];
  /** Recent idempotency keys ("deviceId\nclientMsgId"). */
  readonly recent = new Map<string, RecentSend>();
  /** Device cursors loaded so far. */
  readonly deviceCursors = new Map<string, CursorPair>();
  /** Operations between load and completion; a busy state is never evicted. */
  busy = 0;
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

  /** The entry at seq if it is still in the tail. */
  fromTail(seq: number): Entry | undefined {
    const first = this.tail[0];
    if (first === undefined) return undefined;
    return this.tail[seq - Number(first.seq)];
  }

  /** The seq of the oldest entry in the tail, or lastSeq + 1 when the tail is empty. */
  tailStart(): number {
    const first = this.tail[0];
    return first === undefined ? this.lastSeq + 1 : Number(first.seq);
  }

  /** Adds a newly assigned entry. */
  pushTail(entry: Entry): void {
    this.tail.push(entry);
    if (this.tail.length > TAIL_ENTRIES) this.tail.splice(0, this.tail.length - TAIL_ENTRIES);
  }

  /** Remembers an idempotency key. */
  remember(key: string, send: RecentSend): void {
    this.recent.set(key, send);
    if (this.recent.size > RECENT_KEYS) {
      const oldest = this.recent.keys().next().value;
      if (oldest !== undefined) this.recent.delete(oldest);
    }
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
