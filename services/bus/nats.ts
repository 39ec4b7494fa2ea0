import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { BinaryReader, BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import {
  AckPolicy,
  type Consumer,
  type ConsumerConfig,
  type ConsumerMessages,
  connect,
  DeliverPolicy,
  DiscardPolicy,
  Events,
  headers,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
  type MsgHdrs,
  type NatsConnection,
  nanos,
  ReplayPolicy,
  RetentionPolicy,
  StorageType,
  type StreamConfig,
} from "nats";
import {
  type BusEvent,
  BusEventSchema,
  type DeliveryBatch,
  DeliveryBatchSchema,
  DeliverySchema,
} from "../../gen/switchboard/internal/v1/events_pb.js";
import type { Logger } from "../common/log.js";
import type { DeliveryChannel, EventBus, Unsubscribe } from "./types.js";

/** How to reach NATS and how the JetStream stream and the fanout consumer are configured. */
export interface NatsBusOptions {
  /** NATS server URLs, e.g. ["nats://127.0.0.1:4222"]; the client picks among them and fails over. */
  servers: string[];
  /** Connection name shown in the server's monitoring (role and instance). */
  name?: string;
  /** JetStream stream for committed events; default "SWITCHBOARD_EVENTS". */
  stream?: string;
  /** First subject token(s) of every subject used; default "switchboard". */
  subjectPrefix?: string;
  /** Durable consumer shared by all fanout workers; default "fanout". */
  durable?: string;
  /**
   * Creates or updates the stream on connect, and creates it if a consumer finds it missing;
   * default true. With false the engine waits for another process to create it.
   */
  manageStream?: boolean;
  /** Oldest event the stream keeps, in milliseconds; default 24 hours. */
  maxAgeMs?: number;
  /** Most bytes the stream keeps before discarding the oldest; default 1 GiB. */
  maxBytes?: number;
  /** Stream replicas: 1 on a single server, 3 on a three-node cluster; default 1. */
  replicas?: number;
  /** Window in which a repeated message id is dropped as a duplicate, in milliseconds; default 2 minutes. */
  duplicateWindowMs?: number;
  /** How long a delivered event may stay unacknowledged before it is redelivered, in milliseconds; default 30 s. */
  ackWaitMs?: number;
  /** Most delivered but unacknowledged events across all workers; default 8192. */
  maxAckPending?: number;
  /** Most deliveries of one event before the server gives up on it; default 20. */
  maxDeliver?: number;
  /** Most events a worker fetches at once; default 256. */
  batchSize?: number;
  /** How long one fetch waits for events, in milliseconds (at least 1000); default 5000. */
  fetchExpiresMs?: number;
  /** First redelivery delay after a failed batch, in milliseconds; it doubles per attempt up to 30 s. Default 1000. */
  nakDelayMs?: number;
  /** A publish not acknowledged by the stream within this rejects, in milliseconds; default 5000. */
  publishTimeoutMs?: number;
  /** Most publishes awaiting their acknowledgement, across calls; default 256. */
  maxPublishesInFlight?: number;
  /** Most bytes buffered for sending while disconnected; beyond it publishes fail at once. Default 8 MiB. */
  reconnectBufferBytes?: number;
  /** Pause between reconnect attempts, in milliseconds; default 2000. */
  reconnectTimeWaitMs?: number;
  /** Interval of the client's liveness pings, in milliseconds; a dead peer is noticed after two missed. Default 10 s. */
  pingIntervalMs?: number;
}

/** Counters since connect; they only grow. */
export interface NatsBusMetrics {
  /** Committed events the stream acknowledged (duplicates included). */
  published: number;
  /** Of those, events the stream dropped as duplicates of an earlier message id. */
  duplicates: number;
  /** Committed events whose publish failed or timed out. */
  publishFailures: number;
  /** Committed events received by this process's workers. */
  consumed: number;
  /** Of those, events the server had delivered before (to this or another worker). */
  redelivered: number;
  /** Events acknowledged after their batch was handled. */
  acked: number;
  /** Events handed back for redelivery because their batch failed or the worker stopped. */
  nakked: number;
  /** Events that could not be decoded and were terminated. */
  terminated: number;
  /** Ephemeral events, broadcasts and deliveries dropped because the reconnect buffer was full. */
  dropped: number;
}

/** The NATS engine of the bus ports. */
export interface NatsEngine {
  bus: EventBus;
  delivery: DeliveryChannel;
  metrics: Readonly<NatsBusMetrics>;
  /** The underlying connection, for health checks and tests; the engine owns it. */
  connection: NatsConnection;
  /** Creates the stream with the configured limits, or updates it when they changed. */
  ensureStream(): Promise<void>;
  /** Creates the durable fanout consumer, or updates its limits when they changed. */
  ensureConsumer(): Promise<void>;
  /** True while connected to a server. */
  ready(): boolean;
  /** Resolves once the server has processed everything sent so far (subscriptions included). */
  flush(): Promise<void>;
  /** Stops consuming (handing unhandled events back), flushes and closes the connection. */
  close(): Promise<void>;
}

const SAFE_TOKEN = /^[A-Za-z0-9_-]{1,128}$/;
const SAFE_PREFIX = /^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/;
const MAX_NAK_DELAY_MS = 30_000;
const CLOSE_GRACE_MS = 5_000;
const DEFAULT_MAX_PAYLOAD = 1024 * 1024;

interface Settings {
  stream: string;
  prefix: string;
  durable: string;
  manageStream: boolean;
  maxAgeMs: number;
  maxBytes: number;
  replicas: number;
  duplicateWindowMs: number;
  ackWaitMs: number;
  maxAckPending: number;
  maxDeliver: number;
  batchSize: number;
  fetchExpiresMs: number;
  nakDelayMs: number;
  publishTimeoutMs: number;
  maxPublishesInFlight: number;
  reconnectBufferBytes: number;
}

function positive(name: string, value: number | undefined, fallback: number): number {
  const v = value ?? fallback;
  if (!Number.isFinite(v) || v <= 0) throw new RangeError(`nats bus: ${name} must be a positive number`);
  return v;
}

function settingsOf(options: NatsBusOptions): Settings {
  const stream = options.stream ?? "SWITCHBOARD_EVENTS";
  const prefix = options.subjectPrefix ?? "switchboard";
  const durable = options.durable ?? "fanout";
  if (!SAFE_TOKEN.test(stream))
    throw new RangeError(`nats bus: invalid stream name ${JSON.stringify(stream)}`);
  if (!SAFE_TOKEN.test(durable))
    throw new RangeError(`nats bus: invalid durable name ${JSON.stringify(durable)}`);
  if (!SAFE_PREFIX.test(prefix))
    throw new RangeError(`nats bus: invalid subject prefix ${JSON.stringify(prefix)}`);
  return {
    stream,
    prefix,
    durable,
    manageStream: options.manageStream !== false,
    maxAgeMs: positive("maxAgeMs", options.maxAgeMs, 24 * 60 * 60 * 1000),
    maxBytes: positive("maxBytes", options.maxBytes, 1024 ** 3),
    replicas: positive("replicas", options.replicas, 1),
    duplicateWindowMs: positive("duplicateWindowMs", options.duplicateWindowMs, 2 * 60 * 1000),
    ackWaitMs: positive("ackWaitMs", options.ackWaitMs, 30_000),
    maxAckPending: positive("maxAckPending", options.maxAckPending, 8192),
    maxDeliver: positive("maxDeliver", options.maxDeliver, 20),
    batchSize: positive("batchSize", options.batchSize, 256),
    // The client refuses pull expiries under a second.
    fetchExpiresMs: Math.max(1000, positive("fetchExpiresMs", options.fetchExpiresMs, 5000)),
    nakDelayMs: positive("nakDelayMs", options.nakDelayMs, 1000),
    publishTimeoutMs: positive("publishTimeoutMs", options.publishTimeoutMs, 5000),
    maxPublishesInFlight: positive("maxPublishesInFlight", options.maxPublishesInFlight, 256),
    reconnectBufferBytes: positive("reconnectBufferBytes", options.reconnectBufferBytes, 8 * 1024 * 1024),
  };
}

/** A subject token for a conversation id; ids that are not plain tokens get a stable hash instead. */
function conversationToken(conversationId: string): string {
  if (SAFE_TOKEN.test(conversationId)) return conversationId;
  // Only routing depends on the subject (dedupe uses the message id), so a collision is harmless.
  let hash = 0x811c9dc5;
  for (let i = 0; i < conversationId.length; i++) {
    hash ^= conversationId.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return `_h${(hash >>> 0).toString(16)}`;
}

/** The conversation an event belongs to and its deduplication id, when it has one. */
export function committedIdentity(event: BusEvent): { conversationId: string; msgId?: string } | undefined {
  const e = event.event;
  if (e.case === "entryCommitted" && e.value.entry !== undefined) {
    const { conversationId, seq } = e.value.entry;
    return { conversationId, msgId: `${conversationId}:${seq}` };
  }
  if (e.case === "receiptIssued" && e.value.receipt !== undefined) {
    const r = e.value.receipt;
    // A member's cursor only moves forward, so (member, kind, up-to) names one receipt.
    return {
      conversationId: r.conversationId,
      msgId: `${r.conversationId}:r:${r.userId}:${r.kind}:${r.upToSeq}`,
    };
  }
  return undefined;
}

/**
 * Groups encoded items into payloads, each the wire form of a message whose field 1 repeats them
 * (so a DeliveryBatch splits into smaller DeliveryBatches), none larger than limit bytes.
 */
function packRepeated(items: readonly Uint8Array[], limit: number): Uint8Array[] {
  const payloads: Uint8Array[] = [];
  let writer = new BinaryWriter();
  let size = 0;
  let count = 0;
  for (const item of items) {
    // Tag (1 byte for field 1) plus the length varint plus the item.
    const framed = 1 + varintSize(item.length) + item.length;
    if (framed > limit)
      throw new RangeError(
        `nats bus: one item of ${item.length} bytes exceeds the ${limit}-byte payload limit`,
      );
    if (count > 0 && size + framed > limit) {
      payloads.push(writer.finish());
      writer = new BinaryWriter();
      size = 0;
      count = 0;
    }
    writer.tag(1, WireType.LengthDelimited).bytes(item);
    size += framed;
    count++;
  }
  if (count > 0) payloads.push(writer.finish());
  return payloads;
}

function varintSize(n: number): number {
  let size = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 0x80);
    size++;
  }
  return size;
}

function unpackEvents(data: Uint8Array): BusEvent[] {
  const reader = new BinaryReader(data);
  const events: BusEvent[] = [];
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === 1 && wireType === WireType.LengthDelimited)
      events.push(fromBinary(BusEventSchema, reader.bytes()));
    else reader.skip(wireType);
  }
  return events;
}

/** Waits ms, or less if wake settles first; the timer never outlives the wait. */
function sleep(ms: number, wake?: Promise<unknown>): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    wake?.then(
      () => {
        clearTimeout(timer);
        resolve();
      },
      () => {
        clearTimeout(timer);
        resolve();
      },
    );
  });
}

function errorCode(err: unknown): string | undefined {
  if (typeof err === "object" && err !== null && "code" in err)
    return String((err as { code: unknown }).code);
  return undefined;
}

function isNotFound(err: unknown, what: "stream" | "consumer"): boolean {
  const message = err instanceof Error ? err.message : "";
  return message.includes(`${what} not found`) || errorCode(err) === "404";
}

/** Handles one consumeCommitted worker. */
interface Worker {
  stopped: boolean;
  fetch?: ConsumerMessages | undefined;
  stop: () => void;
  stoppedSignal: Promise<void>;
  done: Promise<void>;
}

class NatsEngineImpl implements NatsEngine {
  readonly metrics: NatsBusMetrics = {
    published: 0,
    duplicates: 0,
    publishFailures: 0,
    consumed: 0,
    redelivered: 0,
    acked: 0,
    nakked: 0,
    terminated: 0,
    dropped: 0,
  };
  readonly bus: EventBus;
  readonly delivery: DeliveryChannel;
  private readonly js: JetStreamClient;
  private connected = true;
  private closing = false;
  private closed: Promise<void> | undefined;
  private outageBytes = 0;
  private outageDropLogged = false;
  private reconnectWaiters: Array<() => void> = [];
  private readonly workers = new Set<Worker>();
  private inFlight = 0;
  private slotWaiter: (() => void) | undefined;
  /** Calls issue their publishes one after another, so events keep their order across calls. */
  private issuing: Promise<unknown> = Promise.resolve();

  constructor(
    readonly connection: NatsConnection,
    private readonly jsm: JetStreamManager,
    private readonly settings: Settings,
    private readonly log: Logger,
  ) {
    this.js = connection.jetstream();
    this.bus = {
      publishCommitted: (events) => this.publishCommitted(events),
      consumeCommitted: (handler) => this.consumeCommitted(handler),
      publishEphemeral: (events) => this.publishEvents(`${settings.prefix}.ephemeral`, events, "ephemeral"),
      consumeEphemeral: (handler) =>
        this.subscribeEvents(`${settings.prefix}.ephemeral`, handler, "ephemeral", "fanout"),
      broadcast: (events) => this.publishEvents(`${settings.prefix}.broadcast`, events, "broadcast"),
      onBroadcast: (handler) => this.subscribeEvents(`${settings.prefix}.broadcast`, handler, "broadcast"),
      close: () => this.close(),
    };
    this.delivery = {
      deliver: (gatewayId, batch) => this.deliver(gatewayId, batch),
      listen: (gatewayId, handler) => this.listen(gatewayId, handler),
    };
    void this.watchStatus();
    void connection.closed().then((err) => {
      if (!this.closing) this.log.error({ err }, "NATS connection closed unexpectedly");
      this.connected = false;
      this.wakeReconnectWaiters();
    });
  }

  ready(): boolean {
    return this.connected && !this.connection.isClosed();
  }

  async flush(): Promise<void> {
    await this.connection.flush();
  }

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

  async ensureConsumer(): Promise<void> {
    const s = this.settings;
    const limits = {
      ack_wait: nanos(s.ackWaitMs),
      max_ack_pending: s.maxAckPending,
      max_deliver: s.maxDeliver,
    };
    let current: ConsumerConfig;
    try {
      current = (await this.jsm.consumers.info(s.stream, s.durable)).config;
    } catch (err) {
      if (!isNotFound(err, "consumer")) throw err;
      await this.jsm.consumers.add(s.stream, {
        durable_name: s.durable,
        ack_policy: AckPolicy.Explicit,
        // A new deployment delivers what the stream already holds rather than skipping it.
        deliver_policy: DeliverPolicy.All,
        replay_policy: ReplayPolicy.Instant,
        filter_subject: `${s.prefix}.events.>`,
        ...limits,
      });
      this.log.info({ stream: s.stream, durable: s.durable }, "created JetStream consumer");
      return;
    }
    if (
      current.ack_wait === limits.ack_wait &&
      current.max_ack_pending === limits.max_ack_pending &&
      current.max_deliver === limits.max_deliver
    )
      return;
    await this.jsm.consumers.update(s.stream, s.durable, limits);
    this.log.info({ stream: s.stream, durable: s.durable }, "updated JetStream consumer limits");
  }

  close(): Promise<void> {
    this.closed ??= this.shutDown();
    return this.closed;
  }

  private async shutDown(): Promise<void> {
    this.closing = true;
    const workers = [...this.workers];
    for (const w of workers) w.stop();
    // A handler that never settles must not keep the process from shutting down.
    await sleep(CLOSE_GRACE_MS, Promise.all(workers.map((w) => w.done)));
    this.wakeReconnectWaiters();
    if (this.connection.isClosed()) return;
    // Drain sends what is buffered (acks, naks, publishes) before closing; it cannot finish while
    // the server is away, so it is bounded.
    const drained = this.connection.drain().catch(() => undefined);
    await sleep(2000, drained);
    if (!this.connection.isClosed()) await this.connection.close();
  }

  // ---- connection status ----

  private async watchStatus(): Promise<void> {
    for await (const status of this.connection.status()) {
      switch (status.type) {
        case Events.Disconnect:
          if (this.connected) {
            this.connected = false;
            this.outageBytes = 0;
            this.outageDropLogged = false;
            if (!this.closing) this.log.warn({ server: status.data }, "NATS disconnected; reconnecting");
          }
          break;
        case Events.Reconnect:
          if (!this.connected) {
            this.connected = true;
            this.log.info({ server: status.data }, "NATS reconnected");
            this.wakeReconnectWaiters();
          }
          break;
        case Events.LDM:
          this.log.warn({ server: status.data }, "NATS server entering lame duck mode");
          break;
        case Events.Error:
          this.log.error({ err: status.data }, "NATS async error");
          break;
        default:
          break;
      }
    }
  }

  private wakeReconnectWaiters(): void {
    for (const wake of this.reconnectWaiters.splice(0)) wake();
  }

  /** Resolves on the next reconnect (or on close). */
  private reconnected(): Promise<void> {
    return new Promise((resolve) => this.reconnectWaiters.push(resolve));
  }

  /**
   * Whether bytes may be sent now. While disconnected, the client would buffer without limit, so
   * the engine bounds what it hands over during one outage.
   */
  private admit(bytes: number): boolean {
    if (this.connected) return true;
    if (this.outageBytes + bytes > this.settings.reconnectBufferBytes) {
      if (!this.outageDropLogged) {
        this.outageDropLogged = true;
        this.log.warn(
          { limit: this.settings.reconnectBufferBytes },
          "NATS reconnect buffer full; failing sends until reconnected",
        );
      }
      return false;
    }
    this.outageBytes += bytes;
    return true;
  }

  private maxPayload(): number {
    return this.connection.info?.max_payload ?? DEFAULT_MAX_PAYLOAD;
  }

  // ---- committed events ----

  private async publishCommitted(events: readonly BusEvent[]): Promise<void> {
    if (this.closing) throw new Error("nats bus: closed");
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
    const prefix = `${this.settings.prefix}.events.`;
    try {
      for (const event of events) {
        while (this.inFlight >= this.settings.maxPublishesInFlight) await this.freeSlot(deadline);
        const remaining = deadline - Date.now();
        if (remaining <= 0) throw new Error("nats bus: publish timed out waiting for a free slot");
        // The trace context rides in NATS headers, as W3C propagation over NATS does; the
        // payload carries the event alone.
        const traced = Object.keys(event.traceContext).length > 0;
        const data = toBinary(BusEventSchema, traced ? { ...event, traceContext: {} } : event);
        let hdrs: MsgHdrs | undefined;
        if (traced) {
          hdrs = headers();
          for (const [k, v] of Object.entries(event.traceContext)) hdrs.set(k, v);
        }
        if (!this.admit(data.length))
          throw new Error("nats bus: disconnected and the reconnect buffer is full");
        const identity = committedIdentity(event);
        const subject = prefix + (identity ? conversationToken(identity.conversationId) : "_");
        this.inFlight++;
        // js.publish sends synchronously before its first await, so issue order is send order.
        const ack = this.js
          .publish(subject, data, {
            timeout: remaining,
            ...(identity?.msgId && { msgID: identity.msgId }),
            ...(hdrs && { headers: hdrs }),
          })
          .then(
            (pubAck) => {
              this.metrics.published++;
              if (pubAck.duplicate) this.metrics.duplicates++;
            },
            (err: unknown) => {
              this.metrics.publishFailures++;
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

  private consumeCommitted(handler: (events: readonly BusEvent[]) => Promise<void>): Unsubscribe {
    if (this.closing) return () => {};
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

  private async runWorker(
    worker: Worker,
    handler: (events: readonly BusEvent[]) => Promise<void>,
  ): Promise<void> {
    const s = this.settings;
    const health = { failing: false, failedBatches: 0 };
    let consumer: Consumer | undefined;
    let failures = 0;
    while (!worker.stopped) {
      if (!this.ready()) {
        if (this.connection.isClosed()) return;
        // Pull requests sent into the reconnect buffer would only pile up.
        await Promise.race([this.reconnected(), worker.stoppedSignal]);
        continue;
      }
      try {
        if (consumer === undefined) {
          try {
            await this.ensureConsumer();
          } catch (err) {
            // A consuming process may start before any publisher has created the stream; one
            // that does not manage it waits for a publisher to.
            if (!s.manageStream || !isNotFound(err, "stream")) throw err;
            await this.ensureStream();
            await this.ensureConsumer();
          }
          consumer = await this.js.consumers.get(s.stream, s.durable);
        }
        await this.fetchOnce(worker, consumer, handler, health);
        if (failures > 0) this.log.info({ durable: s.durable }, "bus consumer resumed");
        failures = 0;
      } catch (err) {
        if (worker.stopped || this.connection.isClosed()) break;
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
    handler: (events: readonly BusEvent[]) => Promise<void>,
    health: { failing: boolean; failedBatches: number },
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

  private async handleBatch(
    msgs: JsMsg[],
    handler: (events: readonly BusEvent[]) => Promise<void>,
    health: { failing: boolean; failedBatches: number },
  ): Promise<void> {
    const events: BusEvent[] = [];
    const decoded: JsMsg[] = [];
    for (const m of msgs) {
      this.metrics.consumed++;
      if (m.info.redelivered) this.metrics.redelivered++;
      try {
        const event = fromBinary(BusEventSchema, m.data);
        const traceparent = m.headers?.get("traceparent");
        if (traceparent) {
          event.traceContext.traceparent = traceparent;
          const tracestate = m.headers?.get("tracestate");
          if (tracestate) event.traceContext.tracestate = tracestate;
        }
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

  // ---- core subjects ----

  private publishEvents(subject: string, events: readonly BusEvent[], what: string): void {
    if (events.length === 0 || this.closing) return;
    try {
      const payloads = packRepeated(
        events.map((e) => toBinary(BusEventSchema, e)),
        this.maxPayload(),
      );
      for (const payload of payloads) {
        if (!this.admit(payload.length)) {
          this.metrics.dropped += events.length;
          return;
        }
        this.connection.publish(subject, payload);
      }
    } catch (err) {
      // Fire and forget by contract: the caller has nothing to retry.
      this.metrics.dropped += events.length;
      this.log.warn({ err, events: events.length }, `${what} publish failed`);
    }
  }

  private subscribeEvents(
    subject: string,
    handler: (events: readonly BusEvent[]) => void,
    what: string,
    queue?: string,
  ): Unsubscribe {
    const sub = this.connection.subscribe(subject, {
      ...(queue !== undefined ? { queue } : {}),
      callback: (err, msg) => {
        if (err) {
          this.log.error({ err, subject }, `${what} subscription failed`);
          return;
        }
        let events: BusEvent[];
        try {
          events = unpackEvents(msg.data);
        } catch (decodeErr) {
          this.log.error({ err: decodeErr, subject }, `undecodable ${what} message dropped`);
          return;
        }
        try {
          handler(events);
        } catch (handlerErr) {
          this.log.error({ err: handlerErr }, `${what} handler failed`);
        }
      },
    });
    return () => {
      if (!sub.isClosed()) sub.unsubscribe();
    };
  }

  private gatewaySubject(gatewayId: string): string {
    if (!SAFE_TOKEN.test(gatewayId)) {
      throw new RangeError(`nats bus: gateway id ${JSON.stringify(gatewayId)} is not a subject token`);
    }
    return `${this.settings.prefix}.gateway.${gatewayId}`;
  }

  private async deliver(gatewayId: string, batch: DeliveryBatch): Promise<void> {
    const subject = this.gatewaySubject(gatewayId);
    if (this.closing) throw new Error("nats bus: closed");
    const limit = this.maxPayload();
    const whole = toBinary(DeliveryBatchSchema, batch);
    // A batch over the server's payload limit goes as several, in order.
    const payloads =
      whole.length <= limit
        ? [whole]
        : packRepeated(
            batch.deliveries.map((d) => toBinary(DeliverySchema, d)),
            limit,
          );
    for (const payload of payloads) {
      if (!this.admit(payload.length)) {
        this.metrics.dropped += batch.deliveries.length;
        throw new Error("nats bus: disconnected and the reconnect buffer is full");
      }
      this.connection.publish(subject, payload);
    }
  }

  private listen(gatewayId: string, handler: (batch: DeliveryBatch) => void): Unsubscribe {
    const subject = this.gatewaySubject(gatewayId);
    const sub = this.connection.subscribe(subject, {
      callback: (err, msg) => {
        if (err) {
          this.log.error({ err, subject }, "delivery subscription failed");
          return;
        }
        let batch: DeliveryBatch;
        try {
          batch = fromBinary(DeliveryBatchSchema, msg.data);
        } catch (decodeErr) {
          this.log.error({ err: decodeErr, subject }, "undecodable delivery batch dropped");
          return;
        }
        try {
          handler(batch);
        } catch (handlerErr) {
          this.log.error({ err: handlerErr, gatewayId }, "delivery handler failed");
        }
      },
    });
    return () => {
      if (!sub.isClosed()) sub.unsubscribe();
    };
  }
}

/**
 * Connects to NATS and returns the bus engine. The connection reconnects forever; the stream is
 * created or updated on connect unless manageStream is false. Rejects if no server answers now.
 */
export async function connectNats(options: NatsBusOptions, log: Logger): Promise<NatsEngine> {
  const settings = settingsOf(options);
  if (options.servers.length === 0) throw new RangeError("nats bus: no servers given");
  const connection = await connect({
    servers: options.servers,
    ...(options.name !== undefined ? { name: options.name } : {}),
    maxReconnectAttempts: -1,
    reconnectTimeWait: positive("reconnectTimeWaitMs", options.reconnectTimeWaitMs, 2000),
    pingInterval: positive("pingIntervalMs", options.pingIntervalMs, 10_000),
    maxPingOut: 2,
  });
  let engine: NatsEngineImpl | undefined;
  try {
    // checkAPI would make an extra request only to learn what the first real call tells us anyway.
    const jsm = await connection.jetstreamManager({ checkAPI: false });
    engine = new NatsEngineImpl(connection, jsm, settings, log);
    if (settings.manageStream) await engine.ensureStream();
    return engine;
  } catch (err) {
    await (engine ? engine.close() : connection.close());
    throw err;
  }
}
