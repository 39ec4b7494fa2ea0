import { create } from "@bufbuild/protobuf";
import { EntryCommittedSchema } from "../../gen/switchboard/internal/v1/events_pb.js";
import type { Entry } from "../../gen/switchboard/v1/entry_pb.js";
import { injectContext } from "../common/telemetry.js";
import { encodedSizeBound } from "../common/wire-size.js";
import type { ConversationStore } from "../store/types.js";
import type { ConversationState } from "./conversation.js";
import type { ReceivedBounds } from "./delivery-bound.js";
import { expiredStub, expiryOf, isExpired } from "./expiry.js";
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
    /** The server-wide maximum age of entries, in milliseconds; 0 keeps them for ever. */
    private readonly retentionMs = 0,
    /**
     * Entries every active device of every member received go this long after their commit, in
     * milliseconds; 0: off.
     */
    private readonly afterDeliveryMs = 0,
    /** How far each conversation was received, as the expiry sweep last found (needed with afterDeliveryMs). */
    private readonly received?: ReceivedBounds,
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
    const serverTimeMs = this.commitTime(state);
    const expiresAtMs = expiryOf(
      init.body ?? { case: undefined },
      state.record?.disappearingSeconds,
      serverTimeMs,
    );
    // Every field written out, not create(EntrySchema, ...): create walks the schema for
    // defaults, 1.5 % of the main thread at 5,000 msgs/s (docs/benchmarks.md, twenty-sixth
    // pass). The type lists every field, so a field added to Entry fails to compile here.
    const entry: Entry = {
      $typeName: "switchboard.v1.Entry",
      conversationId: state.id,
      seq: BigInt(seq),
      senderUserId: init.senderUserId ?? "",
      senderDeviceId: init.senderDeviceId ?? "",
      clientMsgId: init.clientMsgId ?? "",
      serverTimeMs: BigInt(serverTimeMs),
      body: init.body ?? { case: undefined },
      redacted: init.redacted ?? false,
      redactedBySeq: init.redactedBySeq ?? 0n,
      expiresAtMs: expiresAtMs > 0 ? BigInt(expiresAtMs) : (init.expiresAtMs ?? 0n),
      expired: init.expired ?? false,
    };
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

  /** Reads one committed entry, from the tail when possible; an expired one as its stub. */
  async entryAt(state: ConversationState, seq: number): Promise<Entry | undefined> {
    if (seq < 1 || seq > state.lastSeq) return undefined;
    const delivered = this.deliveredBound(state);
    const cached = state.fromTail(seq);
    if (cached !== undefined) return this.unexpired(cached, delivered);
    if (seq > state.committedSeq) return undefined;
    const [entry] = await this.store.readEntries(state.id, seq - 1, 1);
    // Every committed seq was written: one the store no longer has expired (see readCommitted).
    return entry !== undefined && Number(entry.seq) === seq
      ? this.unexpired(entry, delivered)
      : expiredStub(state.id, seq);
  }

  /**
   * Entries with seq > after that are durable, from the tail when it covers them. Entries past
   * their expiry are served as expired stubs, and so is every seq the store no longer holds:
   * everything up to the committed seq was written, so a missing one was deleted by the expiry
   * sweep or a database TTL, never a gap.
   */
  async readCommitted(state: ConversationState, after: number, limit: number): Promise<Entry[]> {
    const upTo = Math.min(state.committedSeq, after + limit);
    if (upTo <= after) return [];
    const delivered = this.deliveredBound(state);
    if (after + 1 >= state.tailStart()) {
      return state.tailAfter(after, upTo - after).map((e) => this.unexpired(e, delivered));
    }
    const entries = await this.store.readEntries(state.id, after, upTo - after);
    const out: Entry[] = [];
    let next = after + 1;
    for (const entry of entries) {
      const seq = Number(entry.seq);
      if (seq > upTo) break;
      for (; next < seq; next++) out.push(expiredStub(state.id, next));
      out.push(this.unexpired(entry, delivered));
      next = seq + 1;
    }
    for (; next <= upTo; next++) out.push(expiredStub(state.id, next));
    return out;
  }

  /**
   * With retention after delivery, the seq up to which every active device of every member had
   * received the log when the sweep last looked (the sweep knows the devices; this does not);
   * 0 otherwise.
   */
  private deliveredBound(state: ConversationState): number {
    if (this.afterDeliveryMs <= 0) return 0;
    return this.received?.get(state.id) ?? 0;
  }

  /**
   * The entry, or its expired stub once past its expiry, older than the retention, or received by
   * every active device (seq at most `delivered`) and older than the window after delivery:
   * served as the store will be once the sweep deletes it.
   */
  private unexpired(entry: Entry, delivered = 0): Entry {
    const now = this.now();
    const time = Number(entry.serverTimeMs);
    const tooOld = this.retentionMs > 0 && time < now - this.retentionMs;
    const received = Number(entry.seq) <= delivered && time < now - this.afterDeliveryMs;
    return tooOld || received || isExpired(entry, now)
      ? expiredStub(entry.conversationId, Number(entry.seq))
      : entry;
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
