/**
 * The distributed store engine: both storage ports on ScyllaDB (or Cassandra 4+) through
 * cassandra-driver. docs/scylla.md describes the schema, the consistency levels, the seq fence and
 * why its writes happen in the order they do.
 */
import { Client } from "cassandra-driver";
import { MAX_TTL_SECONDS } from "../../common/config.js";
import type { Logger } from "../../common/log.js";
import { FaultWindow } from "../faults.js";
import type { StoreEngine } from "../types.js";
import { ScyllaAccountStore } from "./accounts.js";
import { type ConversationSettings, MAX_COMMIT_BYTES_LIMIT } from "./conversations/layout.js";
import { DEFAULT_MAX_COMMIT_BYTES, ScyllaConversationStore } from "./conversations.js";
import { ScyllaKeyStore } from "./keys.js";
import { ScyllaShardLeases } from "./leases.js";
import { refusingOutages } from "./outage.js";
import {
  Cql,
  checkKeyspaceName,
  clientOptions,
  migrateScylla,
  num,
  type ScyllaConnectionOptions,
} from "./schema.js";

export { migrateScylla };

/** Options of the ScyllaDB engine: where the cluster is (ScyllaConnectionOptions) and how to use it. */
export interface ScyllaOptions extends ScyllaConnectionOptions {
  /** Log entries expire after this many seconds (0 or absent: kept forever). */
  entryTtlSeconds?: number;
  /**
   * Seqs per log partition (default 1000). Fixed for the life of a keyspace: the engine records it
   * on first open and refuses to open with another value.
   */
  bucketSize?: number;
  /**
   * Encoded entry bytes one commit carries per conversation, at most, where the committer can split
   * (default 2 MiB, at most 4 MiB): a sequencer shard closes its batch before passing it, and a
   * single operation larger than it commits alone. A commit's intent holds these bytes base64 in
   * one LWT cell, which must stay under the cluster's max_mutation_size (docs/scylla.md).
   */
  maxCommitBytes?: number;
  /**
   * Idempotency records expire this long after they are written, in seconds (the time a client
   * may retry a send; the server passes its idempotency retention, 7 days). The database then
   * expires them and commits write no expiry index row. 0 or absent: they are swept
   * (expireIdempotency), as before this option.
   */
  idempotencyTtlSeconds?: number;
  /** Apply migrations when opening. */
  migrate?: boolean;
}

/** Seqs per log partition unless configured. */
export const DEFAULT_BUCKET_SIZE = 1000;

/** The ScyllaDB engine: both ports over one driver client. */
export class ScyllaStoreEngine implements StoreEngine {
  readonly conversations: ScyllaConversationStore;
  readonly accounts: ScyllaAccountStore;
  readonly keys: ScyllaKeyStore;
  readonly leases: ScyllaShardLeases;
  private closing: Promise<void> | undefined;
  private readonly outages = new FaultWindow("the database");

  constructor(
    private readonly client: Client,
    settings: ConversationSettings,
    log?: Logger,
  ) {
    const cql = new Cql(client);
    // An unreachable or overloaded cluster is a retryable refusal at every port (outage.ts), and
    // makes the process not ready while it lasts.
    this.conversations = refusingOutages(new ScyllaConversationStore(cql, settings, log), this.outages);
    this.accounts = refusingOutages(new ScyllaAccountStore(cql), this.outages);
    this.keys = refusingOutages(new ScyllaKeyStore(cql), this.outages);
    // Not through the outage window: a lease read failing is the ownership loop's business (it
    // stops serving in time), not a refused write a device would see.
    this.leases = new ScyllaShardLeases(cql);
  }

  /** Why the database cannot be used right now (for readiness), or undefined. */
  writeProblem(): string | undefined {
    return this.outages.problem();
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
  const idempotencyTtlSeconds = options.idempotencyTtlSeconds ?? 0;
  if (
    !Number.isInteger(idempotencyTtlSeconds) ||
    idempotencyTtlSeconds < 0 ||
    idempotencyTtlSeconds > MAX_TTL_SECONDS
  ) {
    throw new Error(
      `idempotencyTtlSeconds must be an integer from 0 to ${MAX_TTL_SECONDS}, got ${idempotencyTtlSeconds}`,
    );
  }
  const maxCommitBytes = options.maxCommitBytes ?? DEFAULT_MAX_COMMIT_BYTES;
  if (
    !Number.isSafeInteger(maxCommitBytes) ||
    maxCommitBytes < 1 ||
    maxCommitBytes > MAX_COMMIT_BYTES_LIMIT
  ) {
    throw new Error(
      `maxCommitBytes must be an integer from 1 to ${MAX_COMMIT_BYTES_LIMIT}, got ${maxCommitBytes}`,
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
    return new ScyllaStoreEngine(
      client,
      { bucketSize, entryTtlSeconds, maxCommitBytes, idempotencyTtlSeconds },
      log,
    );
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
