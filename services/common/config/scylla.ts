/**
 * The ScyllaDB store engine's connection settings (SCYLLA_*). Read when SWITCHBOARD_STORE=scylla
 * and by `switchboard migrate`; like the media messages, these have no "configuration: " prefix.
 */
import { z } from "zod";
import { ConfigurationError } from "./error.js";
import { check, type Env, refuse } from "./schema.js";

/** Where and how the engine connects (the store's ScyllaOptions without `migrate`). */
export interface ScyllaSettings {
  /** Nodes to contact first: "host" or "host:port" (port 9042 when absent). */
  contactPoints: string[];
  /** The datacenter this process is in; LOCAL_QUORUM and LOCAL_SERIAL are counted there. */
  localDataCenter: string;
  /** The keyspace holding every table. */
  keyspace: string;
  /** PasswordAuthenticator's user name, when the cluster requires credentials (with password). */
  username?: string;
  /** PasswordAuthenticator's password (with username). */
  password?: string;
  /** Applied by migrations when they create the keyspace. */
  replicationFactor?: number;
  /** Log entries expire after this many seconds (0 or absent: kept forever). */
  entryTtlSeconds?: number;
  /**
   * Encoded entry bytes one commit carries per conversation, at most, where a shard can split its
   * batch (the engine's default, 2 MiB, when absent): a commit's intent holds them in one LWT cell,
   * which must stay under the cluster's max_mutation_size (docs/scylla.md).
   */
  maxCommitBytes?: number;
}

/** The largest SCYLLA_MAX_COMMIT_BYTES (the engine refuses more: half of an 8 MiB intent, base64). */
const MAX_COMMIT_BYTES = 4 * 1024 * 1024;

/** The longest TTL Cassandra and ScyllaDB accept, in seconds (20 years). */
export const MAX_TTL_SECONDS = 630_720_000;

/** What CQL accepts unquoted, within the 48 characters ScyllaDB allows. */
const KEYSPACE_NAME = /^[a-z][a-z0-9_]{0,47}$/;
const HOST = /^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$/;
const IPV6 = /^\[[0-9A-Fa-f:.]+\]$/;

/** The trimmed text of a variable; undefined when unset or blank. */
const trimmed = () =>
  z
    .string()
    .optional()
    .transform((v) => {
      const value = v?.trim();
      return value === undefined || value === "" ? undefined : value;
    });

const integer = (name: string, min: number, max: number) =>
  trimmed().transform((value, ctx) => {
    if (value === undefined) return undefined;
    const n = Number(value);
    if (!/^\d+$/.test(value) || n < min || n > max)
      return refuse(ctx, `${name} must be an integer from ${min} to ${max}, got "${value}"`);
    return n;
  });

const contactPoints = z
  .string()
  .optional()
  .transform((value, ctx) => {
    if (value === undefined || value.trim() === "")
      return refuse(
        ctx,
        "SCYLLA_CONTACT_POINTS is not set; give a comma-separated list of host or host:port",
      );
    const points: string[] = [];
    for (const raw of value.split(",")) {
      const point = raw.trim();
      const bracketed = point.startsWith("[");
      // An IPv6 address takes a port only in brackets ("[::1]:9042"), as the driver parses it.
      const colon = bracketed ? point.indexOf("]:") + 1 : point.lastIndexOf(":");
      const host = colon > 0 ? point.slice(0, colon) : point;
      const port = colon > 0 ? point.slice(colon + 1) : undefined;
      const hostOk = bracketed ? IPV6.test(host) && port !== undefined : HOST.test(host);
      if (!hostOk)
        return refuse(ctx, `SCYLLA_CONTACT_POINTS: "${point}" is not a host, host:port or [ipv6]:port`);
      if (port !== undefined && !(/^\d{1,5}$/.test(port) && Number(port) >= 1 && Number(port) <= 65_535))
        return refuse(ctx, `SCYLLA_CONTACT_POINTS: "${point}" has an invalid port`);
      points.push(point);
    }
    return points;
  });

/** The SCYLLA_* variables, in the order they are checked. */
export const scyllaVariables = z.object({
  SCYLLA_CONTACT_POINTS: contactPoints,
  SCYLLA_LOCAL_DC: trimmed().transform((v) => v ?? "datacenter1"),
  SCYLLA_KEYSPACE: trimmed().transform((name = "switchboard", ctx) =>
    KEYSPACE_NAME.test(name)
      ? name
      : refuse(
          ctx,
          `SCYLLA_KEYSPACE: keyspace name "${name}" must be 1-48 characters of a-z, 0-9 and _, starting with a letter`,
        ),
  ),
  SCYLLA_USERNAME: trimmed(),
  /** Not trimmed: a password may have spaces at either end. */
  SCYLLA_PASSWORD: z
    .string()
    .optional()
    .transform((v) => (v === "" ? undefined : v)),
  SCYLLA_REPLICATION_FACTOR: integer("SCYLLA_REPLICATION_FACTOR", 1, 100),
  SCYLLA_ENTRY_TTL_SECONDS: integer("SCYLLA_ENTRY_TTL_SECONDS", 0, MAX_TTL_SECONDS),
  SCYLLA_MAX_COMMIT_BYTES: integer("SCYLLA_MAX_COMMIT_BYTES", 65_536, MAX_COMMIT_BYTES),
});

/** Reads the SCYLLA_* settings; SCYLLA_CONTACT_POINTS is required. */
export function loadScyllaConfig(env: Env): ScyllaSettings {
  const vars = check(scyllaVariables, env);
  const username = vars.SCYLLA_USERNAME;
  const password = vars.SCYLLA_PASSWORD;
  if ((username === undefined) !== (password === undefined)) {
    throw new ConfigurationError("SCYLLA_USERNAME and SCYLLA_PASSWORD must be set together");
  }
  return {
    contactPoints: vars.SCYLLA_CONTACT_POINTS,
    localDataCenter: vars.SCYLLA_LOCAL_DC,
    keyspace: vars.SCYLLA_KEYSPACE,
    ...(username !== undefined && password !== undefined && { username, password }),
    ...(vars.SCYLLA_REPLICATION_FACTOR !== undefined && {
      replicationFactor: vars.SCYLLA_REPLICATION_FACTOR,
    }),
    ...(vars.SCYLLA_ENTRY_TTL_SECONDS !== undefined && { entryTtlSeconds: vars.SCYLLA_ENTRY_TTL_SECONDS }),
    ...(vars.SCYLLA_MAX_COMMIT_BYTES !== undefined && { maxCommitBytes: vars.SCYLLA_MAX_COMMIT_BYTES }),
  };
}

/** What `switchboard migrate` needs: where the cluster is, and how much to log. */
export function loadMigrateSettings(env: Env): { scylla: ScyllaSettings; logLevel: string } {
  return { logLevel: env.SWITCHBOARD_LOG_LEVEL ?? "info", scylla: loadScyllaConfig(env) };
}
