import { Code, ConnectError } from "@connectrpc/connect";
import { REGISTRATION_MODES, type RegistrationMode } from "../accounts/invites.js";
import { loadPrivacyDefaults, type PrivacyDefaults } from "../accounts/privacy-config.js";
import { loadMediaConfig, type MediaConfig } from "../media/config.js";

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
}

/** Push providers; a kind without credentials falls back to logging its pushes. */
export interface PushConfig {
  /** Accept http:// Web Push endpoints (tests, a private push service on a trusted network). */
  allowHttpEndpoints: boolean;
  /**
   * Send Web Push to endpoints that are or resolve to loopback, private or link-local addresses
   * (checked at send time, on the address connected to). Defaults to allowHttpEndpoints.
   */
  allowPrivateEndpoints: boolean;
  /** Web Push (VAPID) credentials. */
  webPush?: { vapidPublicKey: string; vapidPrivateKey: string; subject: string };
  /** FCM HTTP v1: a service-account JSON file, and endpoints for private deployments or tests. */
  fcm?: { serviceAccountFile: string; endpoint?: string; tokenUri?: string };
  /** APNs token authentication: the team, the key id and the .p8 key file. */
  apns?: {
    teamId: string;
    keyId: string;
    keyFile: string;
    productionEndpoint?: string;
    sandboxEndpoint?: string;
  };
  /** Pushes per device per minute. */
  perDevicePerMinute: number;
  /** Pushes per device in a burst. */
  perDeviceBurst: number;
}

/**
 * Abuse controls of the accounts service (issue 15). Each "per period" count is a rate limit whose
 * burst is the same count: a quiet key may spend a whole period's allowance at once, then gets one
 * more every period / count. 0 turns a limit off. Limits are kept in the shared rate limiter
 * (Redis when SWITCHBOARD_ROUTES=redis), so every accounts process enforces one budget.
 */
export interface AccountLimits {
  /** Registrations per source address (IPv6: per /64) per hour. */
  registrationsPerAddressPerHour: number;
  /** Registrations per hour on the whole deployment. */
  registrationsPerHour: number;
  /** Peers (addresses or CIDR ranges) whose X-Forwarded-For names the caller; none by default. */
  trustedProxies: string[];
  /** Usernames (and display names) refused, matched by confusable skeleton. */
  reservedUsernames: string[];
  /** Users and usernames one user may look up per minute (LookupUsers; each id or name counts one). */
  lookupsPerMinute: number;
  /** GetBundles calls one user may make per minute. */
  bundleFetchesPerMinute: number;
  /**
   * One-time prekeys one user may take from one device of another user per day; past it, bundles
   * carry only the signed prekey and the Kyber last-resort prekey, which still open a session.
   */
  oneTimePrekeysPerPairPerDay: number;
  /**
   * "open": anyone may register (within the rate limits); "invite": only with a token from an
   * operator's invite (`switchboard admin invite create`). SWITCHBOARD_REGISTRATION, default open.
   */
  registration: RegistrationMode;
}

/** Everything a Switchboard process needs to know at start-up. */
export interface Config {
  /** Where the embedded store keeps its files. */
  dataDir: string;
  /** Address the public (device-facing) server binds to. */
  host: string;
  /** Port of the public server; 0 picks a free one. */
  port: number;
  /** Logical sequencer shards; fixed for the life of a deployment. */
  shardCount: number;
  /** Access token lifetime, in seconds. */
  tokenTtlSeconds: number;
  /** Link code lifetime, in seconds. */
  linkCodeTtlSeconds: number;
  /** HMAC key for access tokens (at least 32 bytes); generated into dataDir when absent. */
  tokenKey: Uint8Array | undefined;
  /** Idempotency records are kept this long, in milliseconds. */
  idempotencyRetentionMs: number;
  /**
   * Byte budget of a sequencer process's in-memory hot state (recent entries, idempotency keys,
   * members and cursors of its conversations, all shards together); least recently used
   * conversations are evicted past it and read back from the store when next used.
   */
  sequencerCacheBytes: number;
  /** Conversations each sequencer shard keeps in memory, at most (within the byte budget). */
  sequencerCacheConversations: number;
  /** pino level. */
  logLevel: string;
  /** Edge and sequencer limits. */
  limits: Limits;
  /** Bounds on connections and HTTP/2 requests at the network face (see docs/security.md). */
  edge: EdgeLimits;
  /** Push notifications. */
  push: PushConfig;
  /** Which services this process runs, which engines they use and where the others are. */
  mesh: MeshConfig;
  /** Trace export. */
  tracing: { otlpEndpoint: string | undefined; sampleRatio: number };
  /** Encrypted attachments: the object store and its limits. */
  media: MediaConfig;
  /** Privacy settings of users who never chose their own (see docs/security.md, consent). */
  privacyDefaults: PrivacyDefaults;
  /** Abuse controls of the accounts service. */
  accountLimits: AccountLimits;
}

/** The services one process can run. */
export const ROLES = [
  "gateway",
  "accounts",
  "sequencer",
  "fanout",
  "presence",
  "notification",
  "media",
] as const;

/** One service. */
export type Role = (typeof ROLES)[number];

/** The distributed topology of one process (issue: everything in one process by default). */
export interface MeshConfig {
  /** The services this process runs; all of them by default. */
  roles: Role[];
  /** This process's id: names the gateway in routes and delivery subjects. Unique per process. */
  instanceId: string;
  /** Port of the HTTP/1.1 admin server (/healthz, /readyz) for probes; none when undefined. */
  adminPort: number | undefined;
  /** Conversation and account storage. */
  store: "lmdb" | "scylla";
  /** Apply the ScyllaDB schema migrations at start-up. */
  migrate: boolean;
  /** The bus between sequencers, fanout and gateways. */
  bus: "memory" | "nats";
  /** NATS settings, when bus is "nats". */
  nats: NatsConfig;
  /** Where routes, presence and shared rate limits live. */
  routes: "memory" | "redis";
  /** Redis URL, when routes is "redis". */
  redisUrl: string | undefined;
  /** Base URLs of the services this process calls but does not run. */
  urls: ServiceUrls;
  /** Sequencer replicas (StatefulSet ordinals); logical shard s belongs to replica s mod replicas. */
  sequencerReplicas: number;
  /** This process's sequencer ordinal, when it runs the sequencer role. */
  sequencerOrdinal: number;
}

/** NATS connection and JetStream stream settings. */
export interface NatsConfig {
  /** Server URLs. */
  servers: string[];
  /** Prefix of every subject, so deployments can share a NATS account. */
  subjectPrefix: string;
  /** The JetStream stream of committed events. */
  stream: string;
  /** Stream replicas (1, or 3 on a NATS cluster). */
  replicas: number;
  /** Events older than this are discarded, in milliseconds. */
  maxAgeMs: number;
  /** The stream's size bound, in bytes; the oldest events go first. */
  maxBytes: number;
}

/** Addresses of other services. */
export interface ServiceUrls {
  accounts: string | undefined;
  /** The media service, which gateways forward the device API's MediaService to. */
  media: string | undefined;
  presence: string | undefined;
  notification: string | undefined;
  /** One URL per sequencer replica, in ordinal order. */
  sequencers: string[];
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

const ENV_EDGE: Record<string, keyof EdgeLimits> = {
  SWITCHBOARD_MAX_STREAMS_PER_CONNECTION: "maxStreamsPerConnection",
  SWITCHBOARD_MAX_CONNECTIONS: "maxConnections",
  SWITCHBOARD_MAX_CONNECTIONS_PER_ADDRESS: "maxConnectionsPerAddress",
  SWITCHBOARD_MAX_REQUESTS_IN_FLIGHT: "maxRequestsInFlight",
  SWITCHBOARD_MAX_REQUESTS_IN_FLIGHT_PER_ADDRESS: "maxRequestsInFlightPerAddress",
  SWITCHBOARD_HANDSHAKE_TIMEOUT_MS: "handshakeTimeoutMs",
  SWITCHBOARD_IDLE_CONNECTION_TIMEOUT_MS: "idleTimeoutMs",
  SWITCHBOARD_REQUEST_BODY_TIMEOUT_MS: "requestBodyTimeoutMs",
  SWITCHBOARD_MAX_HEADER_LIST_BYTES: "maxHeaderListBytes",
};

function loadEdge(input: Partial<EdgeLimits> | undefined, env: NodeJS.ProcessEnv): EdgeLimits {
  const edge: EdgeLimits = { ...defaultEdgeLimits };
  for (const [variable, key] of Object.entries(ENV_EDGE)) {
    const raw = env[variable];
    if (raw !== undefined && raw !== "") edge[key] = positiveInt(variable, raw);
  }
  for (const [key, value] of Object.entries(input ?? {})) {
    if (value !== undefined) edge[key as keyof EdgeLimits] = positiveInt(key, value);
  }
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

/** Overrides accepted by loadConfig; limits and push settings may be given in part. */
export type ConfigInput = Partial<
  Omit<Config, "limits" | "push" | "mesh" | "tracing" | "edge" | "accountLimits">
> & {
  limits?: Partial<Limits>;
  accountLimits?: Partial<AccountLimits>;
  edge?: Partial<EdgeLimits>;
  push?: Partial<PushConfig>;
  mesh?: Partial<MeshConfig>;
};

/** Reads a group of variables that must be set together (or not at all). */
function group<K extends string>(
  env: NodeJS.ProcessEnv,
  names: Record<K, string>,
): Record<K, string> | undefined {
  const values = Object.entries(names).map(
    ([key, variable]) => [key, env[variable as string] ?? ""] as const,
  );
  const set = values.filter(([, v]) => v !== "");
  if (set.length === 0) return undefined;
  if (set.length < values.length) {
    const missing = Object.entries(names)
      .filter(([key]) => !set.some(([k]) => k === key))
      .map(([, variable]) => variable);
    throw new ConnectError(`configuration: also set ${missing.join(", ")}`, Code.InvalidArgument);
  }
  return Object.fromEntries(values) as Record<K, string>;
}

function loadPush(input: Partial<PushConfig> | undefined, env: NodeJS.ProcessEnv): PushConfig {
  const webPush = group(env, {
    vapidPublicKey: "SWITCHBOARD_WEBPUSH_VAPID_PUBLIC_KEY",
    vapidPrivateKey: "SWITCHBOARD_WEBPUSH_VAPID_PRIVATE_KEY",
    subject: "SWITCHBOARD_WEBPUSH_SUBJECT",
  });
  const fcmFile = env.SWITCHBOARD_FCM_SERVICE_ACCOUNT_FILE;
  const apns = group(env, {
    teamId: "SWITCHBOARD_APNS_TEAM_ID",
    keyId: "SWITCHBOARD_APNS_KEY_ID",
    keyFile: "SWITCHBOARD_APNS_KEY_FILE",
  });
  const allowHttpEndpoints = input?.allowHttpEndpoints ?? env.SWITCHBOARD_PUSH_ALLOW_HTTP === "true";
  const privateRaw = env.SWITCHBOARD_PUSH_ALLOW_PRIVATE_ENDPOINTS;
  const push: PushConfig = {
    allowHttpEndpoints,
    allowPrivateEndpoints:
      input?.allowPrivateEndpoints ??
      (privateRaw === undefined || privateRaw === "" ? allowHttpEndpoints : privateRaw === "true"),
    perDevicePerMinute: positiveInt(
      "SWITCHBOARD_PUSH_PER_DEVICE_PER_MINUTE",
      input?.perDevicePerMinute ?? env.SWITCHBOARD_PUSH_PER_DEVICE_PER_MINUTE ?? 12,
    ),
    perDeviceBurst: positiveInt(
      "SWITCHBOARD_PUSH_PER_DEVICE_BURST",
      input?.perDeviceBurst ?? env.SWITCHBOARD_PUSH_PER_DEVICE_BURST ?? 4,
    ),
  };
  const web = input?.webPush ?? webPush;
  if (web !== undefined) push.webPush = web;
  const fcm =
    input?.fcm ??
    (fcmFile
      ? {
          serviceAccountFile: fcmFile,
          ...(env.SWITCHBOARD_FCM_ENDPOINT && { endpoint: env.SWITCHBOARD_FCM_ENDPOINT }),
          ...(env.SWITCHBOARD_FCM_TOKEN_URI && { tokenUri: env.SWITCHBOARD_FCM_TOKEN_URI }),
        }
      : undefined);
  if (fcm !== undefined) push.fcm = fcm;
  const apple =
    input?.apns ??
    (apns && {
      ...apns,
      ...(env.SWITCHBOARD_APNS_PRODUCTION_ENDPOINT && {
        productionEndpoint: env.SWITCHBOARD_APNS_PRODUCTION_ENDPOINT,
      }),
      ...(env.SWITCHBOARD_APNS_SANDBOX_ENDPOINT && {
        sandboxEndpoint: env.SWITCHBOARD_APNS_SANDBOX_ENDPOINT,
      }),
    });
  if (apple) push.apns = apple;
  return push;
}

const ENV_LIMITS: Record<string, keyof Limits> = {
  SWITCHBOARD_MAX_PAYLOAD_BYTES: "maxPayloadBytes",
  SWITCHBOARD_SENDS_PER_SECOND: "sendsPerSecond",
  SWITCHBOARD_SEND_BURST: "sendBurst",
  SWITCHBOARD_MAX_SENDS_IN_FLIGHT: "maxSendsInFlight",
  SWITCHBOARD_FRAMES_PER_SECOND: "framesPerSecond",
  SWITCHBOARD_FRAME_BURST: "frameBurst",
  SWITCHBOARD_MAX_CONNECTIONS_PER_DEVICE: "maxConnectionsPerDevice",
  SWITCHBOARD_MAX_DEVICES_PER_USER: "maxDevicesPerUser",
  SWITCHBOARD_MAX_GROUP_SIZE: "maxGroupSize",
  SWITCHBOARD_OUTBOUND_QUEUE_FRAMES: "outboundQueueFrames",
  SWITCHBOARD_OUTBOUND_QUEUE_BYTES: "outboundQueueBytes",
  SWITCHBOARD_MAX_PAGE_BYTES: "maxPageBytes",
  SWITCHBOARD_MAX_QUEUED_SYNC_REQUESTS: "maxQueuedSyncRequests",
  SWITCHBOARD_OUTBOUND_STALL_MS: "outboundStallMs",
};

/**
 * Pages and queued output must hold the largest entry a device may send, and no frame may reach
 * a stock client's receive limit (64 KiB is left for the frame's own fields).
 */
function checkPageLimits(limits: Limits): void {
  const bad = (message: string) => new ConnectError(`configuration: ${message}`, Code.InvalidArgument);
  const ceiling = CLIENT_RECEIVE_LIMIT_BYTES - 64 * 1024;
  const entry = gatewayReadMaxBytes(limits);
  if (limits.maxPageBytes > ceiling)
    throw bad(`maxPageBytes must be at most ${ceiling} (grpc-js clients receive at most 4 MiB)`);
  if (limits.maxPageBytes < entry)
    throw bad(`maxPageBytes must be at least ${entry}, the largest entry the payload limits allow`);
  if (limits.outboundQueueBytes < limits.maxPageBytes)
    throw bad("outboundQueueBytes must be at least maxPageBytes");
}

function positiveInt(name: string, value: unknown): number {
  const n = typeof value === "string" ? Number(value) : value;
  if (typeof n !== "number" || !Number.isInteger(n) || n < 0) {
    throw new ConnectError(
      `configuration: ${name} must be a non-negative integer, got ${String(value)}`,
      Code.InvalidArgument,
    );
  }
  return n;
}

/**
 * Builds the configuration from explicit input over the environment over defaults, validating
 * every value, so a bad setting stops the process at start-up with a message naming it.
 */
export function loadConfig(input: ConfigInput = {}, env: NodeJS.ProcessEnv = process.env): Config {
  const limits: Limits = { ...defaultLimits };
  for (const [variable, key] of Object.entries(ENV_LIMITS)) {
    const raw = env[variable];
    if (raw !== undefined && raw !== "") limits[key] = positiveInt(variable, raw);
  }
  for (const [key, value] of Object.entries(input.limits ?? {})) {
    if (value !== undefined) limits[key as keyof Limits] = positiveInt(key, value);
  }
  checkPageLimits(limits);
  const tokenKeyText = env.SWITCHBOARD_TOKEN_KEY;
  const tokenKey = input.tokenKey ?? (tokenKeyText ? Buffer.from(tokenKeyText, "base64url") : undefined);
  if (tokenKey !== undefined && tokenKey.length < 32) {
    throw new ConnectError(
      "configuration: SWITCHBOARD_TOKEN_KEY must encode at least 32 bytes (base64url)",
      Code.InvalidArgument,
    );
  }
  const config: Config = {
    dataDir: input.dataDir ?? env.SWITCHBOARD_DATA_DIR ?? ".switchboard/data",
    host: input.host ?? env.SWITCHBOARD_HOST ?? "127.0.0.1",
    port: positiveInt("port", input.port ?? env.SWITCHBOARD_PORT ?? 7420),
    shardCount: positiveInt("shardCount", input.shardCount ?? env.SWITCHBOARD_SHARDS ?? 16),
    tokenTtlSeconds: positiveInt(
      "tokenTtlSeconds",
      input.tokenTtlSeconds ?? env.SWITCHBOARD_TOKEN_TTL_SECONDS ?? 3600,
    ),
    linkCodeTtlSeconds: positiveInt("linkCodeTtlSeconds", input.linkCodeTtlSeconds ?? 600),
    tokenKey,
    idempotencyRetentionMs: positiveInt(
      "idempotencyRetentionMs",
      input.idempotencyRetentionMs ?? 7 * 24 * 3600 * 1000,
    ),
    sequencerCacheBytes: positiveInt(
      "SWITCHBOARD_SEQUENCER_CACHE_BYTES",
      input.sequencerCacheBytes ?? (env.SWITCHBOARD_SEQUENCER_CACHE_BYTES || 128 * 1024 * 1024),
    ),
    sequencerCacheConversations: positiveInt(
      "SWITCHBOARD_SEQUENCER_CACHE_CONVERSATIONS",
      input.sequencerCacheConversations ?? (env.SWITCHBOARD_SEQUENCER_CACHE_CONVERSATIONS || 10_000),
    ),
    logLevel: input.logLevel ?? env.SWITCHBOARD_LOG_LEVEL ?? "info",
    limits,
    edge: loadEdge(input.edge, env),
    push: loadPush(input.push, env),
    mesh: loadMesh(input.mesh, env),
    tracing: loadTracing(env),
    media: loadMediaConfig(env, input.dataDir ?? env.SWITCHBOARD_DATA_DIR ?? ".switchboard/data"),
    privacyDefaults: loadPrivacyDefaults(input.privacyDefaults, env),
    accountLimits: loadAccountLimits(input.accountLimits, env),
  };
  if (config.shardCount < 1 || config.shardCount > 4096) {
    throw new ConnectError("configuration: shardCount must be between 1 and 4096", Code.InvalidArgument);
  }
  if (config.port > 65535)
    throw new ConnectError("configuration: port must be at most 65535", Code.InvalidArgument);
  checkMesh(config);
  if (config.tokenTtlSeconds < 30) {
    throw new ConnectError("configuration: tokenTtlSeconds must be at least 30", Code.InvalidArgument);
  }
  return config;
}

/**
 * The reserved usernames when SWITCHBOARD_RESERVED_USERNAMES is unset: names people read as the
 * operator speaking (staff roles, the product's name, infrastructure words). They are matched
 * loosely (services/accounts/usernames.ts), so "adm1n", "support_" and a Cyrillic "ѕupport" are
 * refused too.
 */
const DEFAULT_RESERVED_USERNAMES = [
  "admin",
  "administrator",
  "root",
  "support",
  "help",
  "helpdesk",
  "security",
  "system",
  "switchboard",
  "official",
  "staff",
  "moderator",
  "mod",
  "operator",
  "abuse",
  "postmaster",
  "webmaster",
  "hostmaster",
  "noreply",
  "no_reply",
  "info",
  "billing",
  "api",
  "bot",
  "server",
  "everyone",
  "null",
  "undefined",
];

function loadAccountLimits(input: Partial<AccountLimits> | undefined, env: NodeJS.ProcessEnv): AccountLimits {
  const count = (name: string, given: number | undefined, fallback: number) =>
    positiveInt(name, given ?? (env[name] === undefined || env[name] === "" ? fallback : env[name]));
  const reserved =
    input?.reservedUsernames ??
    (env.SWITCHBOARD_RESERVED_USERNAMES !== undefined
      ? list(env.SWITCHBOARD_RESERVED_USERNAMES)
      : DEFAULT_RESERVED_USERNAMES);
  const proxies = input?.trustedProxies ?? list(env.SWITCHBOARD_TRUSTED_PROXIES);
  for (const p of proxies) {
    if (!/^[0-9A-Fa-f:.]+(\/\d{1,3})?$/.test(p))
      fail(`SWITCHBOARD_TRUSTED_PROXIES: not an address or CIDR range: "${p}"`);
  }
  return {
    registrationsPerAddressPerHour: count(
      "SWITCHBOARD_REGISTRATIONS_PER_ADDRESS_PER_HOUR",
      input?.registrationsPerAddressPerHour,
      10,
    ),
    registrationsPerHour: count("SWITCHBOARD_REGISTRATIONS_PER_HOUR", input?.registrationsPerHour, 600),
    trustedProxies: proxies,
    reservedUsernames: reserved,
    lookupsPerMinute: count("SWITCHBOARD_LOOKUPS_PER_MINUTE", input?.lookupsPerMinute, 300),
    bundleFetchesPerMinute: count(
      "SWITCHBOARD_BUNDLE_FETCHES_PER_MINUTE",
      input?.bundleFetchesPerMinute,
      1200,
    ),
    oneTimePrekeysPerPairPerDay: count(
      "SWITCHBOARD_ONE_TIME_PREKEYS_PER_PAIR_PER_DAY",
      input?.oneTimePrekeysPerPairPerDay,
      4,
    ),
    registration: oneOf(
      "SWITCHBOARD_REGISTRATION",
      input?.registration ?? (env.SWITCHBOARD_REGISTRATION || "open"),
      REGISTRATION_MODES,
    ),
  };
}

function fail(message: string): never {
  throw new ConnectError(`configuration: ${message}`, Code.InvalidArgument);
}

function oneOf<T extends string>(name: string, value: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(value))
    fail(`${name} must be one of ${allowed.join(", ")}, got "${value}"`);
  return value as T;
}

function list(raw: string | undefined): string[] {
  return (raw ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
}

function httpUrl(name: string, value: string | undefined): string | undefined {
  if (value === undefined || value === "") return undefined;
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    fail(`${name} is not a URL: "${value}"`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:")
    fail(`${name} must be an http(s) URL, got "${value}"`);
  return value.replace(/\/+$/, "");
}

/**
 * The sequencer ordinal: configured, or the trailing number of a StatefulSet pod's hostname
 * ("switchboard-sequencer-2" is ordinal 2), so the chart need not template it per pod.
 */
function ordinalFrom(env: NodeJS.ProcessEnv, input: number | undefined): number {
  if (input !== undefined) return positiveInt("sequencerOrdinal", input);
  const raw = env.SWITCHBOARD_SEQUENCER_ORDINAL;
  if (raw !== undefined && raw !== "") return positiveInt("SWITCHBOARD_SEQUENCER_ORDINAL", raw);
  const match = /-(\d+)$/.exec(env.HOSTNAME ?? "");
  return match ? Number(match[1]) : 0;
}

function loadMesh(input: Partial<MeshConfig> | undefined, env: NodeJS.ProcessEnv): MeshConfig {
  const roles =
    input?.roles ??
    (env.SWITCHBOARD_ROLES
      ? list(env.SWITCHBOARD_ROLES).map((r) => oneOf("SWITCHBOARD_ROLES", r, ROLES))
      : [...ROLES]);
  if (roles.length === 0) fail("SWITCHBOARD_ROLES names no role");
  const replicas = positiveInt(
    "SWITCHBOARD_SEQUENCER_REPLICAS",
    input?.sequencerReplicas ?? env.SWITCHBOARD_SEQUENCER_REPLICAS ?? 1,
  );
  let sequencers = input?.urls?.sequencers ?? list(env.SWITCHBOARD_SEQUENCER_URLS);
  const template = env.SWITCHBOARD_SEQUENCER_URL_TEMPLATE;
  if (sequencers.length === 0 && template) {
    if (!template.includes("{ordinal}")) fail("SWITCHBOARD_SEQUENCER_URL_TEMPLATE must contain {ordinal}");
    sequencers = Array.from({ length: replicas }, (_, i) => template.replaceAll("{ordinal}", String(i)));
  }
  sequencers = sequencers.map((u, i) => httpUrl(`SWITCHBOARD_SEQUENCER_URLS[${i}]`, u)!);
  const adminRaw = input?.adminPort ?? env.SWITCHBOARD_ADMIN_PORT;
  const redisUrl = input?.redisUrl ?? (env.SWITCHBOARD_REDIS_URL || undefined);
  const natsServers = input?.nats?.servers ?? list(env.SWITCHBOARD_NATS_URL);
  return {
    roles: [...new Set(roles)],
    instanceId: input?.instanceId ?? env.SWITCHBOARD_INSTANCE_ID ?? (env.HOSTNAME || `local-${process.pid}`),
    adminPort:
      adminRaw === undefined || adminRaw === "" ? undefined : positiveInt("SWITCHBOARD_ADMIN_PORT", adminRaw),
    store: oneOf("SWITCHBOARD_STORE", input?.store ?? env.SWITCHBOARD_STORE ?? "lmdb", [
      "lmdb",
      "scylla",
    ] as const),
    migrate: input?.migrate ?? env.SWITCHBOARD_MIGRATE === "true",
    bus: oneOf(
      "SWITCHBOARD_BUS",
      input?.bus ?? env.SWITCHBOARD_BUS ?? (natsServers.length > 0 ? "nats" : "memory"),
      ["memory", "nats"] as const,
    ),
    nats: {
      servers: natsServers,
      subjectPrefix: input?.nats?.subjectPrefix ?? env.SWITCHBOARD_NATS_SUBJECT_PREFIX ?? "switchboard",
      stream: input?.nats?.stream ?? env.SWITCHBOARD_NATS_STREAM ?? "SWITCHBOARD_EVENTS",
      replicas: positiveInt(
        "SWITCHBOARD_NATS_STREAM_REPLICAS",
        input?.nats?.replicas ?? env.SWITCHBOARD_NATS_STREAM_REPLICAS ?? 1,
      ),
      maxAgeMs: positiveInt(
        "SWITCHBOARD_NATS_MAX_AGE_MS",
        input?.nats?.maxAgeMs ?? env.SWITCHBOARD_NATS_MAX_AGE_MS ?? 24 * 3600 * 1000,
      ),
      maxBytes: positiveInt(
        "SWITCHBOARD_NATS_MAX_BYTES",
        input?.nats?.maxBytes ?? env.SWITCHBOARD_NATS_MAX_BYTES ?? 1024 ** 3,
      ),
    },
    routes: oneOf(
      "SWITCHBOARD_ROUTES",
      input?.routes ?? env.SWITCHBOARD_ROUTES ?? (redisUrl ? "redis" : "memory"),
      ["memory", "redis"] as const,
    ),
    redisUrl,
    urls: {
      accounts: httpUrl("SWITCHBOARD_ACCOUNTS_URL", input?.urls?.accounts ?? env.SWITCHBOARD_ACCOUNTS_URL),
      media: httpUrl("SWITCHBOARD_MEDIA_URL", input?.urls?.media ?? env.SWITCHBOARD_MEDIA_URL),
      presence: httpUrl("SWITCHBOARD_PRESENCE_URL", input?.urls?.presence ?? env.SWITCHBOARD_PRESENCE_URL),
      notification: httpUrl(
        "SWITCHBOARD_NOTIFICATION_URL",
        input?.urls?.notification ?? env.SWITCHBOARD_NOTIFICATION_URL,
      ),
      sequencers,
    },
    sequencerReplicas: replicas,
    sequencerOrdinal: ordinalFrom(env, input?.sequencerOrdinal),
  };
}

/** What each role calls, so a process missing an address stops at start-up naming it. */
const NEEDS: Record<Role, Array<"accounts" | "presence" | "notification" | "sequencer">> = {
  gateway: ["accounts", "presence", "sequencer"],
  // A link records where the new device starts in each conversation (RecordDeviceLink).
  accounts: ["sequencer"],
  sequencer: [],
  fanout: ["accounts", "presence", "notification", "sequencer"],
  presence: [],
  notification: ["accounts"],
  media: ["accounts", "sequencer"],
};

const URL_VARIABLE = {
  accounts: "SWITCHBOARD_ACCOUNTS_URL",
  presence: "SWITCHBOARD_PRESENCE_URL",
  notification: "SWITCHBOARD_NOTIFICATION_URL",
  sequencer: "SWITCHBOARD_SEQUENCER_URLS (or SWITCHBOARD_SEQUENCER_URL_TEMPLATE)",
} as const;

/** Cross-field checks: the roles, engines and addresses must make a working process. */
function checkMesh(config: Config): void {
  const mesh = config.mesh;
  const runs = new Set(mesh.roles);
  const everything = ROLES.every((r) => runs.has(r));
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(mesh.instanceId)) {
    fail(`SWITCHBOARD_INSTANCE_ID must be 1-64 letters, digits, "-" or "_", got "${mesh.instanceId}"`);
  }
  if (mesh.sequencerReplicas < 1 || mesh.sequencerReplicas > config.shardCount) {
    fail(`SWITCHBOARD_SEQUENCER_REPLICAS must be between 1 and the shard count (${config.shardCount})`);
  }
  if (runs.has("sequencer") && mesh.sequencerOrdinal >= mesh.sequencerReplicas) {
    fail(
      `sequencer ordinal ${mesh.sequencerOrdinal} is outside 0..${mesh.sequencerReplicas - 1} ` +
        "(SWITCHBOARD_SEQUENCER_ORDINAL, or the pod hostname's trailing number)",
    );
  }
  if (mesh.adminPort !== undefined && mesh.adminPort > 65535)
    fail("SWITCHBOARD_ADMIN_PORT must be at most 65535");
  if (mesh.bus === "nats" && mesh.nats.servers.length === 0)
    fail("SWITCHBOARD_BUS=nats needs SWITCHBOARD_NATS_URL");
  if (mesh.routes === "redis" && mesh.redisUrl === undefined)
    fail("SWITCHBOARD_ROUTES=redis needs SWITCHBOARD_REDIS_URL");
  if (everything) {
    if (mesh.sequencerReplicas !== 1)
      fail(
        "a process running every role is the only sequencer replica; unset SWITCHBOARD_SEQUENCER_REPLICAS",
      );
    return;
  }
  // Split across processes: the processes must agree on keys and see each other's events.
  if (config.tokenKey === undefined) {
    fail(
      "SWITCHBOARD_TOKEN_KEY is required when roles run in separate processes (all of them must share it)",
    );
  }
  if (mesh.bus !== "nats")
    fail("roles in separate processes need SWITCHBOARD_BUS=nats (SWITCHBOARD_NATS_URL)");
  for (const role of mesh.roles) {
    for (const need of NEEDS[role]) {
      const local =
        need === "sequencer" ? runs.has("sequencer") && mesh.sequencerReplicas === 1 : runs.has(need);
      if (local) continue;
      const have = need === "sequencer" ? mesh.urls.sequencers.length > 0 : mesh.urls[need] !== undefined;
      if (!have) fail(`the ${role} role calls the ${need} service: set ${URL_VARIABLE[need]}`);
    }
  }
  if (mesh.urls.sequencers.length > 0 && mesh.urls.sequencers.length !== mesh.sequencerReplicas) {
    fail(
      `SWITCHBOARD_SEQUENCER_URLS lists ${mesh.urls.sequencers.length} replicas but ` +
        `SWITCHBOARD_SEQUENCER_REPLICAS is ${mesh.sequencerReplicas}`,
    );
  }
}

/**
 * Traces go to an OTLP/HTTP collector when one is named (ours, or the standard OpenTelemetry
 * variable); without one, tracing is off and spans cost a no-op call.
 */
function loadTracing(env: NodeJS.ProcessEnv): Config["tracing"] {
  const endpoint = httpUrl(
    "SWITCHBOARD_OTLP_ENDPOINT",
    env.SWITCHBOARD_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || undefined,
  );
  const raw = env.SWITCHBOARD_TRACE_SAMPLE_RATIO;
  const ratio = raw === undefined || raw === "" ? 0.1 : Number(raw);
  if (!Number.isFinite(ratio) || ratio < 0 || ratio > 1) {
    fail(`SWITCHBOARD_TRACE_SAMPLE_RATIO must be a number from 0 to 1, got "${raw}"`);
  }
  return { otlpEndpoint: endpoint, sampleRatio: ratio };
}
