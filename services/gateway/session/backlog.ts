import { Code } from "@connectrpc/connect";
import type { ConversationSync } from "../../../gen/switchboard/internal/v1/sequencer_pb.js";
import type { Entry } from "../../../gen/switchboard/v1/entry_pb.js";
import { InvalidInputError, UnavailableError } from "../../common/errors.js";
import { requireId } from "../../common/validate.js";
import { entryForDevice } from "../device-set.js";
import type { StreamContext } from "./context.js";
import { boundPage, chunks, frame, inBand, removesUser } from "./frames.js";
import { OwnSends } from "./own-sends.js";

/** Where the chain of log reads starts: one settled promise for every stream, not one a stream. */
const SETTLED: Promise<void> = Promise.resolve();

/** Entries read from the log per catch-up page. */
const HISTORY_PAGE = 256;
/**
 * How long a live entry that came ahead of the next one to push waits for it, in milliseconds,
 * and how many such entries a stream holds at most. In a mesh, two fanout workers take one
 * consumer's events, so a conversation's entries can reach the gateway out of order; read from
 * the log instead, each cost a history call of about 0.5 ms of CPU across two processes and its
 * round trip (docs/benchmarks.md, twenty-ninth pass). Held entries are the bus's objects, kept
 * by reference.
 */
const REORDER_WAIT_MS = 25;
const REORDER_HELD_MAX = 256;
/**
 * Held only when at most this far ahead of what was pushed, and only in a conversation that has
 * pushed something: a conversation joined after the stream opened, or one the device is far
 * behind in, is read from the log at once, as its entries before will not come live. While the
 * log is being read, a live entry at most this far past the last one known is held too: it
 * follows the read's last page, instead of sending the stream back to the log when the read
 * ends.
 */
const REORDER_GAP_MAX = 16n;

/** First and longest wait between reads of a sync state that failed, in milliseconds. */
const SYNC_RETRY_MIN_MS = 250;
const SYNC_RETRY_MAX_MS = 2_000;

/** Where each of the device's conversations stands, and whether every shard answered. */
interface SyncState {
  conversations: ConversationSync[];
  /** False when some sequencer replica did not answer: its conversations are missing. */
  complete: boolean;
}

/** What the stream has pushed of one conversation. */
interface ConversationProgress {
  /** Every entry up to this seq has been queued to the device. */
  pushed: bigint;
  /** Entries up to this seq are known to exist and must be pushed. */
  target: bigint;
  /** The running catch-up from the log, if any. */
  running: Promise<number> | undefined;
  /** A live entry raised the target while the catch-up ran: check the target again when it ends. */
  again?: boolean;
  /** Live entries that came ahead of pushed + 1, by seq, waiting for it (REORDER_WAIT_MS). */
  held?: Map<bigint, Entry> | undefined;
  /** Reads the log for what is held if what it waits for has not come by then. */
  heldTimer?: NodeJS.Timeout | undefined;
}

/**
 * What one stream owes its device from the conversation logs, in seq order per conversation: a
 * live entry that follows what was pushed goes straight out, and one a little ahead of it waits
 * up to REORDER_WAIT_MS for the entries between; anything else (a gap that stays open, a full
 * queue, a conversation the stream has not seen yet) is fetched from the log instead, one page at
 * a time, so a slow device costs a bounded queue and a cursor, never unbounded memory. It also
 * answers the device's sync requests, whose pages are reads of the same logs.
 */
export class Backlog {
  private readonly progress = new Map<string, ConversationProgress>();
  // Live entries that arrived before the sync state was read: their conversations catch up after.
  // Made by the first such entry: most streams never have one.
  private early: Map<string, bigint> | undefined;
  private syncLoaded = false;
  /** False while the last sync state read lacked some replica's conversations. */
  private complete = false;
  /** A refresh was asked for before the first sync state was read. */
  private refreshWanted = false;
  private refreshing = false;
  private refreshAgain = false;
  /** Reads of the log (catch-up pages and sync pages) run one at a time, each behind the last. */
  private logReads: Promise<void> = SETTLED;
  /** Sync requests being answered or waiting to be. */
  private syncsPending = 0;
  /** Live entries held for the one before them, over every conversation. */
  private heldCount = 0;
  /** The stream's omit_own_sends option and the sends it covers (Sends remembers them). */
  readonly ownSends = new OwnSends();

  /** Entries pushed from the log as expired (gone from the server), for caught_up. */
  expiredPushed = 0;

  constructor(private readonly stream: StreamContext) {}

  /**
   * Resumes from the device's cursors: reads where each of its conversations stands, then pushes
   * everything past the cursors. Resolves to the entries pushed, or undefined if the stream ended
   * meanwhile. A sync state that cannot be read (a sequencer replica down) does not end the
   * stream: it is read again until it can be, and what could be read is pushed meanwhile.
   */
  async resume(): Promise<number | undefined> {
    const state = await this.readSyncState();
    if (state === undefined) return undefined;
    this.syncLoaded = true;
    this.merge(state);
    if (this.refreshWanted) {
      this.refreshWanted = false;
      void this.refresh();
    } else if (!state.complete) void sleep(SYNC_RETRY_MIN_MS).then(() => this.refresh());
    let entries = 0;
    for (const [id, p] of [...this.progress]) {
      if (this.stream.isClosed) return undefined;
      if (p.target > p.pushed || p.running !== undefined) {
        this.catchUp(id, p);
        entries += (await p.running) ?? 0;
      }
    }
    return entries;
  }

  /**
   * Reads the sync state again and catches up every conversation that moved past what was
   * pushed: after the route store lost this stream's route for a while (entries committed
   * meanwhile reached no gateway), and until a sync state read in part is complete.
   */
  async refresh(): Promise<void> {
    if (!this.syncLoaded) {
      // resume() reads the state after this and refreshes once more when it is done.
      this.refreshWanted = true;
      return;
    }
    if (this.refreshing) {
      this.refreshAgain = true;
      return;
    }
    this.refreshing = true;
    try {
      let wait = SYNC_RETRY_MIN_MS;
      do {
        this.refreshAgain = false;
        const state = await this.readSyncState();
        if (state === undefined) return;
        this.merge(state);
        for (const [id, p] of this.progress) if (p.target > p.pushed) this.catchUp(id, p);
        if (!state.complete) {
          await sleep(wait);
          wait = Math.min(wait * 2, SYNC_RETRY_MAX_MS);
          this.refreshAgain = true;
        }
      } while (this.refreshAgain && !this.stream.isClosed);
    } finally {
      this.refreshing = false;
    }
  }

  /**
   * The device's sync state, read until at least part of it can be (backing off), or undefined
   * once the stream has ended.
   */
  private async readSyncState(): Promise<SyncState | undefined> {
    const { userId, deviceId, host } = this.stream;
    let wait = SYNC_RETRY_MIN_MS;
    for (let failures = 0; !this.stream.isClosed; failures++) {
      try {
        const state = await host.sequencer.getSyncState({ userId, deviceId });
        // Some replicas did not answer: push what the others named now, the rest later.
        return { conversations: state.conversations, complete: state.unansweredReplicas.length === 0 };
      } catch (err) {
        // Logged once per outage of this stream; the stream stays open and sends still work.
        if (failures === 0)
          host.log.warn(
            { err, sessionId: this.stream.id },
            "could not read the device's sync state; retrying while the stream stays open",
          );
        await sleep(wait);
        wait = Math.min(wait * 2, SYNC_RETRY_MAX_MS);
      }
    }
    return undefined;
  }

  /**
   * Takes in a sync state: conversations not seen yet start at the device's cursor, known ones
   * only raise their target. Live entries that came before a complete state (or whose
   * conversation the partial state did not name) wait in `early` until it names them.
   */
  private merge(state: SyncState): void {
    for (const c of state.conversations) {
      const floor = c.joinedSeq > 0n ? c.joinedSeq - 1n : 0n;
      const p = this.progress.get(c.conversationId);
      if (p === undefined) {
        const pushed = c.deliveredUpTo > floor ? c.deliveredUpTo : floor;
        this.progress.set(c.conversationId, { pushed, target: c.lastSeq, running: undefined });
      } else if (c.lastSeq > p.target) p.target = c.lastSeq;
    }
    this.complete = state.complete;
    if (this.early === undefined) return;
    for (const [id, seq] of [...this.early]) {
      let p = this.progress.get(id);
      if (p === undefined) {
        // Not named by a partial state: its replica did not answer; wait for it.
        if (!state.complete) continue;
        p = { pushed: 0n, target: 0n, running: undefined };
        this.progress.set(id, p);
      }
      if (seq > p.target) p.target = seq;
      this.early.delete(id);
    }
    if (this.early.size === 0) this.early = undefined;
  }

  /** A committed entry from fanout. */
  deliver(entry: Entry): void {
    const id = entry.conversationId;
    let p = this.progress.get(id);
    if (!this.syncLoaded || (p === undefined && !this.complete)) {
      // Before the sync state, or in a conversation whose replica has not answered it yet: its
      // cursor is unknown, so it waits for the state that names it.
      this.early ??= new Map();
      const seen = this.early.get(id) ?? 0n;
      if (entry.seq > seen) this.early.set(id, entry.seq);
      return;
    }
    if (p === undefined) {
      // A conversation this stream has not seen: the user joined it after the stream opened.
      // The log (which starts at the user's join) is the only safe source for it.
      p = { pushed: 0n, target: 0n, running: undefined };
      this.progress.set(id, p);
    }
    if (entry.seq <= p.pushed) return;
    if (p.running !== undefined) {
      // A read of the log is on its way. In a conversation that keeps moving, an entry commits
      // while the read travels, and read again it sent the stream back to the log when the read
      // ended, and again after that read (docs/benchmarks.md, thirtieth pass): held, it follows
      // the read's last page. One too far past what is known, or past the stream's bound, makes
      // the stream read once more when this read ends.
      // The target stays where the log is known to end: raised, it would make the read go on
      // to fetch this very entry.
      if (entry.seq - p.target <= REORDER_GAP_MAX && this.hold(p, entry)) return;
      if (entry.seq > p.target) p.target = entry.seq;
      this.catchUp(id, p);
      return;
    }
    if (entry.seq === p.pushed + 1n) {
      // What was held for this entry follows it. Anything still held after is past another gap,
      // for which the timer already waits.
      if (this.pushLive(id, p, entry)) this.pushHeld(id, p);
      return;
    }
    if (entry.seq > p.target) p.target = entry.seq;
    if (p.pushed > 0n && entry.seq - p.pushed <= REORDER_GAP_MAX && this.hold(p, entry)) {
      this.waitForHeld(id, p);
      return;
    }
    this.dropHeld(p);
    this.catchUp(id, p);
  }

  /** Holds a live entry for the ones before it; false when the stream holds all it may. */
  private hold(p: ConversationProgress, entry: Entry): boolean {
    if (p.held?.has(entry.seq)) return true;
    if (this.heldCount >= REORDER_HELD_MAX) return false;
    p.held ??= new Map();
    p.held.set(entry.seq, entry);
    this.heldCount++;
    return true;
  }

  /** Reads the log for what is held unless the entries before it come live within the wait. */
  private waitForHeld(id: string, p: ConversationProgress): void {
    p.heldTimer ??= setTimeout(() => {
      p.heldTimer = undefined;
      this.dropHeld(p);
      if (this.stream.isClosed || this.progress.get(id) !== p) return;
      this.catchUp(id, p);
    }, REORDER_WAIT_MS);
  }

  /**
   * After a live entry or a read of the log: pushes what was held and now follows what was
   * pushed, lets go of what was already pushed, and waits for the entries before what is still
   * held (the log is read up to them if they do not come).
   */
  private pushHeld(id: string, p: ConversationProgress): void {
    if (p.held === undefined) return;
    for (const seq of [...p.held.keys()]) if (seq <= p.pushed) this.release(p, seq);
    for (let next = p.held?.get(p.pushed + 1n); next !== undefined; next = p.held?.get(p.pushed + 1n)) {
      this.release(p, next.seq);
      if (!this.pushLive(id, p, next)) return;
    }
    if (p.held === undefined) return;
    for (const seq of p.held.keys()) if (seq > p.target) p.target = seq;
    this.waitForHeld(id, p);
  }

  /**
   * Pushes the live entry that follows what was pushed. False when it could not be (the queue is
   * full: the log takes over, what was held included) or it was the last for this user (removed
   * from the conversation).
   */
  private pushLive(id: string, p: ConversationProgress, entry: Entry): boolean {
    if (
      !this.ownSends.skip(entry.senderDeviceId, this.stream.deviceId, entry.clientMsgId) &&
      !this.stream.outbound.offerEntries([entryForDevice(entry, this.stream.deviceId)])
    ) {
      if (entry.seq > p.target) p.target = entry.seq;
      this.dropHeld(p);
      this.catchUp(id, p);
      return false;
    }
    p.pushed = entry.seq;
    if (p.target < p.pushed) p.target = p.pushed;
    if (removesUser(entry, this.stream.userId)) {
      this.dropHeld(p);
      this.progress.delete(id);
      return false;
    }
    return true;
  }

  /** Lets go of one held entry. */
  private release(p: ConversationProgress, seq: bigint): void {
    if (p.held?.delete(seq)) this.heldCount--;
    if (p.held?.size === 0) this.dropHeld(p);
  }

  /** Lets go of what a conversation holds (the log will push it) and of its timer. */
  private dropHeld(p: ConversationProgress): void {
    if (p.heldTimer !== undefined) {
      clearTimeout(p.heldTimer);
      p.heldTimer = undefined;
    }
    if (p.held === undefined) return;
    this.heldCount -= p.held.size;
    p.held = undefined;
  }

  /**
   * Answers a sync request. Requests are answered one at a time, in order, each page read only
   * once the queue has room for it; up to maxQueuedSyncRequests wait behind the one being
   * answered, and one more is refused at once (RESOURCE_EXHAUSTED on its request id).
   */
  sync(requestId: number, conversationId: string, afterSeq: bigint, limit: number): void {
    const { host, outbound } = this.stream;
    const page = {
      requestId,
      conversationId,
      entries: [] as Entry[],
      lastSeq: 0n,
      hasMore: false,
      errorCode: 0,
      errorMessage: "",
    };
    const max = host.limits.maxQueuedSyncRequests;
    if (this.syncsPending > max) {
      host.refused("sync_requests_queued", "sync request refused: too many waiting on one stream", {
        userId: this.stream.userId,
        deviceId: this.stream.deviceId,
        sessionId: this.stream.id,
      });
      page.errorCode = Code.ResourceExhausted;
      page.errorMessage = `too many sync requests: one is answered at a time and at most ${max} wait behind it; send the next when a page arrives`;
      this.stream.answer(frame({ case: "syncPage", value: page }));
      return;
    }
    this.syncsPending++;
    void this.exclusive(async () => {
      try {
        requireId("conversation_id", conversationId, "conversation");
        if (limit > 1000) throw new InvalidInputError("limit: at most 1000");
        await outbound.space(host.limits.maxPageBytes);
        if (this.stream.isClosed) return;
        const history = await this.readPage(conversationId, afterSeq, limit);
        page.entries = history.entries.map((e) => entryForDevice(e, this.stream.deviceId));
        page.lastSeq = history.lastSeq;
        page.hasMore = history.hasMore;
      } catch (err) {
        const e = inBand(err);
        page.errorCode = e.code;
        page.errorMessage = e.rawMessage;
      }
      await outbound.put(frame({ case: "syncPage", value: page }));
    }).finally(() => {
      this.syncsPending--;
    });
  }

  /** Runs a read of the log after every earlier one has finished (one at a time per stream). */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.logReads.then(fn);
    this.logReads = run.then(
      () => {},
      () => {},
    );
    return run;
  }

  private catchUp(conversationId: string, p: ConversationProgress): void {
    if (p.running !== undefined) {
      p.again = true;
      return;
    }
    p.again = false;
    p.running = this.fetchFromLog(conversationId, p).finally(() => {
      p.running = undefined;
      if (this.stream.isClosed || this.progress.get(conversationId) !== p) {
        this.dropHeld(p);
        return;
      }
      // The read settles a few microtasks after its last page: a live entry arriving then found
      // the read still running, and would otherwise wait for the next entry of the conversation,
      // or the next connection (session.test.ts tries every moment). It is held, or it asked
      // for another read.
      this.pushHeld(conversationId, p);
      if (p.again && p.pushed < p.target && this.progress.get(conversationId) === p) {
        // Something could not be held: read on now rather than wait for what is.
        this.dropHeld(p);
        this.catchUp(conversationId, p);
      }
    });
  }

  /**
   * Pushes entries from the log until the conversation's target is reached. Each page is read
   * only once the queue has room for it, and reads of the log run one at a time per stream, so
   * a device that does not read holds its queue and nothing more.
   */
  private async fetchFromLog(conversationId: string, p: ConversationProgress): Promise<number> {
    let pushed = 0;
    let failures = 0;
    while (!this.stream.isClosed && p.pushed < p.target) {
      let step: { pushed: number; done: boolean };
      try {
        step = await this.exclusive(() => this.pushPage(conversationId, p));
      } catch (err) {
        // The sequencer's answer (a call's ConnectError) or a domain error of this process.
        const e = inBand(err);
        if (e.code === Code.PermissionDenied || e.code === Code.NotFound) {
          // No longer (or never) a member: nothing of this conversation is for this device.
          this.progress.delete(conversationId);
          return pushed;
        }
        if (++failures > 5) {
          this.stream.close(new UnavailableError("could not read the log; reconnect"));
          return pushed;
        }
        await new Promise((r) => setTimeout(r, 100 * 2 ** failures));
        continue;
      }
      failures = 0;
      pushed += step.pushed;
      if (step.done) break;
    }
    return pushed;
  }

  /**
   * Reads one page of a conversation's log once the queue has room for it and queues it as
   * message frames; runs inside exclusive(), so the stream holds at most one page beyond its
   * queue.
   */
  private async pushPage(
    conversationId: string,
    p: ConversationProgress,
  ): Promise<{ pushed: number; done: boolean }> {
    const { outbound } = this.stream;
    const { maxPageBytes } = this.stream.host.limits;
    await outbound.space(maxPageBytes);
    if (this.stream.isClosed) return { pushed: 0, done: true };
    const page = await this.readPage(conversationId, p.pushed, HISTORY_PAGE);
    if (page.entries.length === 0) {
      p.target = p.pushed;
      return { pushed: 0, done: true };
    }
    let pushed = 0;
    const own = page.entries.map((e) => entryForDevice(e, this.stream.deviceId));
    for (const chunk of chunks(own, maxPageBytes)) {
      const queued = await outbound.put(frame({ case: "message", value: { entries: chunk } }));
      if (!queued || this.stream.isClosed) return { pushed, done: true };
      p.pushed = chunk[chunk.length - 1]!.seq;
      pushed += chunk.length;
      for (const e of chunk) if (e.expired) this.expiredPushed++;
      if (chunk.some((e) => removesUser(e, this.stream.userId))) {
        this.progress.delete(conversationId);
        return { pushed, done: true };
      }
    }
    if (page.lastSeq > p.target) p.target = page.lastSeq;
    return { pushed, done: false };
  }

  /** A page of the log for this user, at most maxPageBytes of entries. */
  private async readPage(conversationId: string, afterSeq: bigint, limit: number) {
    const maxBytes = this.stream.host.limits.maxPageBytes;
    const page = await this.stream.host.sequencer.getHistory({
      userId: this.stream.userId,
      deviceId: this.stream.deviceId,
      conversationId,
      afterSeq,
      limit,
      maxBytes,
    });
    const bounded = boundPage(page.entries, maxBytes);
    return { entries: bounded.entries, lastSeq: page.lastSeq, hasMore: page.hasMore || bounded.cut };
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
