import type { NatsConnection } from "nats";
import type { DeliveryChannel, EventBus } from "../types.js";

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
  /**
   * Name of the fanout consumer group; default "fanout". Each partition has a durable consumer
   * "<durable>_p<n>", and the leases saying which worker consumes which are in the key-value
   * bucket "<stream>_<durable>_leases".
   */
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
  /**
   * How long a fanout worker's lease on a partition lasts unless renewed, in milliseconds: the
   * longest a dead worker's partitions wait for another to take them. Renewed three times within
   * it. Default 3000, the sequencers' lease term.
   */
  leaseMs?: number;
  /**
   * How long one fetch waits for events, in milliseconds (at least 1000); default 2000. A worker
   * that gives a partition back lets its fetch run out first, so this bounds a handover.
   */
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
  /** The event bus port: JetStream for committed events, core subjects for the rest. */
  bus: EventBus;
  /** The delivery port: one core subject per gateway. */
  delivery: DeliveryChannel;
  /** Counters since connect, for metrics and tests. */
  metrics: Readonly<NatsBusMetrics>;
  /** The underlying connection, for health checks and tests; the engine owns it. */
  connection: NatsConnection;
  /** Creates the stream with the configured limits, or updates it when they changed. */
  ensureStream(): Promise<void>;
  /** Creates the partitions' durable consumers, or updates their limits when they changed. */
  ensureConsumers(): Promise<void>;
  /** Events waiting for the fanout workers, and those they hold unsettled, over every partition. */
  backlog(): Promise<{ pending: number; unacknowledged: number }>;
  /** True while connected to a server. */
  ready(): boolean;
  /** Resolves once the server has processed everything sent so far (subscriptions included). */
  flush(): Promise<void>;
  /** Stops consuming (handing unhandled events back), flushes and closes the connection. */
  close(): Promise<void>;
}

/** A fresh set of counters, all zero. */
export function zeroMetrics(): NatsBusMetrics {
  return {
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
}
