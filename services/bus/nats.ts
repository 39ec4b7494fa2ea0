/**
 * The NATS engine of the bus ports: JetStream for committed events (a stream partitioned by
 * conversation, a durable consumer per partition, each consumed by one fanout worker at a time),
 * core subjects for typing, broadcasts and per-gateway delivery. This file composes the parts in
 * nats/; each has one job:
 *
 *   nats/connection.ts  the connection's state: up or down, the outage buffer bound, reconnects
 *   nats/jetstream.ts   the stream and consumer configuration, and publishing committed events
 *   nats/consumer.ts    the consumer group's members and how each event is settled
 *   nats/leases.ts      which member consumes which partition
 *   nats/subjects.ts    subject names and the core (fire-and-forget) subjects
 *   nats/wire.ts        message payloads, trace headers and packing within the payload limit
 *   nats/settings.ts    the options' defaults and checks; nats/types.ts the public contracts
 */
import type { JetStreamManager, NatsConnection } from "nats";
import type { Logger } from "../common/log.js";
import { Link, openConnection } from "./nats/connection.js";
import { CommittedConsumers } from "./nats/consumer.js";
import { CommittedStream } from "./nats/jetstream.js";
import { PubAcks } from "./nats/pub-acks.js";
import { type Settings, settingsOf } from "./nats/settings.js";
import { CoreSubjects } from "./nats/subjects.js";
import { type NatsBusMetrics, type NatsBusOptions, type NatsEngine, zeroMetrics } from "./nats/types.js";
import type { DeliveryChannel, EventBus } from "./types.js";

export { committedIdentity } from "./nats/subjects.js";
export type { NatsBusMetrics, NatsBusOptions, NatsEngine } from "./nats/types.js";

/** How long a close waits for the workers' handlers to settle, in milliseconds. */
const CLOSE_GRACE_MS = 5_000;

class NatsEngineImpl implements NatsEngine {
  readonly metrics: NatsBusMetrics = zeroMetrics();
  readonly bus: EventBus;
  readonly delivery: DeliveryChannel;
  private readonly link: Link;
  private readonly stream: CommittedStream;
  private readonly consumers: CommittedConsumers;
  private closed: Promise<void> | undefined;

  constructor(
    readonly connection: NatsConnection,
    jsm: JetStreamManager,
    settings: Settings,
    log: Logger,
  ) {
    const js = connection.jetstream();
    this.link = new Link(connection, settings.reconnectBufferBytes, log);
    this.stream = new CommittedStream(this.link, new PubAcks(connection), jsm, settings, this.metrics, log);
    this.consumers = new CommittedConsumers({
      link: this.link,
      js,
      jsm,
      stream: this.stream,
      settings,
      metrics: this.metrics,
      log,
    });
    const core = new CoreSubjects(this.link, settings.prefix, this.metrics, log);
    const ephemeral = `${settings.prefix}.ephemeral`;
    const broadcast = `${settings.prefix}.broadcast`;
    this.bus = {
      publishCommitted: (events) => this.stream.publish(events),
      consumeCommitted: (handler) => this.consumers.consume(handler),
      publishEphemeral: (events) => core.publishEvents(ephemeral, events, "ephemeral"),
      // One queue group: each ephemeral event reaches one fanout process, like committed ones.
      consumeEphemeral: (handler) => core.subscribeEvents(ephemeral, handler, "ephemeral", "fanout"),
      broadcast: (events) => core.publishEvents(broadcast, events, "broadcast"),
      onBroadcast: (handler) => core.subscribeEvents(broadcast, handler, "broadcast"),
      close: () => this.close(),
    };
    this.delivery = {
      deliver: (gatewayId, batch) => core.deliver(gatewayId, batch),
      listen: (gatewayId, handler) => core.listen(gatewayId, handler),
    };
  }

  ready(): boolean {
    return this.link.ready();
  }

  async flush(): Promise<void> {
    await this.connection.flush();
  }

  ensureStream(): Promise<void> {
    return this.stream.ensureStream();
  }

  ensureConsumers(): Promise<void> {
    return this.stream.ensureConsumers();
  }

  backlog(): Promise<{ pending: number; unacknowledged: number }> {
    return this.stream.backlog();
  }

  close(): Promise<void> {
    this.closed ??= this.shutDown();
    return this.closed;
  }

  private async shutDown(): Promise<void> {
    this.link.closing = true;
    await this.consumers.stopAll(CLOSE_GRACE_MS);
    this.link.wakeReconnectWaiters();
    await this.link.drainAndClose();
  }
}

/**
 * Connects to NATS and returns the bus engine. The connection reconnects forever; the stream is
 * created or updated on connect unless manageStream is false. Rejects if no server answers now.
 */
export async function connectNats(options: NatsBusOptions, log: Logger): Promise<NatsEngine> {
  const settings = settingsOf(options);
  if (options.servers.length === 0) throw new RangeError("nats bus: no servers given");
  const connection = await openConnection(options);
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
