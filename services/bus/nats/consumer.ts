/**
 * The workers of the durable fanout consumer: each pulls batches, hands them to its handler and
 * settles every event by the handler's outcome (ack, or nak with a growing delay).
 */
import type { Span } from "@opentelemetry/api";
import type { Consumer, ConsumerMessages, JetStreamClient, JsMsg } from "nats";
import type { BusEvent } from "../../../gen/switchboard/internal/v1/events_pb.js";
import type { Logger } from "../../common/log.js";
import { endSpan } from "../../common/telemetry.js";
import type { Unsubscribe } from "../types.js";
import { type Link, sleep } from "./connection.js";
import { type CommittedStream, isNotFound } from "./jetstream.js";
import type { Settings } from "./settings.js";
import { processSpan } from "./tracing.js";
import type { NatsBusMetrics } from "./types.js";
import { decodeCommitted } from "./wire.js";

const MAX_NAK_DELAY_MS = 30_000;

type Handler = (events: readonly BusEvent[]) => Promise<void>;

/** Whether a worker's handler is failing, so that failure and recovery are logged once each. */
interface Health {
  failing: boolean;
  failedBatches: number;
}

/** Handles one consumeCommitted worker. */
interface Worker {
  stopped: boolean;
  fetch?: ConsumerMessages | undefined;
  stop: () => void;
  stoppedSignal: Promise<void>;
  done: Promise<void>;
}

/** This process's workers on the shared durable consumer. */
export class CommittedConsumers {
  private readonly workers = new Set<Worker>();

  constructor(
    private readonly link: Link,
    private readonly js: JetStreamClient,
    private readonly stream: CommittedStream,
    private readonly settings: Settings,
    private readonly metrics: NatsBusMetrics,
    private readonly log: Logger,
  ) {}

  /** Starts a worker; the returned function stops it, handing its unhandled events back. */
  consume(handler: Handler): Unsubscribe {
    if (this.link.closing) return () => {};
    let signalStop: () => void = () => {};
    const worker: Worker = {
      stopped: false,
      stoppedSignal: new Promise<void>((resolve) => {
        signalStop = resolve;
      }),
      stop: () => {
        if (worker.stopped) return;
        worker.stopped = true;
        signalStop();
        worker.fetch?.close().catch(() => undefined);
      },
      done: Promise.resolve(),
    };
    this.workers.add(worker);
    worker.done = this.runWorker(worker, handler).finally(() => this.workers.delete(worker));
    return worker.stop;
  }

  /** Stops every worker; resolves when they finished or after graceMs, whichever is first. */
  async stopAll(graceMs: number): Promise<void> {
    const workers = [...this.workers];
    for (const w of workers) w.stop();
    // A handler that never settles must not keep the process from shutting down.
    await sleep(graceMs, Promise.all(workers.map((w) => w.done)));
  }

  private async runWorker(worker: Worker, handler: Handler): Promise<void> {
    const s = this.settings;
    const health: Health = { failing: false, failedBatches: 0 };
    let consumer: Consumer | undefined;
    let failures = 0;
    while (!worker.stopped) {
      if (!this.link.ready()) {
        if (this.link.connection.isClosed()) return;
        // Pull requests sent into the reconnect buffer would only pile up.
        await Promise.race([this.link.reconnected(), worker.stoppedSignal]);
        continue;
      }
      try {
        if (consumer === undefined) {
          try {
            await this.stream.ensureConsumer();
          } catch (err) {
            // A consuming process may start before any publisher has created the stream; one
            // that does not manage it waits for a publisher to.
            if (!s.manageStream || !isNotFound(err, "stream")) throw err;
            await this.stream.ensureStream();
            await this.stream.ensureConsumer();
          }
          consumer = await this.js.consumers.get(s.stream, s.durable);
        }
        await this.fetchOnce(worker, consumer, handler, health);
        if (failures > 0) this.log.info({ durable: s.durable }, "bus consumer resumed");
        failures = 0;
      } catch (err) {
        if (worker.stopped || this.link.connection.isClosed()) break;
        failures++;
        consumer = undefined;
        if (failures === 1) this.log.warn({ err, durable: s.durable }, "bus consumer failing; retrying");
        const backoff = Math.min(250 * 2 ** (failures - 1), 5000);
        await sleep(backoff, worker.stoppedSignal);
      }
    }
  }

  /**
   * One pull request of up to batchSize events. Events are handled as they arrive, in groups of
   * whatever arrived while the previous group was handled, so a quiet bus adds no latency.
   */
  private async fetchOnce(
    worker: Worker,
    consumer: Consumer,
    handler: Handler,
    health: Health,
  ): Promise<void> {
    const messages = await consumer.fetch({
      max_messages: this.settings.batchSize,
      expires: this.settings.fetchExpiresMs,
    });
    worker.fetch = messages;
    if (worker.stopped) await messages.close();
    const queue: JsMsg[] = [];
    let wake: (() => void) | undefined;
    let ended = false;
    const pump = (async () => {
      try {
        for await (const m of messages) {
          queue.push(m);
          wake?.();
        }
      } finally {
        ended = true;
        wake?.();
      }
    })().then(
      () => undefined,
      (err: unknown) => err,
    );
    try {
      for (;;) {
        if (queue.length > 0 && !worker.stopped) {
          await this.handleBatch(queue.splice(0), handler, health);
          continue;
        }
        if (ended || worker.stopped) break;
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
        wake = undefined;
      }
    } finally {
      worker.fetch = undefined;
      if (worker.stopped) {
        await messages.close().catch(() => undefined);
        // Another worker can take these at once instead of after ack_wait.
        for (const m of queue.splice(0)) this.settle(m, "nak", 0);
      }
    }
    const err = (await pump) ?? (await messages.closed());
    if (err instanceof Error && !worker.stopped) throw err;
  }

  private async handleBatch(msgs: JsMsg[], handler: Handler, health: Health): Promise<void> {
    const events: BusEvent[] = [];
    const decoded: JsMsg[] = [];
    // One span per traced event, ended when it is settled; the handler continues from it.
    const spans: Span[] = [];
    for (const m of msgs) {
      this.metrics.consumed++;
      if (m.info.redelivered) this.metrics.redelivered++;
      try {
        const event = decodeCommitted(m);
        const span = processSpan(event, {
          stream: this.settings.stream,
          durable: this.settings.durable,
          subject: m.subject,
          msgId: m.headers?.get("Nats-Msg-Id") || undefined,
          bodyBytes: m.data.length,
        });
        if (span) spans.push(span);
        events.push(event);
        decoded.push(m);
      } catch (err) {
        // Redelivering bytes that cannot be decoded would fail the same way until max_deliver.
        this.log.error({ err, subject: m.subject, streamSeq: m.seq }, "undecodable bus event terminated");
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
    }, this.settings.ackWaitMs / 2);
    progress.unref();
    try {
      await handler(events);
      for (const m of decoded) this.settle(m, "ack", 0);
      for (const span of spans) endSpan(span);
      if (health.failing) {
        this.log.info({ failedBatches: health.failedBatches }, "bus event handler recovered");
        health.failing = false;
        health.failedBatches = 0;
      }
    } catch (err) {
      health.failedBatches++;
      if (!health.failing) {
        health.failing = true;
        this.log.warn({ err, events: events.length }, "bus event handler failed; events will be redelivered");
      }
      for (const m of decoded) {
        const delay = Math.min(this.settings.nakDelayMs * 2 ** (m.info.deliveryCount - 1), MAX_NAK_DELAY_MS);
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
        this.metrics.acked++;
      } else if (how === "nak") {
        m.nak(delayMs > 0 ? delayMs : undefined);
        this.metrics.nakked++;
      } else {
        m.term();
        this.metrics.terminated++;
      }
    } catch {
      // The connection closed under us: the server redelivers after ack_wait.
    }
  }
}
