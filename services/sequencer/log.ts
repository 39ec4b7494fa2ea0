import { create } from "@bufbuild/protobuf";
import { EntryCommittedSchema } from "../../gen/switchboard/internal/v1/events_pb.js";
import { type Entry, EntrySchema } from "../../gen/switchboard/v1/entry_pb.js";
import { injectContext } from "../common/telemetry.js";
import { encodedSizeBound } from "../common/wire-size.js";
import type { ConversationStore } from "../store/types.js";
import type { ConversationState } from "./conversation.js";
import type { Batch } from "./shard.js";

/** Entries a history page holds when the caller asks for none in particular. */
export const PAGE_DEFAULT = 256;
/** Entries a history page, or one read of a scan, holds at most. */
export const PAGE_MAX = 1000;
// Entries read from the store at a time for a byte-bounded page: 32 of the largest entries
// (about 460 KiB each) is the most one page read holds beyond its bound.
const BOUNDED_READ_STEP = 32;

/**
 * A conversation's ordered log as the shard sees it: seqs are assigned here, in memory and
 * synchronously, and reads of committed entries come from the tail when it covers them and
 * from the store otherwise. Reads never go past the committed seq.
 */
export class ConversationLog {
  constructor(
    private readonly store: ConversationStore,
    /** The clock, in milliseconds since the Unix epoch. */
    private readonly now: () => number,
  ) {}

  /** Commit time, never earlier than the conversation's previous entry. */
  private commitTime(state: ConversationState): number {
    return Math.max(this.now(), state.lastServerTimeMs);
  }

  /** Assigns the next seq and queues the entry in the open batch. Synchronous by design. */
  assign(
    state: ConversationState,
    batch: Batch,
    init: Omit<Partial<Entry>, "$typeName">,
    extra: string[] = [],
  ): Entry {
    const seq = state.lastSeq + 1;
    const entry = create(EntrySchema, {
      ...init,
      conversationId: state.id,
      seq: BigInt(seq),
      serverTimeMs: BigInt(this.commitTime(state)),
    });
    state.lastSeq = seq;
    state.lastDurable = batch.durable;
    state.pushTail(entry);
    batch.append(state, entry);
    // The entry's event, and the commit, continue the trace of whatever assigned it.
    const trace = injectContext();
    batch.traced(trace);
    batch.publish(
      {
        case: "entryCommitted",
        value: create(EntryCommittedSchema, {
          entry,
          membersVersion: BigInt(state.record?.membersVersion ?? 0),
          extraRecipientUserIds: extra,
          mutesVersion: BigInt(state.mutesVersion),
        }),
      },
      trace,
    );
    return entry;
  }

  /** Waits until everything assigned so far in the conversation is durable. */
  committed(state: ConversationState): Promise<void> {
    // Batches of a shard commit in order, so the latest one settling covers all earlier ones.
    return state.lastDurable;
  }

  /** Reads one committed entry, from the tail when possible. */
  async entryAt(state: ConversationState, seq: number): Promise<Entry | undefined> {
    if (seq < 1 || seq > state.lastSeq) return undefined;
    const cached = state.fromTail(seq);
    if (cached !== undefined) return cached;
    const [entry] = await this.store.readEntries(state.id, seq - 1, 1);
    return entry;
  }

  /** Entries with seq > after that are durable, from the tail when it covers them. */
  async readCommitted(state: ConversationState, after: number, limit: number): Promise<Entry[]> {
    const upTo = Math.min(state.committedSeq, after + limit);
    if (upTo <= after) return [];
    if (after + 1 >= state.tailStart()) {
      const start = after + 1 - state.tailStart();
      return state.tail.slice(start, start + (upTo - after));
    }
    const entries = await this.store.readEntries(state.id, after, upTo - after);
    return entries.filter((e) => Number(e.seq) <= upTo);
  }

  /** As readCommitted, stopping before the entries' encoded size passes maxBytes (one at least). */
  async readBounded(
    state: ConversationState,
    after: number,
    limit: number,
    maxBytes: number,
  ): Promise<Entry[]> {
    const out: Entry[] = [];
    let bytes = 0;
    for (let from = after; out.length < limit; ) {
      const step = await this.readCommitted(state, from, Math.min(BOUNDED_READ_STEP, limit - out.length));
      if (step.length === 0) return out;
      for (const entry of step) {
        const size = encodedSizeBound(entry);
        if (out.length > 0 && bytes + size > maxBytes) return out;
        out.push(entry);
        bytes += size;
      }
      from = Number(step[step.length - 1]!.seq);
    }
    return out;
  }
}
