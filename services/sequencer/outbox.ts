import { create } from "@bufbuild/protobuf";
import type { Span } from "@opentelemetry/api";
import {
  type BusEvent,
  BusEventSchema,
  EntryCommittedSchema,
} from "../../gen/switchboard/internal/v1/events_pb.js";
import { type Entry, MembershipAction } from "../../gen/switchboard/v1/entry_pb.js";
import type { EventBus } from "../bus/types.js";
import type { Logger } from "../common/log.js";
import {
  carries,
  endSpan,
  injectContext,
  lazyInstrument,
  meter,
  SpanKind,
  startSpan,
} from "../common/telemetry.js";
import type { ConversationStore, RecoveredCommit } from "../store/types.js";

const publishSeconds = lazyInstrument(() =>
  meter().createHistogram("switchboard.bus.publish.duration_seconds", {
    description: "Time for the bus to accept one batch of committed events",
    unit: "s",
    advice: {
      explicitBucketBoundaries: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5],
    },
  }),
);

/**
 * The committed event of an entry whose own event may never have been published (its commit was
 * finished by a recovery, or failed after part of it was written), rebuilt from the entry alone.
 * membersVersion defaults to the entry's seq: a conversation's members version is the seq of its
 * last membership entry, so this is at least the version the entry was committed under and
 * fanout refreshes a member list older than it. Users a membership entry removed get it too, as
 * they did from the original event. Consumers tolerate a second copy: the bus drops a repeated
 * (conversation, seq) message id within its duplicate window, and a gateway stream drops an entry
 * at or below what it has pushed.
 */
export function committedEvent(entry: Entry, membersVersion = Number(entry.seq), mutesVersion = 0): BusEvent {
  const body = entry.body;
  const extra =
    body.case !== "membership"
      ? []
      : body.value.action === MembershipAction.REMOVED
        ? body.value.userIds
        : body.value.action === MembershipAction.LEFT
          ? [entry.senderUserId]
          : [];
  return create(BusEventSchema, {
    event: {
      case: "entryCommitted",
      value: create(EntryCommittedSchema, {
        entry,
        membersVersion: BigInt(membersVersion),
        extraRecipientUserIds: extra,
        mutesVersion: BigInt(mutesVersion),
      }),
    },
  });
}

/** Options of the publish outbox. */
export interface OutboxOptions {
  /** Events held while the bus is down; the oldest are given up beyond this. */
  maxEvents?: number;
  /** Events republished per attempt. */
  chunk?: number;
  /** First wait between attempts, in milliseconds; it doubles after each failed attempt. */
  minDelayMs?: number;
  /** Longest wait between attempts, in milliseconds. */
  maxDelayMs?: number;
}

/** Counters an operator watches during a bus outage. */
export interface OutboxMetrics {
  /** Events that went to the outbox because a publish failed or the outbox was not empty. */
  deferred: number;
  /** Events published from the outbox once the bus was back. */
  republished: number;
  /** Events given up because the outbox was full (devices still fetch them from the log). */
  dropped: number;
  /** Failed publish attempts. */
  failures: number;
}

/**
 * Sits between the sequencer's commits and the bus. Entries are durable before they get here, so
 * the bus only makes delivery fast: when a publish fails (NATS down or slow), its events wait
 * here and are republished in order, with backoff, once the bus accepts them again. Newer
 * events queue behind older ones while anything waits, so a conversation is never published out
 * of order by the retry itself. The JetStream message id (conversationId:seq) makes a retry of a
 * publish that had in fact succeeded harmless.
 *
 * The outbox lives in memory and is bounded. If the process dies during an outage, or the outbox
 * overflows, the events are not lost but their live delivery is: devices fetch the entries from
 * the log on their next sync, which they do on every reconnect and on any seq gap.
 */
export class PublishOutbox {
  /** Counters since start, for the metrics callbacks and the admin status. */
  readonly metrics: OutboxMetrics = { deferred: 0, republished: 0, dropped: 0, failures: 0 };
  private readonly waiting: BusEvent[] = [];
  private readonly maxEvents: number;
  private readonly chunk: number;
  private readonly minDelayMs: number;
  private readonly maxDelayMs: number;
  private delayMs: number;
  private timer: NodeJS.Timeout | undefined;
  private retrying = false;
  private outage = false;
  private closed = false;
  /** Stores whose recoveries this outbox publishes, and how to stop. */
  private readonly followed = new Map<ConversationStore, () => void>();

  constructor(
    private readonly bus: EventBus,
    private readonly log: Logger,
    options: OutboxOptions = {},
  ) {
    this.maxEvents = options.maxEvents ?? 100_000;
    this.chunk = options.chunk ?? 1000;
    this.minDelayMs = options.minDelayMs ?? 250;
    this.maxDelayMs = options.maxDelayMs ?? 5000;
    this.delayMs = this.minDelayMs;
  }

  /** Events waiting for the bus. */
  get size(): number {
    return this.waiting.length;
  }

  /** Publishes committed events, or queues them behind earlier ones that are still waiting. */
  publish(events: readonly BusEvent[]): void {
    if (events.length === 0 || this.closed) return;
    // A span per traced event, so fanout continues from the publish; the event carries it on.
    const spans: Span[] = [];
    for (const event of events) {
      if (!carries(event.traceContext)) continue;
      const { span, ctx } = startSpan("bus.publish", event.traceContext, { kind: SpanKind.PRODUCER });
      event.traceContext = injectContext(ctx);
      spans.push(span);
    }
    if (this.waiting.length > 0) {
      for (const span of spans) endSpan(span, new Error("deferred to the outbox"));
      this.defer(events);
      return;
    }
    const started = performance.now();
    // A bus that throws instead of rejecting is handled the same way: the caller's commit is
    // durable already and must not be reported as failed.
    let publishing: Promise<void>;
    try {
      publishing = this.bus.publishCommitted(events);
    } catch (err) {
      publishing = Promise.reject(err);
    }
    publishing.then(
      () => {
        publishSeconds().record((performance.now() - started) / 1000);
        for (const span of spans) endSpan(span);
      },
      (err: unknown) => {
        for (const span of spans) endSpan(span, err);
        this.metrics.failures++;
        if (!this.outage) {
          this.outage = true;
          this.log.warn({ err, events: events.length }, "bus publish failed; holding events in the outbox");
        }
        this.defer(events);
      },
    );
  }

  /**
   * Publishes the events of every commit the store finishes for a writer that did not (its
   * onRecovered): that writer published nothing for them. Once per store, however many shards
   * ask.
   */
  followRecoveries(store: ConversationStore): void {
    if (store.onRecovered === undefined || this.followed.has(store)) return;
    this.followed.set(
      store,
      store.onRecovered((recovered: RecoveredCommit) => {
        this.log.info(
          { conversationId: recovered.conversationId, entries: recovered.entries.length },
          "publishing the entries of a commit completed for its writer",
        );
        this.publish(recovered.entries.map((entry) => committedEvent(entry)));
      }),
    );
  }

  /** Stops retrying; whatever still waits is left to the devices' sync from the log. */
  close(): void {
    this.closed = true;
    for (const stop of this.followed.values()) stop();
    this.followed.clear();
    if (this.timer !== undefined) clearTimeout(this.timer);
    if (this.waiting.length > 0) {
      this.log.warn(
        { events: this.waiting.length },
        "closing with events unpublished; devices will sync them",
      );
    }
  }

  private defer(events: readonly BusEvent[]): void {
    this.metrics.deferred += events.length;
    this.waiting.push(...events);
    const excess = this.waiting.length - this.maxEvents;
    if (excess > 0) {
      this.waiting.splice(0, excess);
      this.metrics.dropped += excess;
      this.log.warn({ dropped: excess }, "outbox full; the oldest events will reach devices by sync only");
    }
    this.arm();
  }

  private arm(): void {
    if (this.timer !== undefined || this.retrying || this.closed) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.retry();
    }, this.delayMs);
    this.timer.unref();
  }

  private async retry(): Promise<void> {
    this.retrying = true;
    try {
      while (this.waiting.length > 0 && !this.closed) {
        const chunk = this.waiting.slice(0, this.chunk);
        await this.bus.publishCommitted(chunk);
        // Only now: events deferred meanwhile were appended behind this chunk.
        this.waiting.splice(0, chunk.length);
        this.metrics.republished += chunk.length;
      }
      if (this.outage)
        this.log.info({ republished: this.metrics.republished }, "bus is back; outbox drained");
      this.outage = false;
      this.delayMs = this.minDelayMs;
    } catch (err) {
      this.metrics.failures++;
      this.log.debug({ err, waiting: this.waiting.length }, "outbox retry failed");
      this.delayMs = Math.min(this.maxDelayMs, this.delayMs * 2);
    } finally {
      this.retrying = false;
      if (this.waiting.length > 0) this.arm();
    }
  }
}
