/** The edge and sequencer limits, and the bounds on what the network face holds. */
import { z } from "zod";
import { fail } from "./error.js";
import { check, type Env, int, intVariable } from "./schema.js";

/** Limits enforced at the edge and in the sequencer. Defaults are what `npm start` uses. */
export interface Limits {
  /** Largest message or edit payload, in bytes. */
  maxPayloadBytes: number;
  /** Largest reaction payload, in bytes. */
  maxReactionBytes: number;
  /** Sustained sends per second per device (token bucket refill rate). */
  sendsPerSecond: number;
  /** Token bucket size: sends a device may make in a burst. */
  sendBurst: number;
  /** Sends one stream may have awaiting an answer. */
  maxSendsInFlight: number;
  /** Frames per second any stream may send, of every kind (flood protection). */
  framesPerSecond: number;
  /** Frames a stream may send in a burst above framesPerSecond. */
  frameBurst: number;
  /** Concurrent streams per device; a newer stream replaces the oldest beyond this. */
  maxConnectionsPerDevice: number;
  /** Active devices per user. */
  maxDevicesPerUser: number;
  /** Members per group. */
  maxGroupSize: number;
  /** Presence subscriptions per stream. */
  maxPresenceSubscriptions: number;
  /** Frames queued towards one device before it is marked behind and must catch up from the log. */
  outboundQueueFrames: number;
  /**
   * Bytes (encoded frames) queued towards one device before it is marked behind: live pushes
   * are dropped past it and the backlog and sync pages wait for room. Answers to the device's
   * own requests may pass it by as much again; past that the device is not reading and its
   * stream ends with RESOURCE_EXHAUSTED.
   */
  outboundQueueBytes: number;
  /**
   * Bytes of entries in one sync page, GetHistory page or backlog message frame (encoded size);
   * a page holds at least one entry. At most 4 MiB (grpc-js's default receive limit) and at least
   * the largest entry a device may send.
   */
  maxPageBytes: number;
  /** Sync requests one stream may have waiting behind the one being answered. */
  maxQueuedSyncRequests: number;
  /**
   * Milliseconds a stream may go without reading any frame while the server waits to write one
   * (a page waiting for room); past it the stream ends with RESOURCE_EXHAUSTED and the device
   * reconnects and catches up from the log.
   */
  outboundStallMs: number;
  /**
   * Sends one gateway process may have queued for or awaiting the sequencer, all its streams and
   * unary calls together; more are refused UNAVAILABLE with a retry hint (services/gateway/admission.ts).
   * The memory's bound: past capacity what a send waits behind is the answer-rate bound beneath it
   * (sendQueueTargetMs). 20,000 (the default before) let accepted sends wait 1.6-1.8 s at p99 for
   * no more throughput (docs/benchmarks.md, "Nineteenth pass").
   */
  gatewaySendsInFlight: number;
  /** The same bound in bytes (the append items' size bound). */
  gatewaySendBytesInFlight: number;
  /**
   * Milliseconds the quickest send answered in a 100 ms interval may have waited, or the freshest
   * entry delivered live in one may have lagged its commit (above the base lag), three intervals
   * running, before the gateway calls its queue standing (past capacity) and refuses new sends
   * UNAVAILABLE with a retry hint until the signal clears. Also the answer-rate bound: the
   * gateway takes at most as many sends as it answers in this many milliseconds at the mean rate
   * of its last ten seconds (never under 2,048 while its answers take under half this on average).
   * 0 turns all three off.
   */
  sendQueueTargetMs: number;
}

export const defaultLimits: Limits = {
  maxPayloadBytes: 64 * 1024,
  maxReactionBytes: 256,
  sendsPerSecond: 20,
  sendBurst: 100,
  maxSendsInFlight: 256,
  framesPerSecond: 200,
  frameBurst: 1000,
  maxConnectionsPerDevice: 2,
  maxDevicesPerUser: 8,
  maxGroupSize: 1024,
  maxPresenceSubscriptions: 256,
  outboundQueueFrames: 1024,
  outboundQueueBytes: 4 * 1024 * 1024,
  maxPageBytes: 1024 * 1024,
  maxQueuedSyncRequests: 64,
  outboundStallMs: 60_000,
  gatewaySendsInFlight: 10_000,
  gatewaySendBytesInFlight: 256 * 1024 * 1024,
  sendQueueTargetMs: 500,
};

/** grpc-js's default receive limit: no frame or response the server writes may reach it. */
export const CLIENT_RECEIVE_LIMIT_BYTES = 4 * 1024 * 1024;

/**
 * What one client, signed in or not, can make the network face hold: connections, HTTP/2
 * streams, half-read requests and idle sessions. Counted per source address (an IPv6 address by
 * its /64, which one subscriber usually holds whole) and for the whole process.
 */
export interface EdgeLimits {
  /** HTTP/2 streams one connection may have open at once, advertised in SETTINGS. */
  maxStreamsPerConnection: number;
  /** Connections the process accepts at once; more are closed on arrival. */
  maxConnections: number;
  /** Connections one source address may hold at once. Behind a NAT or proxy, raise it. */
  maxConnectionsPerAddress: number;
  /**
   * Requests whose body is one message (unary calls) being read or answered at once, process-wide;
   * more get RESOURCE_EXHAUSTED at once. Calls carrying the internal credential do not count.
   */
  maxRequestsInFlight: number;
  /** The same, per source address. */
  maxRequestsInFlightPerAddress: number;
  /** Milliseconds a new connection has to send its HTTP/2 preface and settings. */
  handshakeTimeoutMs: number;
  /** Milliseconds a connection may stay open with no request on it. */
  idleTimeoutMs: number;
  /** Milliseconds a unary request has from its headers to the end of its body. */
  requestBodyTimeoutMs: number;
  /** Largest block of request headers, in bytes, advertised in SETTINGS. */
  maxHeaderListBytes: number;
}

export const defaultEdgeLimits: EdgeLimits = {
  maxStreamsPerConnection: 100,
  maxConnections: 20_000,
  maxConnectionsPerAddress: 256,
  maxRequestsInFlight: 4096,
  maxRequestsInFlightPerAddress: 512,
  handshakeTimeoutMs: 10_000,
  idleTimeoutMs: 120_000,
  requestBodyTimeoutMs: 15_000,
  maxHeaderListBytes: 16 * 1024,
};

/** The variable of each limit that has one (maxReactionBytes and maxPresenceSubscriptions do not). */
const LIMIT_VARIABLES: Partial<Record<keyof Limits, string>> = {
  maxPayloadBytes: "SWITCHBOARD_MAX_PAYLOAD_BYTES",
  sendsPerSecond: "SWITCHBOARD_SENDS_PER_SECOND",
  sendBurst: "SWITCHBOARD_SEND_BURST",
  maxSendsInFlight: "SWITCHBOARD_MAX_SENDS_IN_FLIGHT",
  framesPerSecond: "SWITCHBOARD_FRAMES_PER_SECOND",
  frameBurst: "SWITCHBOARD_FRAME_BURST",
  maxConnectionsPerDevice: "SWITCHBOARD_MAX_CONNECTIONS_PER_DEVICE",
  maxDevicesPerUser: "SWITCHBOARD_MAX_DEVICES_PER_USER",
  maxGroupSize: "SWITCHBOARD_MAX_GROUP_SIZE",
  outboundQueueFrames: "SWITCHBOARD_OUTBOUND_QUEUE_FRAMES",
  outboundQueueBytes: "SWITCHBOARD_OUTBOUND_QUEUE_BYTES",
  maxPageBytes: "SWITCHBOARD_MAX_PAGE_BYTES",
  maxQueuedSyncRequests: "SWITCHBOARD_MAX_QUEUED_SYNC_REQUESTS",
  outboundStallMs: "SWITCHBOARD_OUTBOUND_STALL_MS",
  gatewaySendsInFlight: "SWITCHBOARD_GATEWAY_SENDS_IN_FLIGHT",
  gatewaySendBytesInFlight: "SWITCHBOARD_GATEWAY_SEND_BYTES_IN_FLIGHT",
  sendQueueTargetMs: "SWITCHBOARD_SEND_QUEUE_TARGET_MS",
};

const EDGE_VARIABLES: Record<keyof EdgeLimits, string> = {
  maxStreamsPerConnection: "SWITCHBOARD_MAX_STREAMS_PER_CONNECTION",
  maxConnections: "SWITCHBOARD_MAX_CONNECTIONS",
  maxConnectionsPerAddress: "SWITCHBOARD_MAX_CONNECTIONS_PER_ADDRESS",
  maxRequestsInFlight: "SWITCHBOARD_MAX_REQUESTS_IN_FLIGHT",
  maxRequestsInFlightPerAddress: "SWITCHBOARD_MAX_REQUESTS_IN_FLIGHT_PER_ADDRESS",
  handshakeTimeoutMs: "SWITCHBOARD_HANDSHAKE_TIMEOUT_MS",
  idleTimeoutMs: "SWITCHBOARD_IDLE_CONNECTION_TIMEOUT_MS",
  requestBodyTimeoutMs: "SWITCHBOARD_REQUEST_BODY_TIMEOUT_MS",
  maxHeaderListBytes: "SWITCHBOARD_MAX_HEADER_LIST_BYTES",
};

/** One variable per field: an empty value counts as unset, a bad one is named by its variable. */
function variablesOf<T extends object>(variables: Partial<Record<keyof T, string>>, defaults: T) {
  const shape: Record<string, z.ZodType<number, string | undefined>> = {};
  for (const [key, variable] of Object.entries(variables) as Array<[keyof T, string]>) {
    shape[variable] = intVariable(variable, defaults[key] as number, true);
  }
  return z.object(shape);
}

/** The limits' variables, with their defaults. */
export const limitVariables = variablesOf(LIMIT_VARIABLES, defaultLimits);

/** The edge limits' variables, with their defaults. */
export const edgeVariables = variablesOf(EDGE_VARIABLES, defaultEdgeLimits);

/** Defaults, under the environment, under input; each value a non-negative integer. */
function overlay<T extends object>(
  defaults: T,
  variables: Partial<Record<keyof T, string>>,
  fromEnv: Record<string, number>,
  input: Partial<T> | undefined,
): T {
  const out = { ...defaults } as Record<string, number>;
  for (const [key, variable] of Object.entries(variables) as Array<[string, string]>) {
    const value = fromEnv[variable];
    if (value !== undefined) out[key] = value;
  }
  for (const [key, value] of Object.entries(input ?? {})) {
    if (value !== undefined) out[key] = int(key, value);
  }
  return out as T;
}

export function loadLimits(input: Partial<Limits> | undefined, env: Env): Limits {
  const limits = overlay(defaultLimits, LIMIT_VARIABLES, check(limitVariables, env), input);
  checkPageLimits(limits);
  // Zero would refuse every send; the byte bound always lets one send in when none is in flight.
  if (limits.gatewaySendsInFlight < 1) fail("gatewaySendsInFlight must be at least 1");
  return limits;
}

export function loadEdge(input: Partial<EdgeLimits> | undefined, env: Env): EdgeLimits {
  const edge = overlay(defaultEdgeLimits, EDGE_VARIABLES, check(edgeVariables, env), input);
  for (const [key, value] of Object.entries(edge)) {
    // Zero would turn every connection or request away (or, for a timeout, close it at once).
    if (value < 1) fail(`${key} must be at least 1`);
  }
  if (edge.maxStreamsPerConnection > 2 ** 31 - 1) fail("maxStreamsPerConnection is too large");
  return edge;
}

/** The bytes of one DeviceCiphertext on the wire without its ciphertext: a 29-character device id, a registration id, a type and the framing, rounded up. */
export const DEVICE_ENTRY_WIRE_BYTES = 48;

/**
 * The largest request a gateway parses (one stream frame or unary request): the payload limit,
 * 16 KiB for ids and framing, and the device entries of a group send naming every device of a
 * full group. Those entries' ids do not count against the payload limit (only the ciphertexts
 * do), so without this room a large group's send could not be encoded at all. 464 KiB with the
 * defaults.
 */
export function gatewayReadMaxBytes(limits: Limits): number {
  return (
    limits.maxPayloadBytes +
    16 * 1024 +
    limits.maxGroupSize * limits.maxDevicesPerUser * DEVICE_ENTRY_WIRE_BYTES
  );
}

/**
 * Pages and queued output must hold the largest entry a device may send, and no frame may reach
 * a stock client's receive limit (64 KiB is left for the frame's own fields).
 */
function checkPageLimits(limits: Limits): void {
  const ceiling = CLIENT_RECEIVE_LIMIT_BYTES - 64 * 1024;
  const entry = gatewayReadMaxBytes(limits);
  if (limits.maxPageBytes > ceiling)
    fail(`maxPageBytes must be at most ${ceiling} (grpc-js clients receive at most 4 MiB)`);
  if (limits.maxPageBytes < entry)
    fail(`maxPageBytes must be at least ${entry}, the largest entry the payload limits allow`);
  if (limits.outboundQueueBytes < limits.maxPageBytes)
    fail("outboundQueueBytes must be at least maxPageBytes");
}
