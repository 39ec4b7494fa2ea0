import { Code, ConnectError } from "@connectrpc/connect";

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
}

/** Push providers; a kind without credentials falls back to logging its pushes. */
export interface PushConfig {
  /** Accept http:// Web Push endpoints (tests, a private push service on a trusted network). */
  allowHttpEndpoints: boolean;
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
  /** pino level. */
  logLevel: string;
  /** Edge and sequencer limits. */
  limits: Limits;
  /** Push notifications. */
  push: PushConfig;
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
};

/** Overrides accepted by loadConfig; limits and push settings may be given in part. */
export type ConfigInput = Partial<Omit<Config, "limits" | "push">> & {
  limits?: Partial<Limits>;
  push?: Partial<PushConfig>;
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
  const push: PushConfig = {
    allowHttpEndpoints: input?.allowHttpEndpoints ?? env.SWITCHBOARD_PUSH_ALLOW_HTTP === "true",
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
};

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
    logLevel: input.logLevel ?? env.SWITCHBOARD_LOG_LEVEL ?? "info",
    limits,
    push: loadPush(input.push, env),
  };
  if (config.shardCount < 1 || config.shardCount > 4096) {
    throw new ConnectError("configuration: shardCount must be between 1 and 4096", Code.InvalidArgument);
  }
  if (config.port > 65535)
    throw new ConnectError("configuration: port must be at most 65535", Code.InvalidArgument);
  if (config.tokenTtlSeconds < 30) {
    throw new ConnectError("configuration: tokenTtlSeconds must be at least 30", Code.InvalidArgument);
  }
  return config;
}
