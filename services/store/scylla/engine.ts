/**
 * The distributed store engine: both storage ports on ScyllaDB (or Cassandra 4+) through
 * cassandra-driver. docs/scylla.md describes the schema, the consistency levels, the seq fence and
 * why its writes happen in the order they do.
 */
import { Client } from "cassandra-driver";
import type { Logger } from "../../common/log.js";
import type { StoreEngine } from "../types.js";
import { ScyllaAccountStore } from "./accounts.js";
import { ScyllaConversationStore } from "./conversations.js";
import { ScyllaKeyStore } from "./keys.js";
import { Cql, checkKeyspaceName, clientOptions, migrateScylla, num } from "./schema.js";

export { migrateScylla };

/** Options of the ScyllaDB engine. */
export interface ScyllaOptions {
  /** Nodes to contact first: "host" or "host:port" (port 9042 when absent). */
  contactPoints: string[];
  /** The datacenter this process is in; LOCAL_QUORUM and LOCAL_SERIAL are counted there. */
  localDataCenter: string;
  /** The keyspace holding every table. */
  keyspace: string;
  /** Credentials for PasswordAuthenticator, when the cluster requires them. */
  username?: string;
  password?: string;
  /** Applied by migrateScylla when it creates the keyspace (in localDataCenter). */
  replicationFactor?: number;
  /**
   * Applied by migrateScylla when it creates the keyspace: replication factor per datacenter
   * (NetworkTopologyStrategy). Takes precedence over replicationFactor.
   */
  replication?: Record<string, number>;
  /** Log entries expire after this many seconds (0 or absent: kept forever). */
  entryTtlSeconds?: number;
  /**
   * Seqs per log partition (default 1000). Fixed for the life of a keyspace: the engine records it
   * on first open and refuses to open with another value.
   */
  bucketSize?: number;
  /** Apply migrations when opening. */
  migrate?: boolean;
}

/** Seqs per log partition unless configured. */
export const DEFAULT_BUCKET_SIZE = 1000;

/** The longest TTL Cassandra and ScyllaDB accept, in seconds (20 years). */
export const MAX_TTL_SECONDS = 630_720_000;

/** The ScyllaDB engine: both ports over one driver client. */
export class ScyllaStoreEngine implements StoreEngine {
  readonly conversations: ScyllaConversationStore;
  readonly accounts: ScyllaAccountStore;
  readonly keys: ScyllaKeyStore;
  private closing: Promise<void> | undefined;

  constructor(
    private readonly client: Client,
    settings: { bucketSize: number; entryTtlSeconds: number },
    log?: Logger,
  ) {
    const cql = new Cql(client);
    this.conversations = new ScyllaConversationStore(cql, settings, log);
    this.accounts = new ScyllaAccountStore(cql);
    this.keys = new ScyllaKeyStore(cql);
  }

  /**
   * Closes the driver's connections. Every port method resolves only after its writes were
   * acknowledged by a quorum, so there is nothing left to flush.
   */
  close(): Promise<void> {
    this.closing ??= this.client.shutdown();
    return this.closing;
  }
}

/** Connects to the cluster (migrating first when options.migrate) and opens both ports. */
export async function openScyllaStore(options: ScyllaOptions, log?: Logger): Promise<StoreEngine> {
  checkKeyspaceName(options.keyspace);
  const bucketSize = options.bucketSize ?? DEFAULT_BUCKET_SIZE;
  if (!Number.isSafeInteger(bucketSize) || bucketSize < 1) {
    throw new Error(`bucketSize must be a positive integer, got ${bucketSize}`);
  }
  const entryTtlSeconds = options.entryTtlSeconds ?? 0;
  if (!Number.isInteger(entryTtlSeconds) || entryTtlSeconds < 0 || entryTtlSeconds > MAX_TTL_SECONDS) {
    throw new Error(
      `entryTtlSeconds must be an integer from 0 to ${MAX_TTL_SECONDS}, got ${entryTtlSeconds}`,
    );
  }
  if (options.migrate) await migrateScylla(options, log);
  const client = new Client(clientOptions(options, true));
  try {
    await client.connect();
    const cql = new Cql(client);
    // Reads find an entry by floor(seq / bucketSize): another size would read the wrong partitions.
    const recorded = await recordOnce(cql, "log_bucket_size", bucketSize);
    if (recorded !== bucketSize) {
      throw new Error(
        `keyspace ${options.keyspace} was created with bucketSize ${recorded}; this process is configured with ${bucketSize}`,
      );
    }
    // Where the idempotency expiry scan starts the first time.
    await recordOnce(cql, "idempotency_epoch_ms", Date.now());
    return new ScyllaStoreEngine(client, { bucketSize, entryTtlSeconds }, log);
  } catch (err) {
    await client.shutdown();
    throw err;
  }
}

// Writes a store_meta value unless one exists; returns the value that is stored.
async function recordOnce(cql: Cql, name: string, value: number): Promise<number> {
  const result = await cql.lwt("INSERT INTO store_meta (name, value) VALUES (?, ?) IF NOT EXISTS", [
    name,
    value,
  ]);
  if (result.wasApplied()) return value;
  const row = await cql.one("SELECT value FROM store_meta WHERE name = ?", [name], { serial: true });
  return num(row?.get("value"));
}

/**
 * Reads the engine's settings from the environment:
 *
 *   SCYLLA_CONTACT_POINTS      comma-separated host or host:port (required)
 *   SCYLLA_LOCAL_DC            local datacenter (default datacenter1)
 *   SCYLLA_KEYSPACE            keyspace (default switchboard)
 *   SCYLLA_USERNAME            with SCYLLA_PASSWORD, for PasswordAuthenticator
 *   SCYLLA_PASSWORD
 *   SCYLLA_REPLICATION_FACTOR  positive integer; migrations create the keyspace with it
 *   SCYLLA_ENTRY_TTL_SECONDS   log entry lifetime in seconds, 0 for forever
 *
 * Throws an Error naming the variable for any value it cannot use.
 */
export function scyllaOptionsFromEnv(env: Record<string, string | undefined>): ScyllaOptions {
  const contactPoints = parseContactPoints(env.SCYLLA_CONTACT_POINTS);
  const localDataCenter = nonEmpty(env, "SCYLLA_LOCAL_DC") ?? "datacenter1";
  const keyspace = nonEmpty(env, "SCYLLA_KEYSPACE") ?? "switchboard";
  try {
    checkKeyspaceName(keyspace);
  } catch (err) {
    throw new Error(`SCYLLA_KEYSPACE: ${(err as Error).message}`);
  }
  const username = nonEmpty(env, "SCYLLA_USERNAME");
  const password =
    env.SCYLLA_PASSWORD !== undefined && env.SCYLLA_PASSWORD !== "" ? env.SCYLLA_PASSWORD : undefined;
  if ((username === undefined) !== (password === undefined)) {
    throw new Error("SCYLLA_USERNAME and SCYLLA_PASSWORD must be set together");
  }
  const replicationFactor = integer(env, "SCYLLA_REPLICATION_FACTOR", 1, 100);
  const entryTtlSeconds = integer(env, "SCYLLA_ENTRY_TTL_SECONDS", 0, MAX_TTL_SECONDS);
  return {
    contactPoints,
    localDataCenter,
    keyspace,
    ...(username !== undefined && password !== undefined && { username, password }),
    ...(replicationFactor !== undefined && { replicationFactor }),
    ...(entryTtlSeconds !== undefined && { entryTtlSeconds }),
  };
}

const HOST = /^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$/;
const IPV6 = /^\[[0-9A-Fa-f:.]+\]$/;

function parseContactPoints(value: string | undefined): string[] {
  if (value === undefined || value.trim() === "") {
    throw new Error("SCYLLA_CONTACT_POINTS is not set; give a comma-separated list of host or host:port");
  }
  return value.split(",").map((raw) => {
    const point = raw.trim();
    const bracketed = point.startsWith("[");
    // An IPv6 address takes a port only in brackets ("[::1]:9042"), as the driver parses it.
    const colon = bracketed ? point.indexOf("]:") + 1 : point.lastIndexOf(":");
    const host = colon > 0 ? point.slice(0, colon) : point;
    const port = colon > 0 ? point.slice(colon + 1) : undefined;
    const hostOk = bracketed ? IPV6.test(host) && port !== undefined : HOST.test(host);
    if (!hostOk) {
      throw new Error(`SCYLLA_CONTACT_POINTS: "${point}" is not a host, host:port or [ipv6]:port`);
    }
    if (port !== undefined && !(/^\d{1,5}$/.test(port) && Number(port) >= 1 && Number(port) <= 65_535)) {
      throw new Error(`SCYLLA_CONTACT_POINTS: "${point}" has an invalid port`);
    }
    return point;
  });
}

function nonEmpty(env: Record<string, string | undefined>, name: string): string | undefined {
  const value = env[name]?.trim();
  return value === undefined || value === "" ? undefined : value;
}

function integer(
  env: Record<string, string | undefined>,
  name: string,
  min: number,
  max: number,
): number | undefined {
  const value = nonEmpty(env, name);
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < min || n > max) {
    throw new Error(`${name} must be an integer from ${min} to ${max}, got "${value}"`);
  }
  return n;
}
