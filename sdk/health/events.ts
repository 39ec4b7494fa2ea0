// The health event stream (seed 000, 11.1): metadata only (ids, times, kinds), handed to a sink
// the app supplies, never anywhere else. The event type has no field that can carry content, and
// app-emitted events are checked against the same shape, so nothing the user wrote reaches a
// sink through here.

/** The events the SDK emits itself. */
export const SDK_EVENT_NAMES = [
  "messaging.message_sent",
  "messaging.message_delivered",
  "messaging.message_read",
  "conversation.conversation_start",
  "conversation.reply_received",
] as const;

export type SdkEventName = (typeof SDK_EVENT_NAMES)[number];

/**
 * A health event. Seqs are decimal strings so an event serializes as JSON as it is. Every field
 * is an id, a time, a count or a kind; none carries content.
 */
export interface HealthEvent {
  /** One of SDK_EVENT_NAMES, or an app event ("ui.…", "permissions.…", "groups.…"). */
  name: string;
  /** When it happened, ms since the epoch: the server's commit or receipt time for SDK events. */
  atMs: number;
  /** The conversation, when the event is about one. */
  conversationId?: string;
  /** The entry (message_sent: the message; reply_received: the reply; a receipt: up to this seq). */
  seq?: string;
  /** The other user: who replied, whose delivered or read cursor moved. */
  userId?: string;
  /** conversation_start and reply_received: the start's seq. */
  startSeq?: string;
  /** conversation_start: how long the conversation had been quiet (absent for its first message). */
  inactiveMs?: number;
  /** reply_received: time from the start to this first reply. */
  ttfrMs?: number;
  /** reply_received: ttfrMs within 24 hours. */
  within24h?: boolean;
  /** App events: a count (items shown, say). */
  count?: number;
}

/** Where health events go: the app's analytics, a file, a test. A rejection is counted and dropped. */
export type HealthSink = (event: HealthEvent) => void | Promise<void>;

/** Fields an app event may carry. */
export interface AppEventFields {
  conversationId?: string;
  seq?: bigint | number;
  count?: number;
}

const APP_NAME = /^(ui|permissions|groups)(\.[a-z0-9_]{1,32}){1,4}$/;
const ID = /^[A-Za-z0-9_-]{1,64}$/;
const MAX_NAME_LENGTH = 96;
const MAX_COUNT = 1_000_000;

/**
 * Builds an app event after checking that it is metadata: a name under ui., permissions. or
 * groups. (the SDK's own names are refused), an id-shaped conversation id, a seq and a count.
 * Anything else throws a TypeError, so free text never gets in.
 */
export function appEvent(name: string, fields: AppEventFields, atMs: number): HealthEvent {
  if (name.length > MAX_NAME_LENGTH || !APP_NAME.test(name)) {
    throw new TypeError(
      `app event names are lower-case dotted names under ui., permissions. or groups. (got ${JSON.stringify(name.slice(0, 40))})`,
    );
  }
  const allowed = new Set(["conversationId", "seq", "count"]);
  for (const key of Object.keys(fields)) {
    if (!allowed.has(key))
      throw new TypeError(`app events carry conversationId, seq and count only, not ${key}`);
  }
  const event: HealthEvent = { name, atMs };
  if (fields.conversationId !== undefined) {
    if (typeof fields.conversationId !== "string" || !ID.test(fields.conversationId)) {
      throw new TypeError("conversationId must be a conversation id");
    }
    event.conversationId = fields.conversationId;
  }
  if (fields.seq !== undefined) {
    if (typeof fields.seq !== "bigint" && !Number.isSafeInteger(fields.seq)) {
      throw new TypeError("seq must be an integer");
    }
    const seq = BigInt(fields.seq);
    if (seq < 0n) throw new TypeError("seq must not be negative");
    event.seq = seq.toString();
  }
  if (fields.count !== undefined) {
    if (!Number.isInteger(fields.count) || fields.count < 0 || fields.count > MAX_COUNT) {
      throw new TypeError(`count must be an integer from 0 to ${MAX_COUNT}`);
    }
    event.count = fields.count;
  }
  return event;
}

/** How many events reached the sink, were dropped (queue full) or failed in it. */
export interface SinkStats {
  delivered: number;
  dropped: number;
  failed: number;
}

/**
 * Hands events to the sink one at a time, in order, from a bounded queue: a slow sink never holds
 * up messaging. When the queue is full the oldest event is dropped (and counted); a sink call
 * that neither returns nor settles within the deadline counts as failed and the next one goes.
 */
export class EventPipe {
  private readonly queue: HealthEvent[] = [];
  private running: Promise<void> | undefined;
  readonly stats: SinkStats = { delivered: 0, dropped: 0, failed: 0 };

  constructor(
    private readonly sink: HealthSink | undefined,
    private readonly maxQueued = 1_000,
    private readonly deadlineMs = 10_000,
  ) {}

  /** True when there is a sink (without one, events are not even made). */
  get enabled(): boolean {
    return this.sink !== undefined;
  }

  push(event: HealthEvent): void {
    if (this.sink === undefined) return;
    if (this.queue.length >= this.maxQueued) {
      this.queue.shift();
      this.stats.dropped++;
    }
    this.queue.push(event);
    this.running ??= this.drain();
  }

  /** Resolves once every event queued so far has been handed over (or failed). */
  async flushed(): Promise<void> {
    while (this.running !== undefined) await this.running;
  }

  private async drain(): Promise<void> {
    const sink = this.sink;
    try {
      for (let event = this.queue.shift(); event !== undefined && sink; event = this.queue.shift()) {
        let timer: NodeJS.Timeout | undefined;
        try {
          await Promise.race([
            Promise.resolve().then(() => sink(event)),
            new Promise((_, reject) => {
              timer = setTimeout(() => reject(new Error("sink deadline")), this.deadlineMs);
            }),
          ]);
          this.stats.delivered++;
        } catch {
          this.stats.failed++;
        } finally {
          clearTimeout(timer);
        }
      }
    } finally {
      this.running = undefined;
    }
  }
}
