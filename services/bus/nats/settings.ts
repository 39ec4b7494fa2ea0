import type { NatsBusOptions } from "./types.js";

/** A name usable as one subject token (and as a stream or durable name). */
export const SAFE_TOKEN = /^[A-Za-z0-9_-]{1,128}$/;
/** Dot-separated tokens: a subject prefix. */
export const SAFE_PREFIX = /^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/;

/** The options with every default applied and checked; what the parts of the engine read. */
export interface Settings {
  /** JetStream stream for committed events. */
  stream: string;
  /** First subject token(s) of every subject used. */
  prefix: string;
  /** Name of the fanout consumer group: its partitions' durable consumers and its lease bucket. */
  durable: string;
  /** Whether this process creates and updates the stream. */
  manageStream: boolean;
  /** Oldest event the stream keeps, in milliseconds. */
  maxAgeMs: number;
  /** Most bytes the stream keeps. */
  maxBytes: number;
  /** Stream replicas. */
  replicas: number;
  /** Deduplication window of message ids, in milliseconds. */
  duplicateWindowMs: number;
  /** Acknowledgement wait before redelivery, in milliseconds. */
  ackWaitMs: number;
  /** Most delivered but unacknowledged events across all workers. */
  maxAckPending: number;
  /** Most deliveries of one event. */
  maxDeliver: number;
  /** Most events one fetch asks for. */
  batchSize: number;
  /** How long a partition's lease lasts unless renewed, in milliseconds. */
  leaseMs: number;
  /** How long one fetch waits, in milliseconds (at least 1000). */
  fetchExpiresMs: number;
  /** First redelivery delay after a failed batch, in milliseconds. */
  nakDelayMs: number;
  /** Publish acknowledgement timeout, in milliseconds. */
  publishTimeoutMs: number;
  /** Most publishes awaiting their acknowledgement. */
  maxPublishesInFlight: number;
  /** Most bytes handed to the client during one outage. */
  reconnectBufferBytes: number;
}

/** The value, or the fallback when absent; refuses anything but a positive finite number. */
export function positive(name: string, value: number | undefined, fallback: number): number {
  const v = value ?? fallback;
  if (!Number.isFinite(v) || v <= 0) throw new RangeError(`nats bus: ${name} must be a positive number`);
  return v;
}

/** Applies the defaults and checks names and limits, before anything connects. */
export function settingsOf(options: NatsBusOptions): Settings {
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
    leaseMs: positive("leaseMs", options.leaseMs, 3000),
    // The client refuses pull expiries under a second.
    fetchExpiresMs: Math.max(1000, positive("fetchExpiresMs", options.fetchExpiresMs, 2000)),
    nakDelayMs: positive("nakDelayMs", options.nakDelayMs, 1000),
    publishTimeoutMs: positive("publishTimeoutMs", options.publishTimeoutMs, 5000),
    maxPublishesInFlight: positive("maxPublishesInFlight", options.maxPublishesInFlight, 256),
    reconnectBufferBytes: positive("reconnectBufferBytes", options.reconnectBufferBytes, 8 * 1024 * 1024),
  };
}
