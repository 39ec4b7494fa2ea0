/** Which services a process runs, the engines they use and where the other services are. */
import { z } from "zod";
import { fail } from "./error.js";
import { ROLES, type Role } from "./roles.js";
import {
  check,
  type Env,
  flag,
  httpUrl,
  int,
  intVariable,
  list,
  listOf,
  nonEmptyText,
  oneOf,
  oneOfVariable,
  optionalIntVariable,
  refuse,
  text,
  textOr,
  without,
} from "./schema.js";

export { ROLES, type Role };

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
  /**
   * The shard lease term in milliseconds (services/sequencer/ownership.ts): on a store the
   * replicas share (ScyllaDB), a dead replica's shards move to a live one about this long after
   * it stopped. 0 turns failover off (every replica keeps exactly its home shards).
   */
  shardLeaseMs: number;
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

const STORES = ["lmdb", "scylla"] as const;
const BUSES = ["memory", "nats"] as const;
const ROUTE_ENGINES = ["memory", "redis"] as const;

/** The mesh variables, in the order they are checked. */
export const meshVariables = z.object({
  SWITCHBOARD_ROLES: nonEmptyText().transform((raw, ctx) => {
    if (raw === undefined) return undefined;
    const roles = list(raw);
    if (roles.length === 0) return refuse(ctx, "configuration: SWITCHBOARD_ROLES names no role");
    for (const role of roles) {
      if (!(ROLES as readonly string[]).includes(role))
        return refuse(
          ctx,
          `configuration: SWITCHBOARD_ROLES must be one of ${ROLES.join(", ")}, got "${role}"`,
        );
    }
    return roles as Role[];
  }),
  SWITCHBOARD_SEQUENCER_REPLICAS: intVariable("SWITCHBOARD_SEQUENCER_REPLICAS", 1, false),
  SWITCHBOARD_SEQUENCER_URLS: listOf(),
  SWITCHBOARD_SEQUENCER_URL_TEMPLATE: nonEmptyText(),
  SWITCHBOARD_ADMIN_PORT: optionalIntVariable("SWITCHBOARD_ADMIN_PORT"),
  SWITCHBOARD_REDIS_URL: nonEmptyText(),
  SWITCHBOARD_NATS_URL: listOf(),
  SWITCHBOARD_INSTANCE_ID: text(),
  /** Kubernetes sets it to the pod's name: the default instance id and sequencer ordinal. */
  HOSTNAME: text(),
  SWITCHBOARD_STORE: oneOfVariable("SWITCHBOARD_STORE", STORES).default("lmdb"),
  SWITCHBOARD_MIGRATE: flag(),
  SWITCHBOARD_BUS: oneOfVariable("SWITCHBOARD_BUS", BUSES),
  SWITCHBOARD_NATS_SUBJECT_PREFIX: textOr("switchboard"),
  SWITCHBOARD_NATS_STREAM: textOr("SWITCHBOARD_EVENTS"),
  SWITCHBOARD_NATS_STREAM_REPLICAS: intVariable("SWITCHBOARD_NATS_STREAM_REPLICAS", 1, false),
  SWITCHBOARD_NATS_MAX_AGE_MS: intVariable("SWITCHBOARD_NATS_MAX_AGE_MS", 24 * 3600 * 1000, false),
  SWITCHBOARD_NATS_MAX_BYTES: intVariable("SWITCHBOARD_NATS_MAX_BYTES", 1024 ** 3, false),
  SWITCHBOARD_ROUTES: oneOfVariable("SWITCHBOARD_ROUTES", ROUTE_ENGINES),
  SWITCHBOARD_ACCOUNTS_URL: httpUrl("SWITCHBOARD_ACCOUNTS_URL"),
  SWITCHBOARD_MEDIA_URL: httpUrl("SWITCHBOARD_MEDIA_URL"),
  SWITCHBOARD_PRESENCE_URL: httpUrl("SWITCHBOARD_PRESENCE_URL"),
  SWITCHBOARD_NOTIFICATION_URL: httpUrl("SWITCHBOARD_NOTIFICATION_URL"),
  /** Unset or empty: the trailing number of HOSTNAME. */
  SWITCHBOARD_SEQUENCER_ORDINAL: optionalIntVariable("SWITCHBOARD_SEQUENCER_ORDINAL"),
  SWITCHBOARD_SHARD_LEASE_MS: intVariable("SWITCHBOARD_SHARD_LEASE_MS", 3_000, false),
});

export function loadMesh(input: Partial<MeshConfig> | undefined, env: Env): MeshConfig {
  if (input?.roles?.length === 0) fail("SWITCHBOARD_ROLES names no role");
  const given = (value: unknown) => (value === undefined ? undefined : true);
  const vars = check(
    meshVariables,
    without(env, {
      SWITCHBOARD_ROLES: given(input?.roles),
      SWITCHBOARD_SEQUENCER_REPLICAS: given(input?.sequencerReplicas),
      SWITCHBOARD_SEQUENCER_URLS: given(input?.urls?.sequencers),
      SWITCHBOARD_ADMIN_PORT: given(input?.adminPort),
      SWITCHBOARD_REDIS_URL: given(input?.redisUrl),
      SWITCHBOARD_NATS_URL: given(input?.nats?.servers),
      SWITCHBOARD_STORE: given(input?.store),
      SWITCHBOARD_BUS: given(input?.bus),
      SWITCHBOARD_NATS_SUBJECT_PREFIX: given(input?.nats?.subjectPrefix),
      SWITCHBOARD_NATS_STREAM: given(input?.nats?.stream),
      SWITCHBOARD_NATS_STREAM_REPLICAS: given(input?.nats?.replicas),
      SWITCHBOARD_NATS_MAX_AGE_MS: given(input?.nats?.maxAgeMs),
      SWITCHBOARD_NATS_MAX_BYTES: given(input?.nats?.maxBytes),
      SWITCHBOARD_ROUTES: given(input?.routes),
      SWITCHBOARD_ACCOUNTS_URL: given(input?.urls?.accounts),
      SWITCHBOARD_MEDIA_URL: given(input?.urls?.media),
      SWITCHBOARD_PRESENCE_URL: given(input?.urls?.presence),
      SWITCHBOARD_NOTIFICATION_URL: given(input?.urls?.notification),
      SWITCHBOARD_SEQUENCER_ORDINAL: given(input?.sequencerOrdinal),
      SWITCHBOARD_SHARD_LEASE_MS: given(input?.shardLeaseMs),
    }),
  );
  const roles = input?.roles ?? vars.SWITCHBOARD_ROLES ?? [...ROLES];
  const replicas =
    input?.sequencerReplicas === undefined
      ? vars.SWITCHBOARD_SEQUENCER_REPLICAS
      : int("SWITCHBOARD_SEQUENCER_REPLICAS", input.sequencerReplicas);
  let sequencers = input?.urls?.sequencers ?? vars.SWITCHBOARD_SEQUENCER_URLS;
  const template = vars.SWITCHBOARD_SEQUENCER_URL_TEMPLATE;
  if (sequencers.length === 0 && template) {
    if (!template.includes("{ordinal}")) fail("SWITCHBOARD_SEQUENCER_URL_TEMPLATE must contain {ordinal}");
    sequencers = Array.from({ length: replicas }, (_, i) => template.replaceAll("{ordinal}", String(i)));
  }
  sequencers = sequencers.map((u, i) => check(httpUrl(`SWITCHBOARD_SEQUENCER_URLS[${i}]`), u)!);
  const redisUrl = input?.redisUrl ?? vars.SWITCHBOARD_REDIS_URL;
  const natsServers = input?.nats?.servers ?? vars.SWITCHBOARD_NATS_URL;
  const url = (variable: string, value: string | undefined) => check(httpUrl(variable), value);
  return {
    roles: [...new Set(roles)],
    instanceId:
      input?.instanceId ?? vars.SWITCHBOARD_INSTANCE_ID ?? (vars.HOSTNAME || `local-${process.pid}`),
    adminPort:
      input?.adminPort === undefined
        ? vars.SWITCHBOARD_ADMIN_PORT
        : int("SWITCHBOARD_ADMIN_PORT", input.adminPort),
    store: oneOf("SWITCHBOARD_STORE", input?.store ?? vars.SWITCHBOARD_STORE, STORES),
    migrate: input?.migrate ?? vars.SWITCHBOARD_MIGRATE,
    bus: oneOf(
      "SWITCHBOARD_BUS",
      input?.bus ?? vars.SWITCHBOARD_BUS ?? (natsServers.length > 0 ? "nats" : "memory"),
      BUSES,
    ),
    nats: {
      servers: natsServers,
      subjectPrefix: input?.nats?.subjectPrefix ?? vars.SWITCHBOARD_NATS_SUBJECT_PREFIX,
      stream: input?.nats?.stream ?? vars.SWITCHBOARD_NATS_STREAM,
      replicas:
        input?.nats?.replicas === undefined
          ? vars.SWITCHBOARD_NATS_STREAM_REPLICAS
          : int("SWITCHBOARD_NATS_STREAM_REPLICAS", input.nats.replicas),
      maxAgeMs:
        input?.nats?.maxAgeMs === undefined
          ? vars.SWITCHBOARD_NATS_MAX_AGE_MS
          : int("SWITCHBOARD_NATS_MAX_AGE_MS", input.nats.maxAgeMs),
      maxBytes:
        input?.nats?.maxBytes === undefined
          ? vars.SWITCHBOARD_NATS_MAX_BYTES
          : int("SWITCHBOARD_NATS_MAX_BYTES", input.nats.maxBytes),
    },
    routes: oneOf(
      "SWITCHBOARD_ROUTES",
      input?.routes ?? vars.SWITCHBOARD_ROUTES ?? (redisUrl ? "redis" : "memory"),
      ROUTE_ENGINES,
    ),
    redisUrl,
    urls: {
      accounts: url("SWITCHBOARD_ACCOUNTS_URL", input?.urls?.accounts) ?? vars.SWITCHBOARD_ACCOUNTS_URL,
      media: url("SWITCHBOARD_MEDIA_URL", input?.urls?.media) ?? vars.SWITCHBOARD_MEDIA_URL,
      presence: url("SWITCHBOARD_PRESENCE_URL", input?.urls?.presence) ?? vars.SWITCHBOARD_PRESENCE_URL,
      notification:
        url("SWITCHBOARD_NOTIFICATION_URL", input?.urls?.notification) ?? vars.SWITCHBOARD_NOTIFICATION_URL,
      sequencers,
    },
    sequencerReplicas: replicas,
    sequencerOrdinal:
      input?.sequencerOrdinal === undefined
        ? (vars.SWITCHBOARD_SEQUENCER_ORDINAL ?? ordinalOfHostname(vars.HOSTNAME))
        : int("sequencerOrdinal", input.sequencerOrdinal),
    shardLeaseMs:
      input?.shardLeaseMs === undefined
        ? vars.SWITCHBOARD_SHARD_LEASE_MS
        : int("SWITCHBOARD_SHARD_LEASE_MS", input.shardLeaseMs),
  };
}

/**
 * The trailing number of a StatefulSet pod's hostname ("switchboard-sequencer-2" is ordinal 2),
 * so the chart need not template the ordinal per pod.
 */
function ordinalOfHostname(hostname: string | undefined): number {
  const match = /-(\d+)$/.exec(hostname ?? "");
  return match ? Number(match[1]) : 0;
}

/**
 * What each role calls, so a process missing an address stops at start-up naming it (and the Helm
 * chart's check, .ci/check-manifests.mjs, reads this table to check every role's pods get them).
 */
export const ROLE_NEEDS: Readonly<
  Record<Role, ReadonlyArray<"accounts" | "presence" | "notification" | "sequencer">>
> = {
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

/**
 * Cross-field checks: the roles, engines and addresses must make a working process. shardCount
 * bounds the replicas; a split deployment needs a shared tokenKey.
 */
export function checkMesh(mesh: MeshConfig, shardCount: number, tokenKey: Uint8Array | undefined): void {
  const runs = new Set(mesh.roles);
  const everything = ROLES.every((r) => runs.has(r));
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(mesh.instanceId)) {
    fail(`SWITCHBOARD_INSTANCE_ID must be 1-64 letters, digits, "-" or "_", got "${mesh.instanceId}"`);
  }
  if (mesh.sequencerReplicas < 1 || mesh.sequencerReplicas > shardCount) {
    fail(`SWITCHBOARD_SEQUENCER_REPLICAS must be between 1 and the shard count (${shardCount})`);
  }
  if (runs.has("sequencer") && mesh.sequencerOrdinal >= mesh.sequencerReplicas) {
    fail(
      `sequencer ordinal ${mesh.sequencerOrdinal} is outside 0..${mesh.sequencerReplicas - 1} ` +
        "(SWITCHBOARD_SEQUENCER_ORDINAL, or the pod hostname's trailing number)",
    );
  }
  if (mesh.shardLeaseMs !== 0 && (mesh.shardLeaseMs < 3_000 || mesh.shardLeaseMs > 600_000)) {
    fail("SWITCHBOARD_SHARD_LEASE_MS must be 0 (no failover) or from 3000 to 600000");
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
  if (tokenKey === undefined) {
    fail(
      "SWITCHBOARD_TOKEN_KEY is required when roles run in separate processes (all of them must share it)",
    );
  }
  if (mesh.bus !== "nats")
    fail("roles in separate processes need SWITCHBOARD_BUS=nats (SWITCHBOARD_NATS_URL)");
  for (const role of mesh.roles) {
    for (const need of ROLE_NEEDS[role]) {
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
