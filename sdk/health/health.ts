import { type Conversation, ConversationKind } from "../../gen/switchboard/v1/conversations_pb.js";
import type { SwitchboardClient } from "../client.js";
import type { ProfileStorage } from "../storage/port.js";
import type { IncomingEntry, ReceiptEvent } from "../types.js";
import {
  type AppEventFields,
  appEvent,
  EventPipe,
  type HealthEvent,
  type HealthSink,
  type SinkStats,
} from "./events.js";
import {
  type AwaySummary,
  awaySummary,
  type ConversationState,
  DEFAULT_SETTINGS,
  type HealthEntry,
  type HealthMetrics,
  type HealthSettings,
  markOpened,
  metrics,
  type NeedsReply,
  needsReply,
  newConversation,
  observe,
  REPLY_WINDOW_MS,
  type StartRecord,
} from "./model.js";
import { HealthStore, type StoreLimits } from "./store.js";

/** Conversation ids health tracks: id-shaped, so a record stays small. */
const CONVERSATION_ID = /^[A-Za-z0-9_-]{1,64}$/;
/** Kind lookups (GetConversation) in flight at once; others wait for the conversation's next entry. */
const MAX_KIND_LOOKUPS = 4;

/**
 * Options of ConversationHealth.open and attach. Durations in milliseconds. The bounds and the
 * write batching (maxConversations, maxStateBytes, maxStarts, writeDelayMs) are StoreLimits.
 */
export interface HealthOptions extends Partial<HealthSettings>, StoreLimits {
  /**
   * Where health events go. Without a sink no event is even made: health is computed on the
   * device and stays there.
   */
  sink?: HealthSink;
  /**
   * Tells whether a message mentions this user inside its (decrypted) content, for apps that keep
   * mentions in the content alone. Runs on the device; only the yes or no is kept.
   */
  mentionsMe?: (entry: IncomingEntry) => boolean;
  /** The clock for needsReply, metrics and opened; default Date.now. */
  now?: () => number;
  /** Keep changes in memory only (a process that does not hold the profile, e.g. a CLI listing). */
  readOnly?: boolean;
  /** Events waiting for a slow sink before the oldest is dropped. Default 1,000. */
  maxQueuedEvents?: number;
}

/** The part of a client health uses (SwitchboardClient has it all). */
export type HealthClient = Pick<
  SwitchboardClient,
  "userId" | "storage" | "on" | "off" | "getConversation" | "getHistory" | "listConversations" | "localCursor"
>;

/**
 * Conversation health on the device (seed 000, section 11): conversation starts, time to first
 * reply and the 24-hour reply rate, "needs reply" per conversation, and the "since you were away"
 * summary, from the entries this device sees; kept in the profile's storage (under `health/`),
 * bounded, and sent nowhere. With a sink, the metadata-only event stream goes to it.
 */
export class ConversationHealth {
  private readonly settings: HealthSettings;
  private readonly now: () => number;
  private readonly pipe: EventPipe;
  private readonly lookups = new Set<string>();
  private readonly conversations: Map<string, ConversationState>;
  private client: HealthClient | undefined;
  private detachListeners: (() => void) | undefined;

  private constructor(
    private readonly userId: string,
    private readonly options: HealthOptions,
    private readonly store: HealthStore,
  ) {
    this.conversations = store.conversations;
    this.settings = {
      startAfterInactiveMs: options.startAfterInactiveMs ?? DEFAULT_SETTINGS.startAfterInactiveMs,
      needsReplyMaxAgeMs: options.needsReplyMaxAgeMs ?? DEFAULT_SETTINGS.needsReplyMaxAgeMs,
      metricsWindowMs: options.metricsWindowMs ?? DEFAULT_SETTINGS.metricsWindowMs,
    };
    if (!(this.settings.startAfterInactiveMs > 0))
      throw new RangeError("startAfterInactiveMs must be positive");
    this.now = options.now ?? Date.now;
    this.pipe = new EventPipe(options.sink, options.maxQueuedEvents ?? 1_000);
  }

  /** Opens the health state kept in a profile's storage, for one user. */
  static async open(
    storage: ProfileStorage,
    userId: string,
    options: HealthOptions = {},
  ): Promise<ConversationHealth> {
    return new ConversationHealth(
      userId,
      options,
      await HealthStore.open(storage, options.readOnly === true, options),
    );
  }

  /**
   * Opens health for a client and follows it: every entry it hands to the app, and its receipts.
   * Attach before connect() so no entry passes unseen. Health writes its state in batches
   * (writeDelayMs) rather than holding every ack for a write of its own; entries the client
   * acknowledged but health did not write (a crash in between) are taken from history again:
   * `repaired` settles once that is done, in the background.
   */
  static async attach(client: HealthClient, options: HealthOptions = {}): Promise<ConversationHealth> {
    const health = await ConversationHealth.open(client.storage, client.userId, options);
    health.client = client;
    const onEntry = (e: IncomingEntry): void => health.observe(e);
    const onReceipt = (r: ReceiptEvent): void => health.receipt(r);
    // The client releases the profile at close; health's last write must come before that.
    const onClosing = (): Promise<void> => health.close();
    client.on("entry", onEntry);
    client.on("receipt", onReceipt);
    client.on("closing", onClosing);
    health.detachListeners = () => {
      client.off("entry", onEntry);
      client.off("receipt", onReceipt);
      client.off("closing", onClosing);
    };
    health.repaired = health.repair().catch(() => {});
    return health;
  }

  /** Settles once attach's repair is done (at once for a health opened without a client). */
  repaired: Promise<void> = Promise.resolve();

  /**
   * Takes from history the entries of conversations whose cursor in the profile passed what
   * health wrote: acknowledged by the client, lost by health (the process ended before its
   * write), or delivered before the app used health at all (the latest `limit` of them). Not in
   * read-only mode, whose caller catches up itself.
   */
  private async repair(): Promise<void> {
    if (!this.store.writable) return;
    const client = this.requireClient();
    const list = await client.listConversations();
    for (const c of list.slice(0, this.options.maxConversations ?? 1_000)) {
      // close() stops a repair between conversations; the next attach takes up the rest.
      if (this.detachListeners === undefined) return;
      const delivered = client.localCursor(c.conversationId)?.delivered ?? 0n;
      if (delivered <= (this.conversations.get(c.conversationId)?.lastSeq ?? 0n)) continue;
      this.setKind(c.conversationId, c.kind === ConversationKind.GROUP ? "group" : "direct");
      await this.catchUp(c.conversationId, { lastSeq: delivered });
    }
  }

  /** Stops following the client (state stays in storage). */
  detach(): void {
    this.detachListeners?.();
    this.detachListeners = undefined;
  }

  /**
   * Stops following the client, waits for a repair under way (it stops after its current
   * conversation), writes what changed and lets the sink take what is queued. Attached health
   * closes with its client.
   */
  async close(): Promise<void> {
    this.detach();
    await this.repaired;
    await this.flushed();
  }

  /**
   * Takes an entry into the state (attach does this for every entry the client delivers; call it
   * for entries that come another way). Entries at or below a conversation's highest seen seq are
   * ignored. Written with the next batch (flush() writes at once).
   */
  observe(entry: IncomingEntry): void {
    if (entry.keysOnly || !CONVERSATION_ID.test(entry.conversationId)) return;
    const state = this.stateOf(entry.conversationId);
    const result = observe(state, this.userId, this.healthEntry(entry), this.settings);
    if (result.kind === "ignored") return;
    const at = Number(entry.serverTimeMs);
    const id = entry.conversationId;
    if (entry.kind === "message" && entry.fromThisDevice) {
      this.emit({ name: "messaging.message_sent", atMs: at, conversationId: id, seq: entry.seq.toString() });
    }
    this.store.touch(state);
    if (result.start !== undefined) {
      this.store.addStart(result.start);
      this.emit({
        name: "conversation.conversation_start",
        atMs: at,
        conversationId: id,
        seq: entry.seq.toString(),
        startSeq: entry.seq.toString(),
        ...(result.inactiveMs !== undefined && { inactiveMs: result.inactiveMs }),
      });
    }
    if (result.reply !== undefined) {
      const { start, replySeq, replyMs } = result.reply;
      this.store.recordReply(start, replyMs);
      this.emit({
        name: "conversation.reply_received",
        atMs: at,
        conversationId: id,
        seq: replySeq.toString(),
        userId: entry.senderUserId,
        startSeq: start.seq.toString(),
        ttfrMs: replyMs,
        within24h: replyMs <= REPLY_WINDOW_MS,
      });
    }
  }

  /**
   * Brings a conversation's state up to the server's log without the stream: the entries after
   * the last one health saw, at most `limit` of the latest (GetHistory). Apps call it when they
   * open a conversation or list them, since entries this device has not streamed yet are unseen.
   */
  async catchUp(conversationId: string, options: { lastSeq?: bigint; limit?: number } = {}): Promise<void> {
    const client = this.requireClient();
    const limit = Math.min(Math.max(options.limit ?? 50, 1), 200);
    let lastSeq = options.lastSeq;
    if (lastSeq === undefined || this.conversations.get(conversationId)?.kind === undefined) {
      const { conversation } = await client.getConversation(conversationId);
      lastSeq = conversation.lastSeq;
      this.setKind(conversationId, conversation.kind === ConversationKind.GROUP ? "group" : "direct");
    }
    const seen = this.conversations.get(conversationId)?.lastSeq ?? 0n;
    if (lastSeq <= seen) return;
    let after = lastSeq - BigInt(limit) > seen ? lastSeq - BigInt(limit) : seen;
    while (after < lastSeq) {
      const page = await client.getHistory(conversationId, {
        afterSeq: after,
        limit: Number(lastSeq - after),
      });
      for (const e of page.entries) this.observe(e);
      const last = page.entries.at(-1)?.seq;
      if (last === undefined || last <= after || !page.hasMore) break;
      after = last;
    }
  }

  /**
   * catchUp for every conversation of the user whose log moved past what health saw (from
   * `conversations`, a listConversations() the caller already has, or a fresh one).
   */
  async catchUpAll(options: { limit?: number; conversations?: readonly Conversation[] } = {}): Promise<void> {
    const client = this.requireClient();
    const list = options.conversations ?? (await client.listConversations());
    const max = this.options.maxConversations ?? 1_000;
    for (const c of list.slice(0, max)) {
      this.setKind(c.conversationId, c.kind === ConversationKind.GROUP ? "group" : "direct");
      if (c.lastSeq > (this.conversations.get(c.conversationId)?.lastSeq ?? 0n)) {
        await this.catchUp(c.conversationId, {
          lastSeq: c.lastSeq,
          ...(options.limit !== undefined && { limit: options.limit }),
        });
      }
    }
  }

  /** Whether a conversation waits for this user's reply (model.ts needsReply says exactly when). */
  needsReply(conversationId: string, nowMs = this.now()): NeedsReply {
    const state = this.conversations.get(conversationId);
    if (state === undefined) return { conversationId, needsReply: false };
    return needsReply(state, nowMs, this.settings);
  }

  /** Every conversation that needs a reply, longest waiting first. */
  conversationsNeedingReply(nowMs = this.now()): NeedsReply[] {
    return [...this.conversations.values()]
      .map((s) => needsReply(s, nowMs, this.settings))
      .filter((n) => n.needsReply)
      .sort((a, b) => (a.sinceMs ?? 0) - (b.sinceMs ?? 0));
  }

  /** Hides "needs reply" for a conversation until the next message for this user. */
  async dismissNeedsReply(conversationId: string): Promise<void> {
    const state = this.conversations.get(conversationId);
    if (state === undefined) return;
    state.dismissedSeq = state.lastSeq;
    this.store.touch(state);
    await this.flush();
  }

  /** What came since the conversation was last opened, without starting a new window. */
  awaySummary(conversationId: string): AwaySummary {
    const state = this.conversations.get(conversationId) ?? newConversation(conversationId);
    return awaySummary(state);
  }

  /**
   * The user opened the conversation: returns the away summary and starts a new window at
   * `nowMs`. Call left() when they leave it, so what they saw there is not "away" next time.
   */
  async opened(conversationId: string, nowMs = this.now()): Promise<AwaySummary> {
    const state = this.stateOf(conversationId);
    const summary = awaySummary(state);
    markOpened(state, nowMs);
    this.store.touch(state);
    await this.flush();
    return summary;
  }

  /** The user left the conversation: the away window starts now. */
  async left(conversationId: string, nowMs = this.now()): Promise<void> {
    const state = this.stateOf(conversationId);
    markOpened(state, nowMs);
    this.store.touch(state);
    await this.flush();
  }

  /** Starts, replies, the 24-hour reply rate and time to first reply over the metrics window. */
  metrics(nowMs = this.now()): HealthMetrics {
    return metrics(this.starts(), nowMs, this.settings);
  }

  /** The conversation starts kept (oldest first). */
  starts(): StartRecord[] {
    return this.store.starts();
  }

  /** Tells health whether a conversation is a group (health asks the server itself when attached). */
  setKind(conversationId: string, kind: "direct" | "group"): void {
    if (!CONVERSATION_ID.test(conversationId)) return;
    const state = this.stateOf(conversationId, kind);
    if (state.kind === kind) return;
    state.kind = kind;
    this.store.touch(state);
  }

  /**
   * Emits an app event (ui.chatlist.needs_reply_shown, groups.away_summary_shown, ...) to the
   * sink: a name under ui., permissions. or groups. and at most a conversation id, a seq and a
   * count; anything else throws a TypeError. Nothing happens without a sink.
   */
  track(name: string, fields: AppEventFields = {}): void {
    const event = appEvent(name, fields, this.now());
    this.pipe.push(event);
  }

  /** How many events reached the sink, were dropped or failed. */
  get sinkStats(): SinkStats {
    return { ...this.pipe.stats };
  }

  /** Writes what changed now; resolves once it is durable (a failed write is tried again later). */
  flush(): Promise<void> {
    return this.store.flush();
  }

  /** Writes what changed and waits for every event queued so far to reach the sink. */
  async flushed(): Promise<void> {
    await this.flush();
    await this.pipe.flushed();
  }

  private receipt(r: ReceiptEvent): void {
    // This user's own devices' cursors are not someone receiving or reading their messages.
    if (r.userId === this.userId) return;
    this.emit({
      name: r.kind === "read" ? "messaging.message_read" : "messaging.message_delivered",
      atMs: Number(r.timeMs),
      conversationId: r.conversationId,
      seq: r.upToSeq.toString(),
      userId: r.userId,
    });
  }

  private emit(event: HealthEvent): void {
    this.pipe.push(event);
  }

  private healthEntry(e: IncomingEntry): HealthEntry {
    let mentionsMeInContent = false;
    if (this.options.mentionsMe !== undefined && e.kind === "message" && e.senderUserId !== this.userId) {
      try {
        mentionsMeInContent = this.options.mentionsMe(e);
      } catch {
        mentionsMeInContent = false;
      }
    }
    return {
      conversationId: e.conversationId,
      seq: e.seq,
      senderUserId: e.senderUserId,
      serverTimeMs: e.serverTimeMs,
      kind: e.kind,
      replyTo: e.replyTo,
      mentions: e.mentions,
      mentionsMeInContent,
      pinnedSeq: pinOf(e),
    };
  }

  private requireClient(): HealthClient {
    if (this.client === undefined)
      throw new Error("catching up needs a client: use ConversationHealth.attach");
    return this.client;
  }

  /** A conversation's state, made when new (its kind asked of the server unless given). */
  private stateOf(id: string, kind?: "direct" | "group"): ConversationState {
    let state = this.conversations.get(id);
    if (state === undefined) {
      state = newConversation(id);
      this.conversations.set(id, state);
      if (kind === undefined) this.learnKind(id);
    }
    return state;
  }

  /** Asks the server once whether a new conversation is a group, in the background. */
  private learnKind(id: string): void {
    const client = this.client;
    if (client === undefined || this.lookups.has(id) || this.lookups.size >= MAX_KIND_LOOKUPS) return;
    this.lookups.add(id);
    void client
      .getConversation(id)
      .then(({ conversation }) =>
        this.setKind(id, conversation.kind === ConversationKind.GROUP ? "group" : "direct"),
      )
      .catch(() => {
        // Unknown kind is treated as direct; the next catchUp or new conversation asks again.
      })
      .finally(() => this.lookups.delete(id));
  }
}

/** The message a pin entry (Entry body 17, PinBody) pins; undefined for an unpin or any other entry. */
export function pinOf(e: IncomingEntry): bigint | undefined {
  const body = e.raw.body;
  return body.case === "pin" && !body.value.unpin ? body.value.targetSeq : undefined;
}
