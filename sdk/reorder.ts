import type { Entry } from "../gen/switchboard/v1/entry_pb.js";

/** What the reorder buffer needs from its owner. */
export interface ReorderOptions {
  /** Asks the server for entries after `afterSeq` (a sync_request frame). */
  requestSync(conversationId: string, afterSeq: bigint, limit: number): void;
  /** Called when an entry at or below the cursor arrives again, so the owner can re-ack. */
  onDuplicate?(conversationId: string, seq: bigint): void;
  /** A gap not filled within this long is requested again, in milliseconds (doubling per retry). */
  gapTimeoutMs: number;
  /** Entries per sync request. */
  pageSize: number;
  /**
   * Entries held back per conversation while waiting for a gap. Beyond it, new entries are
   * dropped: they are fetched again by sync once the gap is filled, so memory stays bounded.
   */
  maxBufferedPerConversation?: number;
}

/** The answer to a sync request, as the reorder buffer needs it. */
export interface SyncAnswer {
  /** The conversation. */
  conversationId: string;
  /** The after_seq of the request this answers. */
  afterSeq: bigint;
  /** Entries in ascending seq order. */
  entries: readonly Entry[];
  /** The conversation's last seq when the page was read. */
  lastSeq: bigint;
  /** True when entries past this page exist. */
  hasMore: boolean;
  /** gRPC code number; 0 on success. */
  errorCode: number;
}

interface ConversationState {
  /** Highest seq released to the owner; undefined until the first entry fixes the start. */
  cursor: bigint | undefined;
  /** Entries past a gap, by seq. */
  held: Map<bigint, Entry>;
  /** Highest seq known to exist (and be visible to this device). */
  knownLast: bigint;
  /** A sync request is out and unanswered. */
  syncInFlight: boolean;
  /** Retries the gap if it is still open when it fires. */
  timer: NodeJS.Timeout | undefined;
  /** Current retry delay, in milliseconds. */
  retryMs: number;
}

const CODE_NOT_FOUND = 5;
const CODE_PERMISSION_DENIED = 7;
const MAX_RETRY_MS = 8_000;

/**
 * Releases each conversation's entries strictly in seq order, exactly once. Entries past a gap are
 * held while the gap is fetched (immediately, and again on a timer if neither live traffic nor the
 * answer fills it). Sync answers are authoritative about visibility: when the server's page for
 * "after my cursor" starts later, or skips seqs, those entries are not visible to this device (it
 * was not a member then) and the cursor jumps over them.
 */
export class ReorderBuffer {
  private readonly conversations = new Map<string, ConversationState>();
  private readonly maxHeld: number;

  constructor(
    initialCursors: Iterable<readonly [string, bigint]>,
    private readonly options: ReorderOptions,
  ) {
    this.maxHeld = options.maxBufferedPerConversation ?? 10_000;
    for (const [conversationId, seq] of initialCursors) {
      this.conversations.set(conversationId, this.newState(seq));
    }
  }

  /** Highest seq released in a conversation; undefined if none was ever seen. */
  cursor(conversationId: string): bigint | undefined {
    return this.conversations.get(conversationId)?.cursor;
  }

  /** Entries held back in a conversation. */
  heldCount(conversationId: string): number {
    return this.conversations.get(conversationId)?.held.size ?? 0;
  }

  /** Conversations with an open gap. */
  gaps(): Array<{ conversationId: string; afterSeq: bigint }> {
    const out: Array<{ conversationId: string; afterSeq: bigint }> = [];
    for (const [conversationId, state] of this.conversations) {
      if (this.hasGap(state)) out.push({ conversationId, afterSeq: state.cursor ?? 0n });
    }
    return out;
  }

  /** Takes entries from the stream; returns those now releasable, in order. */
  offer(entries: readonly Entry[]): Entry[] {
    const out: Entry[] = [];
    const touched = new Set<string>();
    for (const entry of entries) {
      this.accept(entry, out);
      touched.add(entry.conversationId);
    }
    for (const conversationId of touched) this.reviewGap(conversationId);
    return out;
  }

  /**
   * Takes this device's own entry, filed at send_ack rather than pushed by the stream (the client
   * asks the server to omit its own sends). Unlike the stream's first entry of a conversation, it
   * says nothing about where the conversation starts for this device: sent into a group whose
   * first entries have not reached the device yet, it would otherwise fix the start past them. In
   * a conversation without a cursor it is held, and the log is asked for from its start.
   */
  offerOwn(entry: Entry): Entry[] {
    const id = entry.conversationId;
    const state = this.conversations.get(id);
    // Seq 1 is the start whoever reads it: nothing to wait for.
    if (state?.cursor !== undefined || entry.seq === 1n) return this.offer([entry]);
    const s = state ?? this.newState(undefined);
    this.conversations.set(id, s);
    if (!s.held.has(entry.seq) && s.held.size < this.maxHeld) s.held.set(entry.seq, entry);
    s.knownLast = maxBig(s.knownLast, entry.seq);
    this.reviewGap(id);
    return [];
  }

  /** Takes the answer to a sync request; returns the entries now releasable, in order. */
  answer(page: SyncAnswer): Entry[] {
    const state = this.conversations.get(page.conversationId);
    const out: Entry[] = [];
    if (state === undefined) {
      for (const entry of page.entries) this.accept(entry, out);
      return out;
    }
    state.syncInFlight = false;
    // A page from the log's start fixes where a conversation without a cursor starts: at its
    // first entry, the first this device may see (offerOwn asks for it).
    if (state.cursor === undefined && page.afterSeq === 0n && page.errorCode === 0) state.cursor = 0n;
    if (page.errorCode !== 0) {
      if (page.errorCode === CODE_NOT_FOUND || page.errorCode === CODE_PERMISSION_DENIED) {
        // No longer a member: nothing past the cursor will ever become visible, so waiting for
        // the gap would retry forever.
        state.held.clear();
        state.knownLast = state.cursor ?? 0n;
        this.stopTimer(state);
      }
      // Other errors are transient: the gap timer asks again.
      return out;
    }
    const authoritative = state.cursor === page.afterSeq;
    for (const entry of page.entries) {
      if (entry.conversationId !== page.conversationId) continue;
      // The page holds every visible entry after afterSeq in order, so a jump inside an
      // authoritative page is a stretch this device may not see.
      if (authoritative && state.cursor !== undefined && entry.seq > state.cursor + 1n) {
        this.skipTo(state, entry.seq - 1n, out);
      }
      this.accept(entry, out);
    }
    if (page.hasMore && state.cursor !== undefined) {
      state.knownLast = maxBig(state.knownLast, state.cursor + 1n);
    } else if (authoritative && !page.hasMore) {
      const lowestHeld = minKey(state.held);
      if (lowestHeld !== undefined && page.lastSeq >= lowestHeld) {
        // The page covered the held entries' range and had nothing before them: invisible.
        this.skipTo(state, lowestHeld - 1n, out);
      } else if (lowestHeld === undefined) {
        // last_seq may count entries this device cannot see; only entries seen prove a gap.
        state.knownLast = state.cursor ?? state.knownLast;
      }
    }
    this.reviewGap(page.conversationId);
    return out;
  }

  /**
   * Stops fetching gaps (the stream ended; its requests will not be answered). The buffer keeps
   * its entries and cursors.
   */
  pause(): void {
    for (const state of this.conversations.values()) {
      this.stopTimer(state);
      state.syncInFlight = false;
      state.retryMs = this.options.gapTimeoutMs;
    }
  }

  /** Asks for every open gap; call once a new stream has sent its backlog (caught_up). */
  resume(): void {
    for (const conversationId of this.conversations.keys()) this.reviewGap(conversationId);
  }

  private accept(entry: Entry, out: Entry[]): void {
    let state = this.conversations.get(entry.conversationId);
    if (state === undefined) {
      // No local cursor: the server sends a conversation in order from the first entry this
      // device may see, which need not be seq 1 (it may have joined later).
      state = this.newState(entry.seq - 1n);
      this.conversations.set(entry.conversationId, state);
    }
    if (state.cursor === undefined) {
      // The stream sends a conversation in order from its first entry for this device, so that
      // entry fixes the start. Own entries held until then are in the log past it (offerOwn).
      state.cursor = entry.seq - 1n;
      for (const held of state.held.keys()) if (held <= state.cursor) state.held.delete(held);
    }
    if (entry.seq <= state.cursor || state.held.has(entry.seq)) {
      this.options.onDuplicate?.(entry.conversationId, entry.seq);
      return;
    }
    state.knownLast = maxBig(state.knownLast, entry.seq);
    if (entry.seq === state.cursor + 1n) {
      out.push(entry);
      state.cursor = entry.seq;
      this.drain(state, out);
      return;
    }
    if (state.held.size < this.maxHeld) state.held.set(entry.seq, entry);
  }

  private drain(state: ConversationState, out: Entry[]): void {
    for (;;) {
      const next = state.held.get((state.cursor ?? 0n) + 1n);
      if (next === undefined) return;
      state.held.delete(next.seq);
      out.push(next);
      state.cursor = next.seq;
    }
  }

  private skipTo(state: ConversationState, seq: bigint, out: Entry[]): void {
    if (state.cursor !== undefined && seq <= state.cursor) return;
    state.cursor = seq;
    for (const held of state.held.keys()) if (held <= seq) state.held.delete(held);
    this.drain(state, out);
  }

  private hasGap(state: ConversationState): boolean {
    // No cursor yet: only own entries waiting for the conversation's start make a gap.
    if (state.cursor === undefined) return state.held.size > 0;
    return state.knownLast > state.cursor && !state.held.has(state.cursor + 1n);
  }

  private reviewGap(conversationId: string): void {
    const state = this.conversations.get(conversationId);
    if (state === undefined) return;
    if (!this.hasGap(state)) {
      this.stopTimer(state);
      state.retryMs = this.options.gapTimeoutMs;
      return;
    }
    if (!state.syncInFlight) this.request(conversationId, state);
    if (state.timer === undefined) this.startTimer(conversationId, state);
  }

  private request(conversationId: string, state: ConversationState): void {
    state.syncInFlight = true;
    this.options.requestSync(conversationId, state.cursor ?? 0n, this.options.pageSize);
  }

  private startTimer(conversationId: string, state: ConversationState): void {
    state.timer = setTimeout(() => {
      state.timer = undefined;
      if (!this.hasGap(state)) return;
      // The request or its answer may have been lost; ask again, more slowly each time.
      this.request(conversationId, state);
      state.retryMs = Math.min(state.retryMs * 2, MAX_RETRY_MS);
      this.startTimer(conversationId, state);
    }, state.retryMs);
    state.timer.unref?.();
  }

  private stopTimer(state: ConversationState): void {
    if (state.timer !== undefined) clearTimeout(state.timer);
    state.timer = undefined;
  }

  private newState(cursor: bigint | undefined): ConversationState {
    return {
      cursor,
      held: new Map(),
      knownLast: cursor ?? 0n,
      syncInFlight: false,
      timer: undefined,
      retryMs: this.options.gapTimeoutMs,
    };
  }
}

function maxBig(a: bigint, b: bigint): bigint {
  return a > b ? a : b;
}

function minKey(map: Map<bigint, unknown>): bigint | undefined {
  let min: bigint | undefined;
  for (const key of map.keys()) if (min === undefined || key < min) min = key;
  return min;
}
