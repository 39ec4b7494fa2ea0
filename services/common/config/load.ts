/**
 * loadConfig: explicit input over the environment (and a settings file under it) over defaults,
 * every value validated, so a bad setting stops the process at start-up with a message naming it.
 */
import { z } from "zod";
import {
  type AccountLimits,
  loadAccountLimits,
  loadPrivacyDefaults,
  type PrivacyDefaults,
} from "./accounts.js";
import { type CallsConfig, loadCalls } from "./calls.js";
import { environment } from "./environment.js";
import { fail } from "./error.js";
import { type FeatureFlagsConfig, loadFeatureFlags } from "./flags.js";
import { type EdgeLimits, type Limits, loadEdge, loadLimits } from "./limits.js";
import { loadMediaConfig, type MediaConfig } from "./media.js";
import { checkMesh, loadMesh, type MeshConfig } from "./mesh.js";
import { loadPush, type PushConfig } from "./push.js";
import { loadRetention, type RetentionConfig } from "./retention.js";
import {
  check,
  type Env,
  httpUrl,
  int,
  intVariable,
  nonEmptyText,
  optionalIntVariable,
  textOr,
  without,
} from "./schema.js";
import { loadScyllaConfig, type ScyllaSettings } from "./scylla.js";
import { loadTracing, type TracingConfig } from "./telemetry.js";
import { loadWeb, type WebConfig } from "./web.js";

/** Everything a Switchboard process needs to know at start-up. */
export interface Config {
  /** Where the embedded store keeps its files. */
  dataDir: string;
  /** Address the public (device-facing) server binds to. */
  host: string;
  /** Port of the public server; 0 picks a free one. */
  port: number;
  /**
   * A second port for device streams only (GatewayService.Connect over gRPC), served by a worker
   * thread, so that their sockets and HTTP/2 are not the main thread's work
   * (services/server/stream-threads.ts); 0 picks a free one. Unset: no such port. The main port
   * serves device streams either way.
   */
  streamPort: number | undefined;
  /**
   * The stream port as the deployment's clients reach it (through its load balancer, say), which
   * gateways tell every device in its stream's ready frame, so that clients need not be given it
   * separately (docs/protocol.md, "The stream port"). Unset: the gateways name none.
   */
  streamUrl: string | undefined;
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
   * conversations are evicted past it and read back from the store when next used. Unset, it
   * depends on the store (SEQUENCER_CACHE_BYTES).
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
  tracing: TracingConfig;
  /** Encrypted attachments: the object store and its limits. */
  media: MediaConfig;
  /** Privacy settings of users who never chose their own (see docs/security.md, consent). */
  privacyDefaults: PrivacyDefaults;
  /** Abuse controls of the accounts service. */
  accountLimits: AccountLimits;
  /** Which web origins may call the device API from a browser (CORS). */
  web: WebConfig;
  /** Calls: the TURN relays devices are given credentials for. */
  calls: CallsConfig;
  /** Disappearing-message timers and the sweep of expired entries. */
  retention: RetentionConfig;
  /** Feature flags and their variants, assigned per user (AccountService.GetFeatureFlags). */
  featureFlags: FeatureFlagsConfig;
  /**
   * The ScyllaDB connection, when this process opens the store there (SWITCHBOARD_STORE=scylla
   * and it runs accounts or the sequencer); undefined otherwise, and SCYLLA_* is not read.
   */
  scylla: ScyllaSettings | undefined;
}

/** Overrides accepted by loadConfig; limits and push settings may be given in part. */
export type ConfigInput = Partial<
  Omit<Config, "limits" | "push" | "mesh" | "tracing" | "edge" | "accountLimits" | "scylla" | "web" | "calls">
> & {
  web?: Partial<WebConfig>;
  limits?: Partial<Limits>;
  accountLimits?: Partial<AccountLimits>;
  edge?: Partial<EdgeLimits>;
  push?: Partial<PushConfig>;
  mesh?: Partial<MeshConfig>;
};

/**
 * The sequencer's hot-state budget when none is configured, by the store it writes to. The budget
 * trades store reads for heap: all of it is live JavaScript objects, which every one of V8's full
 * collections marks. LMDB's reads are a memory-mapped lookup in this process, so its default is
 * small (with 128 MiB, 1:1 sends at 5,000/s had about twice the p99 of 16 MiB: docs/benchmarks.md,
 * fifteenth pass); ScyllaDB's are a network round trip, which a larger budget saves more often.
 */
export const SEQUENCER_CACHE_BYTES = { lmdb: 16 * 1024 * 1024, scylla: 128 * 1024 * 1024 } as const;

/** The process's own variables, in the order they are checked. */
export const serverVariables = z.object({
  SWITCHBOARD_TOKEN_KEY: nonEmptyText().transform((text) =>
    text === undefined ? undefined : Buffer.from(text, "base64url"),
  ),
  SWITCHBOARD_DATA_DIR: textOr(".switchboard/data"),
  SWITCHBOARD_HOST: textOr("127.0.0.1"),
  SWITCHBOARD_PORT: intVariable("port", 7420, false),
  SWITCHBOARD_STREAM_PORT: optionalIntVariable("SWITCHBOARD_STREAM_PORT"),
  SWITCHBOARD_STREAM_URL: httpUrl("SWITCHBOARD_STREAM_URL"),
  SWITCHBOARD_SHARDS: intVariable("shardCount", 16, false),
  SWITCHBOARD_TOKEN_TTL_SECONDS: intVariable("tokenTtlSeconds", 3600, false),
  SWITCHBOARD_SEQUENCER_CACHE_BYTES: optionalIntVariable("SWITCHBOARD_SEQUENCER_CACHE_BYTES"),
  SWITCHBOARD_SEQUENCER_CACHE_CONVERSATIONS: intVariable(
    "SWITCHBOARD_SEQUENCER_CACHE_CONVERSATIONS",
    10_000,
    true,
  ),
  SWITCHBOARD_LOG_LEVEL: textOr("info"),
});

export function loadConfig(input: ConfigInput = {}, env: Env = environment()): Config {
  const limits = loadLimits(input.limits, env);
  const vars = check(
    serverVariables,
    without(env, {
      SWITCHBOARD_TOKEN_KEY: input.tokenKey,
      SWITCHBOARD_DATA_DIR: input.dataDir,
      SWITCHBOARD_HOST: input.host,
      SWITCHBOARD_PORT: input.port,
      SWITCHBOARD_STREAM_PORT: input.streamPort,
      SWITCHBOARD_STREAM_URL: input.streamUrl,
      SWITCHBOARD_SHARDS: input.shardCount,
      SWITCHBOARD_TOKEN_TTL_SECONDS: input.tokenTtlSeconds,
      SWITCHBOARD_SEQUENCER_CACHE_BYTES: input.sequencerCacheBytes,
      SWITCHBOARD_SEQUENCER_CACHE_CONVERSATIONS: input.sequencerCacheConversations,
      SWITCHBOARD_LOG_LEVEL: input.logLevel,
    }),
  );
  const tokenKey = input.tokenKey ?? vars.SWITCHBOARD_TOKEN_KEY;
  if (tokenKey !== undefined && tokenKey.length < 32)
    fail("SWITCHBOARD_TOKEN_KEY must encode at least 32 bytes (base64url)");
  const given = <T>(value: T | undefined, label: string, fromEnv: number) =>
    value === undefined ? fromEnv : int(label, value);
  const dataDir = input.dataDir ?? vars.SWITCHBOARD_DATA_DIR;
  const mesh = loadMesh(input.mesh, env);
  const config: Config = {
    dataDir,
    host: input.host ?? vars.SWITCHBOARD_HOST,
    port: given(input.port, "port", vars.SWITCHBOARD_PORT),
    streamPort:
      input.streamPort === undefined
        ? vars.SWITCHBOARD_STREAM_PORT
        : int("SWITCHBOARD_STREAM_PORT", input.streamPort),
    streamUrl: streamUrl(
      input.streamUrl === undefined
        ? vars.SWITCHBOARD_STREAM_URL
        : check(httpUrl("SWITCHBOARD_STREAM_URL"), input.streamUrl),
    ),
    shardCount: given(input.shardCount, "shardCount", vars.SWITCHBOARD_SHARDS),
    tokenTtlSeconds: given(input.tokenTtlSeconds, "tokenTtlSeconds", vars.SWITCHBOARD_TOKEN_TTL_SECONDS),
    linkCodeTtlSeconds: int("linkCodeTtlSeconds", input.linkCodeTtlSeconds ?? 600),
    tokenKey,
    idempotencyRetentionMs: int(
      "idempotencyRetentionMs",
      input.idempotencyRetentionMs ?? 7 * 24 * 3600 * 1000,
    ),
    sequencerCacheBytes:
      input.sequencerCacheBytes === undefined
        ? (vars.SWITCHBOARD_SEQUENCER_CACHE_BYTES ?? SEQUENCER_CACHE_BYTES[mesh.store])
        : int("SWITCHBOARD_SEQUENCER_CACHE_BYTES", input.sequencerCacheBytes),
    sequencerCacheConversations: given(
      input.sequencerCacheConversations,
      "SWITCHBOARD_SEQUENCER_CACHE_CONVERSATIONS",
      vars.SWITCHBOARD_SEQUENCER_CACHE_CONVERSATIONS,
    ),
    logLevel: input.logLevel ?? vars.SWITCHBOARD_LOG_LEVEL,
    limits,
    edge: loadEdge(input.edge, env),
    push: loadPush(input.push, env),
    mesh,
    tracing: loadTracing(env),
    media: loadMediaConfig(env, dataDir),
    privacyDefaults: loadPrivacyDefaults(input.privacyDefaults, env),
    accountLimits: loadAccountLimits(input.accountLimits, env),
    web: loadWeb(input.web, env),
    calls: loadCalls(env),
    retention: input.retention ?? loadRetention(env),
    featureFlags: input.featureFlags ?? loadFeatureFlags(env),
    scylla: undefined,
  };
  if (config.shardCount < 1 || config.shardCount > 4096) fail("shardCount must be between 1 and 4096");
  if (config.port > 65535) fail("port must be at most 65535");
  if (config.streamPort !== undefined && config.streamPort > 65535)
    fail("SWITCHBOARD_STREAM_PORT must be at most 65535");
  if (config.streamPort !== undefined && config.streamPort !== 0 && config.streamPort === config.port)
    fail("SWITCHBOARD_STREAM_PORT must differ from SWITCHBOARD_PORT");
  if (config.streamUrl !== undefined && config.streamPort === undefined)
    fail("SWITCHBOARD_STREAM_URL names the stream port: set SWITCHBOARD_STREAM_PORT too");
  checkMesh(config.mesh, config.shardCount, config.tokenKey);
  if (config.tokenTtlSeconds < 30) fail("tokenTtlSeconds must be at least 30");
  const opensStore = config.mesh.roles.includes("accounts") || config.mesh.roles.includes("sequencer");
  if (config.mesh.store === "scylla" && opensStore) {
    const scylla = loadScyllaConfig(env);
    // Retention on ScyllaDB is the entries' TTL: the smaller of the two settings.
    const retention = config.retention.maxAgeMs / 1000;
    const own = scylla.entryTtlSeconds ?? 0;
    const ttl = own === 0 ? retention : retention === 0 ? own : Math.min(own, retention);
    config.scylla = { ...scylla, ...(ttl > 0 && { entryTtlSeconds: ttl }) };
  }
  return config;
}

/**
 * The stream port's URL as clients are told it: an http(s) base URL (httpUrl) that carries no
 * credentials, query or fragment, which a client could not use as a base and should not be handed.
 */
function streamUrl(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  const url = new URL(value);
  if (url.username !== "" || url.password !== "" || url.search !== "" || url.hash !== "")
    fail(`SWITCHBOARD_STREAM_URL must not carry credentials, a query or a fragment: "${value}"`);
  return value;
}
