/**
 * The fanout consumer group: each worker (a member) holds leases on some of the partitions of
 * committed events (leases.ts), fetches from each partition's durable consumer, hands the events
 * to its handler in batches and settles every event by the handler's outcome (ack, or nak with a
 * growing delay). A member drains the unpartitioned consumer of earlier versions while it exists.
 */
import type { Span } from "@opentelemetry/api";
import type { Consumer, JetStreamClient, JetStreamManager, JsMsg } from "nats";
import type { BusEvent } from "../../../gen/switchboard/internal/v1/events_pb.js";
import type { Logger } from "../../common/log.js";
import { endSpan } from "../../common/telemetry.js";
import type { Unsubscribe } from "../types.js";
import { type Link, sleep } from "./connection.js";
import { type CommittedStream, isNotFound, partitionDurable } from "./jetstream.js";
import { type PartitionHolder, PartitionLeases } from "./leases.js";
import type { Settings } from "./settings.js";
import { PARTITIONS } from "./subjects.js";
import { processSpan } from "./tracing.js";
import type { NatsBusMetrics } from "./types.js";
import { decodeCommitted } from "./wire.js";

const MAX_NAK_DELAY_MS = 30_000;

type Handler = (events: readonly BusEvent[]) => Promise<void>;

/** Whether a member's handler is failing, so that failure and recovery are logged once each. */
interface Health {
  failing: boolean;
  failedBatches: number;
}

/**
 * The fetching from one durable consumer: a partition's, or the unpartitioned one of earlier
 * versions. It fetches again only once what it fetched is settled, so that it holds at most one
 * fetch's events.
 */
interface Pump {
  readonly durable: string;
  /** The partition, or undefined for the unpartitioned consumer. */
  readonly partition: number | undefined;
  stopped: boolean;
  /** Events fetched and not yet settled. */
  outstanding: number;
  /** Woken when outstanding falls to zero. */
  settled: (() => void) | undefined;
  /** Stops it fetching again; the pull request in flight runs out and its events are handled. */
  stop: () => void;
  stoppedSignal: Promise<void>;
  done: Promise<void>;
  /** Set once the member stops it: resolves when nothing it fetched is left unsettled. */
  halted?: Promise<void> | undefined;
}

interface Fetched {
  m: JsMsg;
  pump: Pump;
}

/** What the members of the consumer group share. */
export interface GroupContext {
  link: Link;
  js: JetStreamClient;
  jsm: JetStreamManager;
  stream: CommittedStream;
  settings: Settings;
  metrics: NatsBusMetrics;
  log: Logger;
}

/** This process's members of the consumer group: one per consume() call. */
export class CommittedConsumers {
  private readonly members = new Set<Member>();

  constructor(private readonly ctx: GroupContext) {}

  /**
   * Starts a member. The returned function stops it: it fetches no more, handles what its last
   * fetches bring, and gives its leases back; its promise resolves then.
   */
  consume(handler: Handler): Unsubscribe {
    if (this.ctx.link.closing) return () => {};
    const member = new Member(this.ctx, handler);
    this.members.add(member);
    member.start();
    return () => {
      this.members.delete(member);
      return member.stop().catch((err: unknown) => this.ctx.log.warn({ err }, "fanout member stop failed"));
    };
  }

  /** Stops every member; resolves when they finished or after graceMs, whichever is first. */
  async stopAll(graceMs: number): Promise<void> {
    const members = [...this.members];
    this.members.clear();
    // A handler that never settles must not keep the process from shutting down.
    await sleep(graceMs, Promise.allSettled(members.map((m) => m.stop())));
  }
}

/** One worker of the consumer group: its leases, a pump per partition it holds, one handling loop. */
class Member implements PartitionHolder {
  private readonly leases: PartitionLeases;
  private readonly pumps = new Map<number, Pump>();
  private legacy: Pump | undefined;
  /** Fetched events in fetch order per partition, waiting for the handler. */
  private readonly queue: Fetched[] = [];
  private wake: (() => void) | undefined;
  private stopping = false;
  /** Set once every pump has stopped and what they fetched is settled: the handling loop ends. */
  private drained = false;
  private shutdown: Promise<void> | undefined;
  private loop: Promise<void> = Promise.resolve();
  private readonly health: Health = { failing: false, failedBatches: 0 };

  constructor(
    private readonly ctx: GroupContext,
    private readonly handler: Handler,
  ) {
    this.leases = new PartitionLeases(ctx.link, ctx.js, ctx.jsm, ctx.settings, this, ctx.log);
  }

  start(): void {
    this.loop = this.handleLoop();
    this.leases.start();
    this.legacy = this.startPump(this.ctx.settings.durable, undefined);
  }

  stop(): Promise<void> {
    this.shutdown ??= this.shutDown();
    return this.shutdown;
  }

  gained(partition: number): void {
    if (this.stopping) return;
    const last = this.pumps.get(partition);
    if (last === undefined) {
      this.pumps.set(partition, this.startPump(partitionDurable(this.ctx.settings, partition), partition));
    } else if (last.halted !== undefined) {
      // Taken again while the last pump's batch settles: consume once it has.
      last.halted.then(() => {
        if (this.leases.holds(partition)) this.gained(partition);
      });
    }
  }

  stopped(partition: number): Promise<void> {
    const pump = this.pumps.get(partition);
    if (pump === undefined) return Promise.resolve();
    // A second call while the first waits for the batch in hand waits for the same.
    pump.halted ??= this.stopPump(pump).finally(() => {
      if (this.pumps.get(partition) === pump) this.pumps.delete(partition);
    });
    return pump.halted;
  }

  private async shutDown(): Promise<void> {
    // Nothing is fetched from here on, even while the leases' round in progress ends: a member
    // that stopped must not handle what it no longer holds.
    this.stopping = true;
    const halted = [...this.pumps.keys()].map((p) => this.stopped(p));
    if (this.legacy) halted.push(this.stopPump(this.legacy));
    // The leases go back only after their pumps stopped and their batches settled.
    await Promise.all(halted);
    await this.leases.stop();
    this.drained = true;
    this.wake?.();
    await this.loop;
  }

  /** Stops a pump and waits until its last pull request ran out and all it fetched is settled. */
  private async stopPump(pump: Pump): Promise<void> {
    pump.stop();
    await pump.done;
    // What the handler has now settles when its batch does.
    if (pump.outstanding > 0) await new Promise<void>((resolve) => (pump.settled = resolve));
  }

  private release(f: Fetched): void {
    if (--f.pump.outstanding === 0) {
      const settled = f.pump.settled;
      f.pump.settled = undefined;
      settled?.();
    }
  }

  private startPump(durable: string, partition: number | undefined): Pump {
    let signalStop: () => void = () => {};
    const pump: Pump = {
      durable,
      partition,
      stopped: false,
      outstanding: 0,
      settled: undefined,
      stoppedSignal: new Promise<void>((resolve) => {
        signalStop = resolve;
      }),
      stop: () => {
        if (pump.stopped) return;
        pump.stopped = true;
        signalStop();
      },
      done: Promise.resolve(),
    };
    pump.done = this.runPump(pump);
    return pump;
  }

  private async runPump(pump: Pump): Promise<void> {
    const s = this.ctx.settings;
    let consumer: Consumer | undefined;
    let failures = 0;
    while (!pump.stopped) {
      if (!this.ctx.link.ready()) {
        if (this.ctx.link.connection.isClosed()) return;
        // Pull requests sent into the reconnect buffer would only pile up.
        await Promise.race([this.ctx.link.reconnected(), pump.stoppedSignal]);
        continue;
      }
      try {
        if (consumer === undefined) {
          if (pump.partition === undefined) {
            if (!(await this.legacyExists())) return;
          } else {
            await this.ensureConsumer(pump.partition);
          }
          consumer = await this.ctx.js.consumers.get(s.stream, pump.durable);
        }
        const fetched = await this.fetchOnce(pump, consumer);
        // Fetch again only once this fetch's events are settled: a pump holds one fetch at most.
        if (pump.outstanding > 0 && !pump.stopped) {
          await Promise.race([new Promise<void>((resolve) => (pump.settled = resolve)), pump.stoppedSignal]);
        }
        if (failures > 0) this.ctx.log.info({ durable: pump.durable }, "bus consumer resumed");
        failures = 0;
        if (pump.partition === undefined && fetched < s.batchSize && (await this.legacyDrained())) return;
      } catch (err) {
        if (pump.stopped || this.ctx.link.connection.isClosed()) break;
        if (pump.partition === undefined && isNotFound(err, "consumer")) return;
        failures++;
        consumer = undefined;
        if (failures === 1)
          this.ctx.log.warn({ err, durable: pump.durable }, "bus consumer failing; retrying");
        const backoff = Math.min(250 * 2 ** (failures - 1), 5000);
        await sleep(backoff, pump.stoppedSignal);
      }
    }
  }

  private async ensureConsumer(partition: number): Promise<void> {
    try {
      await this.ctx.stream.ensureConsumer(partition);
    } catch (err) {
      // A consuming process may start before any publisher has created the stream; one that
      // does not manage it waits for a publisher to.
      if (!this.ctx.settings.manageStream || !isNotFound(err, "stream")) throw err;
      await this.ctx.stream.ensureStream();
      await this.ctx.stream.ensureConsumer(partition);
    }
  }

  /**
   * One pull request of up to batchSize events, queued for the handler as they arrive, so a
   * quiet bus adds no latency. Returns how many arrived.
   *
   * A stopped pump does not close its pull request: the server would go on sending to it until
   * it expires, into an inbox nobody reads, and those events would wait ack_wait (30 s) for
   * redelivery. Nor does it hand them back: the server would send them to the same request
   * again, using up their deliveries. It lets the request run out and handles what came, still
   * holding the lease, so a partition changes hands within fetchExpiresMs and in order.
   */
  private async fetchOnce(pump: Pump, consumer: Consumer): Promise<number> {
    const messages = await consumer.fetch({
      max_messages: this.ctx.settings.batchSize,
      expires: this.ctx.settings.fetchExpiresMs,
    });
    let fetched = 0;
    for await (const m of messages) {
      fetched++;
      pump.outstanding++;
      this.queue.push({ m, pump });
      this.wake?.();
    }
    const err = await messages.closed();
    if (err instanceof Error && !pump.stopped) throw err;
    return fetched;
  }

  /** Hands the queue to the handler in batches of at most batchSize, in fetch order. */
  private async handleLoop(): Promise<void> {
    for (;;) {
      if (this.queue.length > 0) {
        const batch = this.queue.splice(0, this.ctx.settings.batchSize);
        try {
          await this.handleBatch(batch.map((f) => f.m));
        } finally {
          for (const f of batch) this.release(f);
        }
        continue;
      }
      if (this.drained) return;
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
      this.wake = undefined;
    }
  }

  private async legacyExists(): Promise<boolean> {
    try {
      await this.ctx.jsm.consumers.info(this.ctx.settings.stream, this.ctx.settings.durable);
      return true;
    } catch (err) {
      if (isNotFound(err, "consumer") || isNotFound(err, "stream")) return false;
      throw err;
    }
  }

  /**
   * True once the unpartitioned consumer of earlier versions has settled everything before the
   * point where every partition's consumer starts: from there on the partitions deliver it all.
   * Until then a conversation's events may come twice, once from each: at least once, as ever.
   * The consumer is left for the operator to delete (docs/operations.md): a fanout of an earlier
   * version still running would recreate it and replay the stream if it went.
   */
  private async legacyDrained(): Promise<boolean> {
    const s = this.ctx.settings;
    let floor: number;
    try {
      floor = (await this.ctx.jsm.consumers.info(s.stream, s.durable)).ack_floor.stream_seq;
    } catch (err) {
      if (isNotFound(err, "consumer")) return true;
      throw err;
    }
    let start = 0;
    for (let p = 0; p < PARTITIONS; p++) {
      let config: { opt_start_seq?: number };
      try {
        config = (await this.ctx.jsm.consumers.info(s.stream, partitionDurable(s, p))).config;
      } catch (err) {
        if (isNotFound(err, "consumer")) return false;
        throw err;
      }
      start = Math.max(start, config.opt_start_seq ?? 0);
    }
    if (floor + 1 < start) return false;
    this.ctx.log.info(
      { stream: s.stream, durable: s.durable },
      "the unpartitioned fanout consumer of an earlier version is drained; delete it once no such fanout runs",
    );
    return true;
  }

  private async handleBatch(msgs: JsMsg[]): Promise<void> {
    const health = this.health;
    const events: BusEvent[] = [];
    const decoded: JsMsg[] = [];
    // One span per traced event, ended when it is settled; the handler continues from it.
    const spans: Span[] = [];
    for (const m of msgs) {
      this.ctx.metrics.consumed++;
      if (m.info.redelivered) this.ctx.metrics.redelivered++;
      try {
        const event = decodeCommitted(m);
        const span = processSpan(event, {
          stream: this.ctx.settings.stream,
          durable: this.ctx.settings.durable,
          subject: m.subject,
          msgId: m.headers?.get("Nats-Msg-Id") || undefined,
          bodyBytes: m.data.length,
        });
        if (span) spans.push(span);
        events.push(event);
        decoded.push(m);
      } catch (err) {
        // Redelivering bytes that cannot be decoded would fail the same way until max_deliver.
        this.ctx.log.error({ err, subject: m.subject, streamSeq: m.seq }, "undecodable bus event terminated");
        this.settle(m, "term", 0);
      }
    }
    if (events.length === 0) return;
    // A live worker on a slow batch keeps it; only a dead one lets ack_wait hand it to another.
    const progress = setInterval(() => {
      for (const m of decoded) {
        try {
          m.working();
        } catch {
          // The connection is gone; ack_wait will redeliver.
        }
      }
    }, this.ctx.settings.ackWaitMs / 2);
    progress.unref();
    try {
      await this.handler(events);
      for (const m of decoded) this.settle(m, "ack", 0);
      for (const span of spans) endSpan(span);
      if (health.failing) {
        this.ctx.log.info({ failedBatches: health.failedBatches }, "bus event handler recovered");
        health.failing = false;
        health.failedBatches = 0;
      }
    } catch (err) {
      health.failedBatches++;
      if (!health.failing) {
        health.failing = true;
        this.ctx.log.warn(
          { err, events: events.length },
          "bus event handler failed; events will be redelivered",
        );
      }
      for (const m of decoded) {
        const delay = Math.min(
          this.ctx.settings.nakDelayMs * 2 ** (m.info.deliveryCount - 1),
          MAX_NAK_DELAY_MS,
        );
        this.settle(m, "nak", delay);
      }
      for (const span of spans) endSpan(span, err);
    } finally {
      clearInterval(progress);
    }
  }

  private settle(m: JsMsg, how: "ack" | "nak" | "term", delayMs: number): void {
    try {
      if (how === "ack") {
        m.ack();
        this.ctx.metrics.acked++;
      } else if (how === "nak") {
        m.nak(delayMs > 0 ? delayMs : undefined);
        this.ctx.metrics.nakked++;
      } else {
        m.term();
        this.ctx.metrics.terminated++;
      }
    } catch {
      // The connection closed under us: the server redelivers after ack_wait.
    }
  }
}
