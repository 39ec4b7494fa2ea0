import { create } from "@bufbuild/protobuf";
import { type BusEvent, BusEventSchema } from "../../gen/switchboard/internal/v1/events_pb.js";
import type { Entry } from "../../gen/switchboard/v1/entry_pb.js";
import { UnavailableError } from "../common/errors.js";
import type { Logger } from "../common/log.js";
import { evictUnmarked } from "../common/second-chance.js";
import { carries, endSpan, lazyInstrument, linksFrom, meter, startSpan } from "../common/telemetry.js";
import { encodedSizeBound } from "../common/wire-size.js";
import type { ConversationStore, ConversationWrite, MemberRecord } from "../store/types.js";
import { ConversationState } from "./conversation.js";
import type { HotStateBudget, StateOwner } from "./hot-state.js";
import { committedEvent, type PublishOutbox } from "./outbox.js";

const commitSeconds = lazyInstrument(() =>
  meter().createHistogram("switchboard.store.commit.duration_seconds", {
    description: "Time for one group commit of a shard to become durable",
    unit: "s",
    advice: {
      explicitBucketBoundaries: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
    },
  }),
);
const commitFailures = lazyInstrument(() =>
  meter().createCounter("switchboard.store.commit.failures", {
    description: "Group commits that failed (their sends were refused UNAVAILABLE)",
  }),
);

/** The retry hint of a send refused because its commit failed, in ms. */
const RETRY_AFTER_MS = 1_000;

/**
 * How long a commit may take before its sends are refused, in ms: far beyond a healthy commit
 * (milliseconds on LMDB, tens of them on ScyllaDB, whose driver gives up on its own well before),
 * so only a store that stopped answering reaches it.
 */
export const COMMIT_TIMEOUT_MS = 30_000;

/** The writes and events of one group commit. */
export class Batch {
  /** The store write of each conversation in the batch, by conversation id. */
  readonly writes = new Map<string, ConversationWrite>();
  /** Events to publish once the batch is durable, in the order they were queued. */
  readonly events: BusEvent[] = [];
  /** The states whose writes are in the batch: their committed seq moves on success. */
  readonly states = new Set<ConversationState>();
  /** Encoded size of the entries appended and rewritten, in bytes (a bound; see Shard.batch). */
  bytes = 0;
  /** Settles when the commit does: resolves once durable, rejects (UNAVAILABLE) if it failed. */
  readonly durable: Promise<void>;
  /** Settles `durable` as committed (called by the shard's flush). */
  resolve!: () => void;
  /** Settles `durable` as failed (called by the shard's flush). */
  reject!: (err: unknown) => void;

  constructor() {
    this.durable = new Promise<void>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
    // Callers attach their own handlers; this one only keeps an unobserved failure quiet.
    this.durable.catch(() => {});
  }

  /** The write for a conversation in this batch, created on first use. */
  write(state: ConversationState): ConversationWrite {
    this.states.add(state);
    let w = this.writes.get(state.id);
    if (w === undefined) {
      w = { conversationId: state.id };
      this.writes.set(state.id, w);
    }
    return w;
  }

  /** Appends a new entry to the conversation's write. */
  append(state: ConversationState, entry: Entry): void {
    const w = this.write(state);
    w.append ??= [];
    w.append.push(entry);
    this.bytes += encodedSizeBound(entry);
  }

  /**
   * Rewrites an existing entry. An entry appended in this same batch is changed in place, so
   * the store never sees a replace of a seq it has not written yet.
   */
  replace(state: ConversationState, entry: Entry): void {
    const w = this.write(state);
    this.bytes += encodedSizeBound(entry);
    const appended = w.append?.findIndex((e) => e.seq === entry.seq) ?? -1;
    if (appended >= 0 && w.append) {
      w.append[appended] = entry;
      return;
    }
    w.replace ??= [];
    const replace = w.replace;
    const i = replace.findIndex((e) => e.seq === entry.seq);
    if (i >= 0) replace[i] = entry;
    else replace.push(entry);
  }

  /** Adds or updates members; a member removed earlier in this batch is put back. */
  putMembers(state: ConversationState, members: MemberRecord[]): void {
    const w = this.write(state);
    w.putMembers ??= [];
    const put = w.putMembers;
    for (const m of members) {
      if (w.removeMembers) w.removeMembers = w.removeMembers.filter((id) => id !== m.userId);
      const i = put.findIndex((p) => p.userId === m.userId);
      if (i >= 0) put[i] = m;
      else put.push(m);
    }
  }

  /** Removes members; a member put earlier in this batch is dropped from the put list. */
  removeMembers(state: ConversationState, userIds: string[]): void {
    const w = this.write(state);
    if (w.putMembers) w.putMembers = w.putMembers.filter((m) => !userIds.includes(m.userId));
    w.removeMembers ??= [];
    const removed = w.removeMembers;
    for (const id of userIds) if (!removed.includes(id)) removed.push(id);
  }

  /** Queues an event to publish once the batch is durable, with the trace it continues. */
  publish(event: BusEvent["event"], traceContext: Record<string, string> = {}): void {
    this.events.push(create(BusEventSchema, { event, traceContext }));
  }

  /** Trace contexts of the work in this batch; the commit's span joins them. */
  readonly traces: Array<Record<string, string>> = [];

  /** Notes the trace of work that joined this batch. */
  traced(traceContext: Record<string, string>): void {
    if (carries(traceContext) && this.traces.length < 64) this.traces.push(traceContext);
  }
}

/** A conversation's state held for one operation, from Shard.acquire to Shard.release. */
export interface HeldState {
  state: ConversationState;
  /** The operation's mark (ConversationState.begin). */
  mark: number;
}

/**
 * One logical shard: the conversations whose id hashes to it. It keeps their state in memory,
 * assigns seqs synchronously, and group-commits: while one commit is in flight, new work
 * collects in the next batch. At most one commit per shard is in flight, so a failed commit can
 * never leave a later commit with a seq gap. A batch is closed before it passes the store's
 * maxCommitBytes (a ScyllaDB commit's entries go into one LWT cell, which the database bounds);
 * closed batches wait their turn, in order, and a failure refuses every batch behind it too.
 */
export class Shard implements StateOwner {
  private readonly states = new Map<string, ConversationState>();
  private readonly loading = new Map<string, Promise<ConversationState>>();
  /** Acquires waiting for a load, by conversation: the loaded state is theirs, never evicted. */
  private readonly waiting = new Map<string, number>();
  private open: Batch | undefined;
  /** Batches closed for size, oldest first; each commits after the one before it. */
  private readonly sealed: Batch[] = [];
  private committing = false;
  private scheduled = false;
  private closed: string | undefined;

  constructor(
    readonly index: number,
    private readonly store: ConversationStore,
    private readonly outbox: PublishOutbox,
    private readonly log: Logger,
    /** Conversation states kept in memory, at most (the byte budget usually keeps fewer). */
    private readonly maxStates: number,
    /** The process-wide byte budget this shard's states count against. */
    private readonly budget: HotStateBudget,
    /** How long a commit may take before its sends are refused UNAVAILABLE, in milliseconds. */
    private readonly commitTimeoutMs = COMMIT_TIMEOUT_MS,
  ) {
    // Commits the store finishes for a writer that did not (a crashed replica's, found while
    // loading) have their events published by whoever finishes them.
    outbox.followRecoveries(store);
  }

  /** Loads (or finds) a conversation's state and holds it for one operation until release(). */
  async acquire(conversationId: string): Promise<HeldState> {
    let state = this.states.get(conversationId);
    if (state === undefined) {
      let loading = this.loading.get(conversationId);
      if (loading === undefined) {
        loading = this.load(conversationId).finally(() => this.loading.delete(conversationId));
        this.loading.set(conversationId, loading);
      }
      // Between the load and this acquire resuming, other work may run and evict idle states:
      // a waiter pins the state it is about to receive.
      this.waiting.set(conversationId, (this.waiting.get(conversationId) ?? 0) + 1);
      try {
        state = await loading;
      } finally {
        const left = (this.waiting.get(conversationId) ?? 1) - 1;
        if (left === 0) this.waiting.delete(conversationId);
        else this.waiting.set(conversationId, left);
      }
    }
    // The states map's order is a second-chance one: a use marks, and only evict() moves.
    state.usedSinceWalk = true;
    const mark = state.begin();
    if (this.states.get(conversationId) === state) this.budget.touch(state, this);
    return { state, mark };
  }

  /** Ends an operation started with acquire(). */
  release({ state, mark }: HeldState): void {
    state.end(mark);
    // Keys go as soon as no operation in flight can need them. Kept on, every send's key lived
    // for seconds, long enough to be copied into the old generation, to spare a store read to
    // the rare retry of a send already durable (which reads its key there, as after a reload);
    // a new send's key is looked up in the store anyway.
    state.forgetSettledKeys();
    if (this.states.size > this.maxStates) this.evict();
    this.budget.settle(state);
  }

  /** The current state and idle: nothing in use, nothing uncommitted, nobody waiting for it. */
  idle(state: ConversationState): boolean {
    return (
      this.states.get(state.id) === state &&
      state.busy === 0 &&
      state.committedSeq === state.lastSeq &&
      !this.waiting.has(state.id)
    );
  }

  /** Drops a state from memory if it is idle. The next operation reloads it from the store. */
  drop(state: ConversationState): boolean {
    if (!this.idle(state)) return false;
    this.states.delete(state.id);
    this.budget.forget(state);
    return true;
  }

  /**
   * Throws Unavailable if the state was dropped (after a failed commit) while the caller was
   * awaiting; the caller's client retries with the same idempotency key.
   */
  assertCurrent(state: ConversationState): void {
    if (this.states.get(state.id) !== state) {
      throw new UnavailableError("conversation state was reloaded after a storage failure; retry");
    }
  }

  /**
   * The batch that new work joins; its commit is scheduled. `bytes` is what the caller is about
   * to add (encoded entry bytes, a bound): when the open batch would pass the store's
   * maxCommitBytes with it, the batch is closed and the work goes into a new one, so commits stay
   * within the bound whole operations at a time (an operation larger than it commits alone).
   */
  batch(bytes = 0): Batch {
    if (this.closed !== undefined) throw new UnavailableError(this.closed, { retryAfterMs: RETRY_AFTER_MS });
    const max = this.store.maxCommitBytes;
    if (
      this.open !== undefined &&
      max !== undefined &&
      this.open.bytes > 0 &&
      this.open.bytes + bytes > max
    ) {
      this.sealed.push(this.open);
      this.open = undefined;
    }
    if (this.open === undefined) this.open = new Batch();
    this.schedule();
    return this.open;
  }

  /**
   * Publishes again the event of an entry committed earlier, whose own event may have been lost:
   * a retry answered from the store (its committing process may have died before publishing, or
   * another writer or a recovery committed it). Consumers drop the duplicate when there is one.
   */
  republish(entry: Entry, mutesVersion = 0): void {
    this.outbox.publish([committedEvent(entry, Number(entry.seq), mutesVersion)]);
  }

  /** Waits for in-flight and pending commits. */
  async drain(): Promise<void> {
    while (this.open !== undefined || this.sealed.length > 0 || this.committing) {
      await (this.sealed[0]?.durable ?? this.open?.durable ?? new Promise((r) => setTimeout(r, 1))).catch(
        () => {},
      );
    }
  }

  /**
   * Refuses new work and waits for what is pending. `reason` is what later work is refused
   * with (UNAVAILABLE): the process stopping, or the shard moving to another replica.
   */
  async close(reason = "sequencer is shutting down"): Promise<void> {
    await this.drain();
    this.closed = reason;
  }

  /** Forgets every state (the shard was handed on): their bytes leave the process's budget. */
  discard(): void {
    for (const state of this.states.values()) this.budget.forget(state);
    this.states.clear();
  }

  private async load(conversationId: string): Promise<ConversationState> {
    // The head first: getLastSeq may complete a commit its writer left pending, and that commit's
    // members and metadata must be in what is read next (read beside it, a removed member could
    // stay in memory, a rename be lost).
    const lastSeq = await this.store.getLastSeq(conversationId);
    const [record, members] = await Promise.all([
      this.store.getConversation(conversationId),
      this.store.getMembers(conversationId),
    ]);
    // The newest entry's time, so commit times stay monotonic across an eviction even if the
    // clock steps back. Only a page of one entry, and the state stays until evicted again.
    const [last] = lastSeq > 0 ? await this.store.readEntries(conversationId, lastSeq - 1, 1) : [];
    // Another load of the same id cannot race us (loads are deduplicated), but a failed commit
    // may have dropped an older state: the fresh one from the store replaces it.
    const state = new ConversationState(
      conversationId,
      record,
      new Map(members.map((m) => [m.userId, m])),
      lastSeq,
    );
    state.lastServerTimeMs = Number(last?.serverTimeMs ?? 0n);
    this.states.set(conversationId, state);
    return state;
  }

  private schedule(): void {
    if (this.scheduled || this.committing) return;
    this.scheduled = true;
    // setImmediate lets every request that arrived in this I/O turn join the batch.
    setImmediate(() => this.flushNow());
  }

  private flushNow(): void {
    // flush handles every store failure itself; this catch is for a bug, which must not end the
    // process through an unhandled rejection.
    this.flush().catch((err: unknown) => this.log.error({ err, shard: this.index }, "shard flush failed"));
  }

  private async flush(): Promise<void> {
    this.scheduled = false;
    if (this.committing) return;
    // The oldest closed batch first: batches commit in the order their seqs were assigned.
    const batch = this.sealed.shift() ?? this.open;
    if (batch === undefined) return;
    if (batch === this.open) this.open = undefined;
    this.committing = true;
    // One commit serves many sends: its span is a child of the first and links the others.
    const [first, ...others] = batch.traces;
    const { span } = startSpan("store.commit", first, {
      links: linksFrom(others),
      attributes: { "switchboard.shard": this.index, "switchboard.conversations": batch.writes.size },
    });
    const started = performance.now();
    // A store that does not answer (a hung fsync, an unreachable database) must not hold the
    // shard's sends forever: past the timeout they are refused as if the commit had failed. The
    // shard still waits for the store before its next commit (one in flight, always), and what
    // the store did with the batch is found by the reload and the senders' retries.
    let abandoned = false;
    const timer = setTimeout(() => {
      abandoned = true;
      commitFailures().add(1);
      this.log.error(
        { shard: this.index, timeoutMs: this.commitTimeoutMs },
        "commit did not finish in time; refusing its sends and reloading affected conversations",
      );
      this.abandon(
        batch,
        new UnavailableError("storage did not answer in time; retry", { retryAfterMs: RETRY_AFTER_MS }),
      );
    }, this.commitTimeoutMs);
    let failure: { err: unknown } | undefined;
    let handedOn = false;
    try {
      await this.store.commit([...batch.writes.values()]);
    } catch (err) {
      failure = { err };
    } finally {
      clearTimeout(timer);
    }
    try {
      if (failure === undefined) {
        commitSeconds().record((performance.now() - started) / 1000);
        endSpan(span);
        for (const state of batch.states) {
          const appended = batch.writes.get(state.id)?.append;
          const last = appended?.[appended.length - 1];
          if (last !== undefined) state.committedSeq = Math.max(state.committedSeq, Number(last.seq));
        }
        // The next batch goes to the store before this one's acks and deliveries run. They run in
        // this task (the bus hands fanout the events at once, and in one process every call on to
        // the devices answers in a microtask), hundreds of milliseconds of it at 10,000 msgs/s; a
        // next commit scheduled behind them left the store idle meanwhile, and the sends that
        // came in waited for both (docs/benchmarks.md, twentieth pass). Still one commit in
        // flight, and this batch's events are published before the next can finish.
        handedOn = true;
        this.committing = false;
        if (this.open !== undefined || this.sealed.length > 0) this.flushNow();
        batch.resolve();
        // Durable now (even if its senders were told otherwise after a timeout: their retries
        // find it); the outbox gets the events to the bus, however long the bus is away.
        this.outbox.publish(batch.events);
        return;
      }
      const { err } = failure;
      endSpan(span, err);
      // Parts of a failed commit may be durable (a commit to several conversations on ScyllaDB
      // finishes each on its own): their events are published once the store says which.
      this.publishDurableParts(batch);
      if (abandoned) {
        // Its sends were refused and its conversations reloaded already; work queued since was
        // sequenced on the reloaded states, not on top of this batch, so it stays.
        this.log.warn({ err, shard: this.index }, "a commit that had timed out failed");
        return;
      }
      commitFailures().add(1);
      this.log.error({ err, shard: this.index }, "commit failed; reloading affected conversations");
      // Every commit failure, the store's fence conflict included (a StoreError "conflict": the
      // log was written by another process, or this one's reservation was lost), is UNAVAILABLE
      // and never the conflict's own FAILED_PRECONDITION: a shard that lost its fence is one whose
      // ownership moved or is contested, and the client must retry with the same client_msg_id,
      // as it does when ownership moves. Its state is reloaded below, so the retry sees the log
      // as the store has it; the store's message stays in the log, not in the answer.
      // A storage fault the store already named (a full disk) keeps its message; either way the
      // client gets a retry hint.
      this.abandon(
        batch,
        err instanceof UnavailableError
          ? new UnavailableError(err.message, {
              retryAfterMs: err.retryAfterMs ?? RETRY_AFTER_MS,
              cause: err,
            })
          : new UnavailableError("storage commit failed; retry", {
              retryAfterMs: RETRY_AFTER_MS,
              cause: err,
            }),
      );
    } finally {
      if (!handedOn) {
        this.committing = false;
        if (this.open !== undefined || this.sealed.length > 0) this.schedule();
      }
    }
  }

  /**
   * After a failed commit, publishes the events of whatever part of it the store holds: for each
   * conversation it appended to, the store's head is settled (which completes this process's own
   * unfinished reservation at once) and the entries of the batch's seqs up to it are published,
   * as the store has them. In the background: a store that failed may be slow to answer. An entry
   * published twice (also by the recovery that completed it) is dropped by the consumers.
   */
  private publishDurableParts(batch: Batch): void {
    const ranges = [...batch.writes.values()].flatMap((w) => {
      const first = w.append?.[0];
      const last = w.append?.[w.append.length - 1];
      return first === undefined || last === undefined
        ? []
        : [{ id: w.conversationId, first: Number(first.seq), last: Number(last.seq) }];
    });
    if (ranges.length === 0) return;
    void Promise.all(
      ranges.map(async ({ id, first, last }) => {
        const upTo = Math.min(last, await this.store.getLastSeq(id));
        if (upTo < first) return;
        const entries = await this.store.readEntries(id, first - 1, upTo - first + 1);
        const durable = entries.filter((e) => Number(e.seq) <= upTo);
        if (durable.length === 0) return;
        this.log.info(
          { shard: this.index, conversationId: id, firstSeq: first, lastSeq: upTo },
          "publishing the durable part of a failed commit",
        );
        this.outbox.publish(durable.map((e) => committedEvent(e)));
      }),
    ).catch((err: unknown) =>
      this.log.warn({ err, shard: this.index }, "could not find the durable part of a failed commit"),
    );
  }

  /**
   * Refuses a batch that did not (or may not have) become durable, and the open batch, whose work
   * was sequenced on top of it; drops their conversations' states so the next operation reloads
   * them as the store has them.
   */
  private abandon(batch: Batch, refusal: UnavailableError): void {
    batch.reject(refusal);
    // Everything behind it was sequenced on top of it: the closed batches and the open one.
    const behind = [...this.sealed.splice(0), ...(this.open === undefined ? [] : [this.open])];
    this.open = undefined;
    for (const next of behind) next.reject(refusal);
    for (const state of [batch, ...behind].flatMap((b) => [...b.states])) {
      if (this.states.get(state.id) === state) this.states.delete(state.id);
      this.budget.forget(state);
    }
  }

  /**
   * Keeps the count of states within maxStates, least recently used first (as far as a
   * second-chance order tells: common/second-chance.ts).
   */
  private evict(): void {
    evictUnmarked(
      this.states,
      (_, state) => {
        if (this.drop(state)) this.budget.countEviction();
      },
      () => this.states.size <= this.maxStates,
    );
  }
}
