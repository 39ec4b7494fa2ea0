/**
 * The JetStream side of committed events: the stream and the durable consumer as configured,
 * and publishing with a bounded number of acknowledgements in flight, in order across calls.
 */
import {
  AckPolicy,
  type ConsumerConfig,
  DeliverPolicy,
  DiscardPolicy,
  headers,
  type JetStreamManager,
  nanos,
  ReplayPolicy,
  RetentionPolicy,
  StorageType,
  type StreamConfig,
} from "nats";
import type { BusEvent } from "../../../gen/switchboard/internal/v1/events_pb.js";
import type { Logger } from "../../common/log.js";
import { endSpan } from "../../common/telemetry.js";
import type { Link } from "./connection.js";
import type { PubAcks } from "./pub-acks.js";
import type { Settings } from "./settings.js";
import { committedIdentity, committedSubject, PARTITIONS, partitionSubject } from "./subjects.js";
import { sendSpan } from "./tracing.js";
import type { NatsBusMetrics } from "./types.js";
import { encodeCommitted, traceHeaders } from "./wire.js";

/** The durable consumer of one partition. */
export function partitionDurable(settings: Settings, partition: number): string {
  return `${settings.durable}_p${partition}`;
}

function errorCode(err: unknown): string | undefined {
  if (typeof err === "object" && err !== null && "code" in err)
    return String((err as { code: unknown }).code);
  return undefined;
}

/** True when a JetStream API call failed because the stream or consumer does not exist. */
export function isNotFound(err: unknown, what: "stream" | "consumer"): boolean {
  const message = err instanceof Error ? err.message : "";
  return message.includes(`${what} not found`) || errorCode(err) === "404";
}

/** The stream of committed events: its configuration and its publisher. */
export class CommittedStream {
  private inFlight = 0;
  private slotWaiter: (() => void) | undefined;
  /** Calls issue their publishes one after another, so events keep their order across calls. */
  private issuing: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly link: Link,
    private readonly acks: PubAcks,
    private readonly jsm: JetStreamManager,
    private readonly settings: Settings,
    private readonly metrics: NatsBusMetrics,
    private readonly log: Logger,
  ) {}

  /** Creates the stream with the configured limits, or updates it when they changed. */
  async ensureStream(): Promise<void> {
    const s = this.settings;
    const wanted: Partial<StreamConfig> = {
      name: s.stream,
      subjects: [`${s.prefix}.events.>`],
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
      max_age: nanos(s.maxAgeMs),
      max_bytes: s.maxBytes,
      max_msgs: -1,
      discard: DiscardPolicy.Old,
      duplicate_window: nanos(s.duplicateWindowMs),
      num_replicas: s.replicas,
    };
    let current: StreamConfig;
    try {
      current = (await this.jsm.streams.info(s.stream)).config;
    } catch (err) {
      if (!isNotFound(err, "stream")) throw err;
      await this.jsm.streams.add(wanted);
      this.log.info({ stream: s.stream, subjects: wanted.subjects }, "created JetStream stream");
      return;
    }
    const differs = (Object.keys(wanted) as Array<keyof StreamConfig>).some(
      (key) => JSON.stringify(current[key]) !== JSON.stringify(wanted[key]),
    );
    if (!differs) return;
    await this.jsm.streams.update(s.stream, { ...current, ...wanted });
    this.log.info({ stream: s.stream }, "updated JetStream stream limits");
  }

  /**
   * Creates one partition's durable consumer, or updates its limits when they changed. A
   * consumer created while the unpartitioned consumer of earlier versions exists starts after the
   * stream's last event: the members drain that consumer up to there (consumer.ts). Otherwise it
   * starts at the stream's first, so a new deployment delivers what the stream already holds.
   */
  async ensureConsumer(partition: number): Promise<void> {
    const s = this.settings;
    const durable = partitionDurable(s, partition);
    const limits = {
      ack_wait: nanos(s.ackWaitMs),
      max_ack_pending: s.maxAckPending,
      max_deliver: s.maxDeliver,
    };
    let current: ConsumerConfig;
    try {
      current = (await this.jsm.consumers.info(s.stream, durable)).config;
    } catch (err) {
      if (!isNotFound(err, "consumer")) throw err;
      const after = await this.legacyEnd();
      await this.jsm.consumers.add(s.stream, {
        durable_name: durable,
        ack_policy: AckPolicy.Explicit,
        ...(after === undefined
          ? { deliver_policy: DeliverPolicy.All }
          : { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: after + 1 }),
        replay_policy: ReplayPolicy.Instant,
        filter_subject: partitionSubject(s.prefix, partition),
        ...limits,
      });
      this.log.info({ stream: s.stream, durable, startAfter: after }, "created JetStream consumer");
      return;
    }
    if (
      current.ack_wait === limits.ack_wait &&
      current.max_ack_pending === limits.max_ack_pending &&
      current.max_deliver === limits.max_deliver
    )
      return;
    await this.jsm.consumers.update(s.stream, durable, limits);
    this.log.info({ stream: s.stream, durable }, "updated JetStream consumer limits");
  }

  /** Creates every partition's consumer (or updates its limits). */
  async ensureConsumers(): Promise<void> {
    for (let p = 0; p < PARTITIONS; p++) await this.ensureConsumer(p);
  }

  /**
   * Events waiting for the fanout workers and events they hold unsettled, over every partition's
   * consumer (one not created yet holds none).
   */
  async backlog(): Promise<{ pending: number; unacknowledged: number }> {
    const s = this.settings;
    const infos = await Promise.all(
      Array.from({ length: PARTITIONS }, (_, p) =>
        this.jsm.consumers.info(s.stream, partitionDurable(s, p)).catch((err: unknown) => {
          if (isNotFound(err, "consumer")) return undefined;
          throw err;
        }),
      ),
    );
    let pending = 0;
    let unacknowledged = 0;
    for (const info of infos) {
      pending += info?.num_pending ?? 0;
      unacknowledged += info?.num_ack_pending ?? 0;
    }
    return { pending, unacknowledged };
  }

  /**
   * The stream's last sequence when the unpartitioned consumer of earlier versions exists (what
   * it has yet to deliver up to there is its to drain); undefined when it does not.
   */
  private async legacyEnd(): Promise<number | undefined> {
    try {
      await this.jsm.consumers.info(this.settings.stream, this.settings.durable);
    } catch (err) {
      if (isNotFound(err, "consumer")) return undefined;
      throw err;
    }
    return (await this.jsm.streams.info(this.settings.stream)).state.last_seq;
  }

  /** Publishes committed events in order; resolves when the stream acknowledged every one. */
  async publish(events: readonly BusEvent[]): Promise<void> {
    if (this.link.closing) throw new Error("nats bus: closed");
    if (events.length === 0) return;
    const deadline = Date.now() + this.settings.publishTimeoutMs;
    const issue = this.issuing.then(() => this.issue(events, deadline));
    this.issuing = issue.catch(() => undefined);
    const acks = await issue;
    await Promise.all(acks);
  }

  /** Issues every publish of one call (waiting for free slots), returning the pending acks. */
  private async issue(events: readonly BusEvent[], deadline: number): Promise<Array<Promise<void>>> {
    const acks: Array<Promise<void>> = [];
    try {
      for (const event of events) {
        while (this.inFlight >= this.settings.maxPublishesInFlight) await this.freeSlot(deadline);
        const remaining = deadline - Date.now();
        if (remaining <= 0) throw new Error("nats bus: publish timed out waiting for a free slot");
        const identity = committedIdentity(event);
        const subject = committedSubject(this.settings.prefix, identity);
        const data = encodeCommitted(event);
        if (!this.link.admit(data.length))
          throw new Error("nats bus: disconnected and the reconnect buffer is full");
        const traced = sendSpan(event, {
          stream: this.settings.stream,
          subject,
          msgId: identity?.msgId,
          bodyBytes: data.length,
        });
        // The consumer continues from the send span; an untraced event carries what it has.
        let hdrs = traceHeaders(traced?.carrier ?? event.traceContext);
        // The stream stores an id once within its duplicate window: a republish is not stored twice.
        if (identity?.msgId) {
          hdrs ??= headers();
          hdrs.set("Nats-Msg-Id", identity.msgId);
        }
        this.inFlight++;
        // PubAcks.publish sends before it returns, so issue order is send order.
        const ack = this.acks
          .publish(subject, data, hdrs, deadline)
          .then(
            (pubAck) => {
              this.metrics.published++;
              if (pubAck.duplicate) this.metrics.duplicates++;
              if (traced) endSpan(traced.span);
            },
            (err: unknown) => {
              this.metrics.publishFailures++;
              if (traced) endSpan(traced.span, err);
              throw err;
            },
          )
          .finally(() => this.releaseSlot());
        acks.push(ack);
      }
    } catch (err) {
      this.metrics.publishFailures += events.length - acks.length;
      // The caller sees this error; the acks already issued settle on their own.
      for (const ack of acks) ack.catch(() => undefined);
      throw err;
    }
    // Keep a rejected ack from going unhandled when an earlier one already failed the call.
    for (const ack of acks) ack.catch(() => undefined);
    return acks;
  }

  private freeSlot(deadline: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => {
          this.slotWaiter = undefined;
          reject(new Error("nats bus: publish timed out waiting for a free slot"));
        },
        Math.max(0, deadline - Date.now()),
      );
      this.slotWaiter = () => {
        clearTimeout(timer);
        this.slotWaiter = undefined;
        resolve();
      };
    });
  }

  private releaseSlot(): void {
    this.inFlight--;
    this.slotWaiter?.();
  }
}
