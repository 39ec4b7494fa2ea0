import { type Conversation, ConversationKind } from "../../gen/switchboard/v1/conversations_pb.js";
import type { SwitchboardClient } from "../client.js";
import type { ProfileStorage } from "../storage/port.js";
import { JsonDoc, RecordSet } from "../storage/records.js";
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
  type ConversationJson,
  type ConversationState,
  DEFAULT_SETTINGS,
  fromJson,
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
  toJson,
} from "./model.js";

/** Where health keeps its state in the profile's storage. */
const CONVERSATIONS = "health/conversations/";
const STARTS = "health/starts.json";
/** Conversation ids health tracks: id-shaped, so a record stays small. */
const CONVERSATION_ID = /^[A-Za-z0-9_-]{1,64}$/;
/** Kind lookups (GetConversation) in flight at once; others wait for the conversation's next entry. */
const MAX_KIND_LOOKUPS = 4;

/** Options of ConversationHealth.open and attach. Durations in milliseconds. */
export interface HealthOptions extends Partial<HealthSettings> {
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
  /** Conversations kept (least recently active dropped first). Default 1,000. */
  maxConversations?: number;
  /** Bytes of conversation state kept, as stored. Default 4 MiB. */
  maxStateBytes?: number;
  /** Conversation starts kept for metrics. Default 1,000. */
  maxStarts?: number;
  /** Events waiting for a slow sink before the oldest is dropped. Default 1,000. */
  maxQueuedEvents?: number;
  /**
   * Changes are written together this long after the first one (one write per batch, not per
   * entry: a write is an fsync with the file engine). Default 200.
   */
  writeDelayMs?: number;
}

/** The part of a client health uses (SwitchboardClient has it all). */
export type HealthClient = Pick<
  SwitchboardClient,
  "userId" | "storage" | "on" | "off" | "getConversation" | "getHistory" | "listConversations" | "localCursor"
>;

interface StartsFile {
  v: 1;
  starts: Array<{ c: string; s: string; t: number; r?: number }>;
}

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
  private readonly sizes = new Map<string, number>();
  private readonly lookups = new Set<string>();
  /** Conversations changed since the last write, and ones dropped by the bounds. */
  private readonly dirty = new Set<string>();
  private readonly dropped = new Set<string>();
  private startsDirty = false;
  private writeTimer: NodeJS.Timeout | undefined;
  private writing: Promise<void> = Promise.resolve();
  private client: HealthClient | undefined;
  private detachListeners: (() => void) | undefined;

  private constructor(
    private readonly userId: string,
    private readonly options: HealthOptions,
    private readonly records: RecordSet | undefined,
    private readonly startsDoc: JsonDoc<StartsFile>,
    private readonly conversations: Map<string, ConversationState>,
  ) {
    this.settings = {
      startAfterInactiveMs: options.startAfterInactiveMs ?? DEFAULT_SETTINGS.startAfterInactiveMs,
      needsReplyMaxAgeMs: options.needsReplyMaxAgeMs ?? DEFAULT_SETTINGS.needsReplyMaxAgeMs,
      metricsWindowMs: options.metricsWindowMs ?? DEFAULT_SETTINGS.metricsWindowMs,
    };
    if (!(this.settings.startAfterInactiveMs > 0))
      throw new RangeError("startAfterInactiveMs must be positive");
    this.now = options.now ?? Date.now;
    this.pipe = new EventPipe(options.sink, options.maxQueuedEvents ?? 1_000);
    for (const [id, state] of conversations) this.sizes.set(id, JSON.stringify(toJson(state)).length);
  }

  /** Opens the health state kept in a profile's storage, for one user. */
  static async open(
    storage: ProfileStorage,
    userId: string,
    options: HealthOptions = {},
  ): Promise<ConversationHealth> {
    const records = await RecordSet.open(storage, CONVERSATIONS);
    const conversations = new Map<string, ConversationState>();
    for (const id of records.keys()) {
      const raw = records.get(id);
      if (raw === undefined) continue;
      try {
        const json = JSON.parse(new TextDecoder().decode(raw)) as ConversationJson;
        if (json.v === 1 && json.id === id) conversations.set(id, fromJson(json));
      } catch {
        // A damaged record is health lost for one conversation, not a reason to fail the client.
      }
    }
    const startsDoc = await JsonDoc.open<StartsFile>(storage, STARTS, () => ({ v: 1, starts: [] }));
    return new ConversationHealth(
      userId,
      options,
      options.readOnly === true ? undefined : records,
      startsDoc,
      conversations,
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
    client.on("entry", onEntry);
    client.on("receipt", onReceipt);
    health.detachListeners = () => {
      client.off("entry", onEntry);
      client.off("receipt", onReceipt);
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
    if (this.records === undefined) return;
    const client = this.requireClient();
    const list = await client.listConversations();
    for (const c of list.slice(0, this.options.maxConversations ?? 1_000)) {
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

  /** Stops following the client, writes what changed and lets the sink take what is queued. */
  async close(): Promise<void> {
    this.detach();
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
    this.touch(state);
    if (result.start !== undefined) {
      this.addStart(result.start);
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
      this.recordReply(start, replyMs);
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
    this.touch(state);
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
    this.touch(state);
    await this.flush();
    return summary;
  }

  /** The user left the conversation: the away window starts now. */
  async left(conversationId: string, nowMs = this.now()): Promise<void> {
    const state = this.stateOf(conversationId);
    markOpened(state, nowMs);
    this.touch(state);
    await this.flush();
  }

  /** Starts, replies, the 24-hour reply rate and time to first reply over the metrics window. */
  metrics(nowMs = this.now()): HealthMetrics {
    return metrics(this.starts(), nowMs, this.settings);
  }

  /** The conversation starts kept (oldest first). */
  starts(): StartRecord[] {
    return this.startsDoc.value.starts.map((s) => ({
      conversationId: s.c,
      seq: BigInt(s.s),
      atMs: s.t,
      ...(s.r !== undefined && { ttfrMs: s.r }),
    }));
  }

  /** Tells health whether a conversation is a group (health asks the server itself when attached). */
  setKind(conversationId: string, kind: "direct" | "group"): void {
    if (!CONVERSATION_ID.test(conversationId)) return;
    const state = this.stateOf(conversationId, kind);
    if (state.kind === kind) return;
    state.kind = kind;
    this.touch(state);
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
    if (this.writeTimer !== undefined) clearTimeout(this.writeTimer);
    this.writeTimer = undefined;
    const next = this.writing.catch(() => {}).then(() => this.write());
    this.writing = next;
    return next;
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

  /** A conversation changed: it is written with the next batch; the bounds are applied now. */
  private touch(state: ConversationState): void {
    this.sizes.set(state.id, JSON.stringify(toJson(state)).length);
    this.dirty.add(state.id);
    this.dropped.delete(state.id);
    for (const id of this.evict(state.id)) {
      this.dirty.delete(id);
      this.dropped.add(id);
    }
    this.schedule();
  }

  private schedule(): void {
    if (this.records === undefined || this.writeTimer !== undefined) return;
    this.writeTimer = setTimeout(() => {
      this.writeTimer = undefined;
      // A failure is reported by the next flush(); the changes stay marked until written.
      this.flush().catch(() => {});
    }, this.options.writeDelayMs ?? 200);
    // Health never keeps a process alive; what a process ending loses, repair() takes back.
    this.writeTimer.unref?.();
  }

  private async write(): Promise<void> {
    const records = this.records;
    if (records === undefined) return;
    const encoder = new TextEncoder();
    const puts: Array<[string, Uint8Array]> = [];
    for (const id of this.dirty) {
      const state = this.conversations.get(id);
      if (state !== undefined) puts.push([id, encoder.encode(JSON.stringify(toJson(state)))]);
    }
    const drops = [...this.dropped];
    const starts = this.startsDirty;
    this.dirty.clear();
    this.dropped.clear();
    this.startsDirty = false;
    try {
      await Promise.all([
        puts.length > 0 ? records.put(puts) : undefined,
        drops.length > 0 ? records.delete(drops) : undefined,
        starts ? this.startsDoc.save() : undefined,
      ]);
    } catch (err) {
      for (const [id] of puts) if (!this.dropped.has(id)) this.dirty.add(id);
      for (const id of drops) if (!this.dirty.has(id)) this.dropped.add(id);
      if (starts) this.startsDirty = true;
      this.schedule();
      throw err;
    }
  }

  private evict(keep: string): string[] {
    const maxCount = this.options.maxConversations ?? 1_000;
    const maxBytes = this.options.maxStateBytes ?? 4 * 1024 * 1024;
    let bytes = 0;
    for (const size of this.sizes.values()) bytes += size;
    const evicted: string[] = [];
    while (this.conversations.size > maxCount || (bytes > maxBytes && this.conversations.size > 1)) {
      let oldest: ConversationState | undefined;
      for (const s of this.conversations.values()) {
        if (s.id === keep) continue;
        if (oldest === undefined || activity(s) < activity(oldest)) oldest = s;
      }
      if (oldest === undefined) break;
      this.conversations.delete(oldest.id);
      bytes -= this.sizes.get(oldest.id) ?? 0;
      this.sizes.delete(oldest.id);
      evicted.push(oldest.id);
    }
    return evicted;
  }

  private addStart(start: StartRecord): void {
    const doc = this.startsDoc.value;
    doc.starts.push({ c: start.conversationId, s: start.seq.toString(), t: start.atMs });
    const max = this.options.maxStarts ?? 1_000;
    if (doc.starts.length > max) doc.starts.splice(0, doc.starts.length - max);
    this.startsDirty = true;
    this.schedule();
  }

  private recordReply(start: StartRecord, ttfrMs: number): void {
    const seq = start.seq.toString();
    const record = this.startsDoc.value.starts.find((s) => s.c === start.conversationId && s.s === seq);
    if (record === undefined) return;
    record.r = ttfrMs;
    this.startsDirty = true;
    this.schedule();
  }
}

function activity(s: ConversationState): number {
  return Math.max(s.lastMessageMs, s.openedMs);
}

/** The message a pin entry (Entry body 17, PinBody) pins; undefined for an unpin or any other entry. */
export function pinOf(e: IncomingEntry): bigint | undefined {
  const body = e.raw.body;
  return body.case === "pin" && !body.value.unpin ? body.value.targetSeq : undefined;
}
