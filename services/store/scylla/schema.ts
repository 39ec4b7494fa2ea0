/**
 * The ScyllaDB schema as ordered migrations, `migrateScylla` that applies them, and the small CQL
 * session helpers both stores share (consistency levels, paging, int64 conversion).
 *
 * Migrations are append-only: a released migration is never edited, a change is a new one. Every
 * statement is idempotent (`IF NOT EXISTS`), so a migration that failed halfway is simply run again.
 *
 * Concurrency: two processes may run `migrateScylla` at once (every replica of a deployment calls
 * it on start). They serialise on an LWT lock row (`schema_migration_lock`, `INSERT ... IF NOT
 * EXISTS USING TTL`): concurrent schema changes are what Cassandra-family databases handle worst,
 * so only the holder of the lock issues DDL. The lock expires on its own if its holder dies. Each
 * applied migration is then recorded with `INSERT ... IF NOT EXISTS` in `schema_migrations`. The
 * two bootstrap tables themselves are created before the lock exists, with identical
 * `CREATE TABLE IF NOT EXISTS` statements, which is the one unavoidable concurrent DDL.
 */
import { randomUUID } from "node:crypto";
import { auth, Client, type ClientOptions, policies, type QueryOptions, types } from "cassandra-driver";
import type { ScyllaSettings } from "../../common/config.js";
import type { Logger } from "../../common/log.js";

/**
 * What migrations and the driver need to reach the cluster: the connection part of the settings
 * (services/common/config/scylla.ts), plus a replication map code may give for multi-DC keyspaces.
 * Declared here, not in engine.ts, so that the schema does not import the engine that imports it;
 * the engine's ScyllaOptions extends it.
 */
export interface ScyllaConnectionOptions extends Omit<ScyllaSettings, "entryTtlSeconds"> {
  /** Replication factor per datacenter when migrateScylla creates the keyspace; wins over replicationFactor. */
  replication?: Record<string, number>;
}

/** One schema migration. */
export interface Migration {
  /** Sortable, unique id: a zero-padded number and a slug ("0001_conversation_log"). */
  id: string;
  /** What it changes, for people. */
  description: string;
  /** CQL statements, run in order, each idempotent. Table names are unqualified. */
  statements: string[];
}

/** Partitions of the idempotency expiry index per time slot, so one slot is not one hot partition. */
export const IDEMPOTENCY_SHARDS = 32;

/** Length of one idempotency expiry slot, in milliseconds. */
export const IDEMPOTENCY_SLOT_MS = 10 * 60_000;

/** The schema, oldest first. */
export const MIGRATIONS: readonly Migration[] = [
  {
    id: "0001_conversation_log",
    description: "conversations, the bucketed log and its head row, idempotency, members and cursors",
    statements: [
      `CREATE TABLE IF NOT EXISTS conversations (
        conversation_id text PRIMARY KEY,
        kind text,
        title text,
        created_at_ms bigint,
        members_version bigint)`,
      // Written only with LWT: the fence. pending_id is '' when no commit is in flight; pending
      // then holds an empty blob rather than null, so a commit leaves no tombstone behind.
      `CREATE TABLE IF NOT EXISTS log_heads (
        conversation_id text PRIMARY KEY,
        last_seq bigint,
        commit_ts bigint,
        pending_id text,
        pending_last bigint,
        pending blob,
        pending_at_ms bigint)`,
      `CREATE TABLE IF NOT EXISTS log_entries (
        conversation_id text,
        bucket bigint,
        seq bigint,
        entry blob,
        PRIMARY KEY ((conversation_id, bucket), seq))
        WITH CLUSTERING ORDER BY (seq ASC)`,
      `CREATE TABLE IF NOT EXISTS idempotency (
        conversation_id text,
        device_id text,
        client_msg_id text,
        seq bigint,
        at_ms bigint,
        PRIMARY KEY ((conversation_id, device_id, client_msg_id)))`,
      `CREATE TABLE IF NOT EXISTS idempotency_by_time (
        slot bigint,
        shard int,
        at_ms bigint,
        conversation_id text,
        device_id text,
        client_msg_id text,
        write_ts bigint,
        PRIMARY KEY ((slot, shard), at_ms, conversation_id, device_id, client_msg_id))`,
      `CREATE TABLE IF NOT EXISTS members (
        conversation_id text,
        user_id text,
        role text,
        joined_seq bigint,
        added_at_ms bigint,
        delivered_up_to bigint,
        read_up_to bigint,
        muted_until_ms bigint,
        PRIMARY KEY (conversation_id, user_id))`,
      `CREATE TABLE IF NOT EXISTS user_conversations (
        user_id text,
        conversation_id text,
        joined_seq bigint,
        PRIMARY KEY (user_id, conversation_id))`,
      `CREATE TABLE IF NOT EXISTS device_cursors (
        conversation_id text,
        device_id text,
        delivered_up_to bigint,
        read_up_to bigint,
        PRIMARY KEY (conversation_id, device_id))`,
      `CREATE TABLE IF NOT EXISTS store_meta (
        name text PRIMARY KEY,
        value bigint)`,
    ],
  },
  {
    id: "0002_accounts",
    description: "users, usernames, devices (with the per-user version row) and link codes",
    statements: [
      `CREATE TABLE IF NOT EXISTS users (
        user_id text PRIMARY KEY,
        username text,
        display_name text,
        created_at_ms bigint)`,
      `CREATE TABLE IF NOT EXISTS usernames (
        username text PRIMARY KEY,
        user_id text,
        claimed_at_ms bigint)`,
      `CREATE TABLE IF NOT EXISTS devices_by_id (
        device_id text PRIMARY KEY,
        user_id text,
        created_at_ms bigint)`,
      // One partition per user: its devices, oldest first, plus the version row at
      // created_at_ms = -1 that addDevice compares-and-sets in the same conditional batch.
      `CREATE TABLE IF NOT EXISTS user_devices (
        user_id text,
        created_at_ms bigint,
        device_id text,
        version bigint,
        name text,
        secret_hash text,
        revoked_at_ms bigint,
        push_id text,
        push_target text,
        PRIMARY KEY (user_id, created_at_ms, device_id))`,
      `CREATE TABLE IF NOT EXISTS link_codes (
        code_hash text PRIMARY KEY,
        user_id text,
        expires_at_ms bigint)`,
    ],
  },
  {
    id: "0003_key_directory",
    description: "the end-to-end encryption key directory: device keys and one-time prekeys",
    statements: [
      // Written only with LWT: the identity key is compared-and-set.
      `CREATE TABLE IF NOT EXISTS device_keys (
        device_id text PRIMARY KEY,
        user_id text,
        registration_id int,
        identity_key blob,
        signed_prekey_id bigint,
        signed_prekey blob,
        signed_prekey_signature blob,
        signed_prekey_at_ms bigint,
        kyber_prekey_id bigint,
        kyber_prekey blob,
        kyber_prekey_signature blob,
        kyber_prekey_at_ms bigint)`,
      // One partition per device and kind ("ec" or "kyber"), lowest id first. Rows are inserted
      // and deleted only with LWT, so a take (DELETE ... IF EXISTS) is won by one caller.
      `CREATE TABLE IF NOT EXISTS one_time_prekeys (
        device_id text,
        kind text,
        key_id bigint,
        public_key blob,
        signature blob,
        PRIMARY KEY ((device_id, kind), key_id))`,
    ],
  },
  {
    id: "0004_user_privacy",
    description: "users' privacy settings, one row per setting",
    statements: [
      // One row per setting (name "group_add", "direct_open", ...; value its audience), so a
      // setting added later needs no schema change and a change of one setting never overwrites
      // a concurrent change of another. Plain last-write-wins writes: nothing is compared.
      `CREATE TABLE IF NOT EXISTS user_privacy (
        user_id text,
        name text,
        value text,
        updated_at_ms bigint,
        PRIMARY KEY (user_id, name))`,
    ],
  },
  {
    id: "0005_device_floors",
    description: "where devices linked later start reading each conversation",
    statements: [
      // Partitioned by device: a device's sync reads all of its floors at once, and history
      // reads one row of that partition.
      `CREATE TABLE IF NOT EXISTS device_floors (
        device_id text,
        conversation_id text,
        floor_seq bigint,
        PRIMARY KEY (device_id, conversation_id))`,
    ],
  },
  {
    id: "0006_invites",
    description: "registration invites (SWITCHBOARD_REGISTRATION=invite)",
    statements: [
      // One partition per invite, written only with LWT: a use is taken by compare-and-set of
      // uses_left. Rows expire 30 days after the invite does (USING TTL). Listing scans the
      // table; operators make invites by hand, so it stays small.
      `CREATE TABLE IF NOT EXISTS invites (
        invite_id text PRIMARY KEY,
        token_hash text,
        uses_left int,
        max_uses int,
        created_at_ms bigint,
        expires_at_ms bigint,
        revoked_at_ms bigint,
        note text)`,
    ],
  },
  {
    id: "0007_conversation_clocks",
    description: "the highest write timestamp of a conversation's unfenced writes, for commits to sort after",
    statements: [
      // Written only without LWT, each write's value being its own write timestamp, so the cell
      // always holds the highest one written (last write wins by timestamp). Apart from log_heads
      // because a plain write there would create a head row the fence's INSERT ... IF NOT EXISTS
      // then refuses. See conversations/clock.ts.
      `CREATE TABLE IF NOT EXISTS conversation_clocks (
        conversation_id text PRIMARY KEY,
        plain_ts bigint)`,
    ],
  },
  {
    id: "0008_shard_leases",
    description: "sequencer replicas' heartbeats and the shard leases that failover moves",
    statements: [
      // Written with USING TTL only: a replica that stops writing disappears on its own.
      `CREATE TABLE IF NOT EXISTS sequencer_replicas (
        ordinal int PRIMARY KEY,
        incarnation text,
        started_at_ms bigint)`,
      // Written only by LWT on epoch (services/store/scylla/leases.ts); never expires, so the
      // epoch keeps growing across every move.
      `CREATE TABLE IF NOT EXISTS shard_leases (
        shard int PRIMARY KEY,
        owner int,
        epoch bigint,
        moved_at_ms bigint)`,
    ],
  },
  {
    id: "0009_user_suspensions",
    description: "operators' suspensions of users",
    statements: [
      // A table of its own rather than a column on users: ALTER TABLE ... ADD has no IF NOT EXISTS
      // on every database this engine runs on, and a migration must be safe to run again.
      `CREATE TABLE IF NOT EXISTS user_suspensions (
        user_id text PRIMARY KEY,
        suspended_at_ms bigint)`,
    ],
  },
  {
    id: "0010_blocks_and_reports",
    description: "users' blocks of other users, and their reports for operators",
    statements: [
      // One partition per blocking user: the gateways read a user's whole list at once.
      `CREATE TABLE IF NOT EXISTS user_blocks (
        user_id text,
        blocked_user_id text,
        blocked_at_ms bigint,
        PRIMARY KEY (user_id, blocked_user_id))`,
      // A report's body (JSON of the ReportRecord) by id; the two listings below hold ids only.
      `CREATE TABLE IF NOT EXISTS abuse_reports (
        report_id text PRIMARY KEY,
        body text)`,
      // Report ids sort by time, so each listing reads its partition in reverse.
      `CREATE TABLE IF NOT EXISTS abuse_reports_by_user (
        reported_user_id text,
        report_id text,
        PRIMARY KEY (reported_user_id, report_id))`,
      // Everyone's reports by UTC day (days since the epoch): reports are rate-limited per
      // reporter, so a day's partition stays small enough to read whole.
      `CREATE TABLE IF NOT EXISTS abuse_reports_by_day (
        day int,
        report_id text,
        PRIMARY KEY (day, report_id))`,
    ],
  },
  {
    id: "0011_disappearing_timers",
    description: "conversations' disappearing-message timers",
    statements: [
      // A table of its own rather than columns on conversations (ALTER TABLE ... ADD is not safe
      // to run twice); written only by the commits that change a timer, read with the conversation.
      `CREATE TABLE IF NOT EXISTS conversation_timers (
        conversation_id text PRIMARY KEY,
        disappearing_seconds int,
        admins_only boolean)`,
    ],
  },
  {
    id: "0012_conversation_pins",
    description: "the messages pinned in each conversation",
    statements: [
      // Beside conversations for the same reason as 0011. pins is the JSON of the record's
      // PinRecord list: at most 3 small objects, always read and written whole.
      `CREATE TABLE IF NOT EXISTS conversation_pins (
        conversation_id text PRIMARY KEY,
        pins text)`,
    ],
  },
  {
    id: "0013_user_avatars",
    description: "users' profile avatars (object id and length only)",
    statements: [
      // Written only by LWT (scylla/avatars.ts); a removal empties object_id, the row stays.
      `CREATE TABLE IF NOT EXISTS user_avatars (
        user_id text PRIMARY KEY,
        object_id text,
        length_bytes bigint,
        set_at_ms bigint)`,
    ],
  },
];

const BOOTSTRAP = [
  "CREATE TABLE IF NOT EXISTS schema_migrations (id text PRIMARY KEY, description text, applied_at_ms bigint)",
  "CREATE TABLE IF NOT EXISTS schema_migration_lock (name text PRIMARY KEY, owner text, acquired_at_ms bigint)",
];

/** The lock row's lifetime, in seconds: long enough for every migration, short after a crash. */
const LOCK_TTL_SECONDS = 300;

/** How long migrateScylla waits for another process's lock, in milliseconds. */
const LOCK_WAIT_MS = 10 * 60_000;

const KEYSPACE_NAME = /^[a-z][a-z0-9_]{0,47}$/;

/** Throws unless name is a keyspace name that needs no quoting (lower case, at most 48 chars). */
export function checkKeyspaceName(name: string): void {
  if (!KEYSPACE_NAME.test(name)) {
    throw new Error(
      `keyspace name "${name}" must be 1-48 characters of a-z, 0-9 and _, starting with a letter`,
    );
  }
}

/** The replication clause of CREATE KEYSPACE for the options (NetworkTopologyStrategy). */
export function replicationClause(options: ScyllaConnectionOptions): string | undefined {
  const map =
    options.replication ??
    (options.replicationFactor !== undefined
      ? { [options.localDataCenter]: options.replicationFactor }
      : undefined);
  if (map === undefined) return undefined;
  const entries = Object.entries(map);
  if (entries.length === 0) throw new Error("replication needs at least one datacenter");
  const parts = entries.map(([dc, rf]) => {
    if (!Number.isInteger(rf) || rf < 1)
      throw new Error(`replication factor of ${dc} must be a positive integer`);
    return `${cqlString(dc)}: ${rf}`;
  });
  return `{'class': 'NetworkTopologyStrategy', ${parts.join(", ")}}`;
}

function cqlString(value: string): string {
  return `'${value.replaceAll("'", "''")}'`;
}

/**
 * How DDL runs: unprepared, and allowed to take longer than a query's 12 s. A schema change waits
 * for the new schema to reach every node (and, on a loaded test node, for flushes); timing out
 * client-side would fail a migration whose statement then completes anyway.
 */
const DDL = { prepare: false, readTimeout: 120_000 };

/**
 * Creates the keyspace when options carry a replication setting, then applies every pending
 * migration in order. Returns the ids applied by this call (empty when the schema was current).
 */
export async function migrateScylla(options: ScyllaConnectionOptions, log?: Logger): Promise<string[]> {
  checkMigrations(MIGRATIONS);
  checkKeyspaceName(options.keyspace);
  const admin = new Client(clientOptions(options, false));
  try {
    await admin.connect();
    await ensureKeyspace(admin, options, log);
  } finally {
    await admin.shutdown();
  }

  const client = new Client(clientOptions(options, true));
  try {
    await client.connect();
    const cql = new Cql(client);
    for (const statement of BOOTSTRAP) await client.execute(statement, [], DDL);
    const owner = randomUUID();
    await acquireLock(cql, owner, log);
    try {
      const applied = new Set<string>();
      // A range scan cannot be SERIAL; the records were written by LWT, committed at a quorum, and
      // the previous lock holder finished before releasing the lock.
      for await (const row of cql.pages("SELECT id FROM schema_migrations", [])) {
        applied.add(row.get("id") as string);
      }
      const done: string[] = [];
      for (const migration of MIGRATIONS) {
        if (applied.has(migration.id)) continue;
        log?.info({ migration: migration.id }, "applying ScyllaDB migration");
        for (const statement of migration.statements) await client.execute(statement, [], DDL);
        await cql.lwt(
          "INSERT INTO schema_migrations (id, description, applied_at_ms) VALUES (?, ?, ?) IF NOT EXISTS",
          [migration.id, migration.description, Date.now()],
        );
        done.push(migration.id);
      }
      return done;
    } finally {
      await cql.lwt("DELETE FROM schema_migration_lock WHERE name = 'schema' IF owner = ?", [owner]);
    }
  } finally {
    await client.shutdown();
  }
}

/** Throws unless the ids are unique and strictly ascending. */
export function checkMigrations(migrations: readonly Migration[]): void {
  for (let i = 1; i < migrations.length; i++) {
    const before = migrations[i - 1]!.id;
    const id = migrations[i]!.id;
    if (!(before < id)) throw new Error(`migration ${id} does not sort after ${before}`);
  }
}

async function ensureKeyspace(admin: Client, options: ScyllaConnectionOptions, log?: Logger): Promise<void> {
  const replication = replicationClause(options);
  if (replication === undefined) {
    const found = await admin.execute(
      "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = ?",
      [options.keyspace],
      // system_schema is local to every node.
      { prepare: true, consistency: types.consistencies.localOne },
    );
    if (found.rowLength === 0) {
      throw new Error(
        `keyspace ${options.keyspace} does not exist; create it or pass a replication factor so that it is created`,
      );
    }
    return;
  }
  const create = `CREATE KEYSPACE IF NOT EXISTS ${options.keyspace} WITH replication = ${replication}`;
  try {
    // Tablets (the default for new keyspaces since ScyllaDB 6) do not support LWT, which the fence
    // and the account invariants rely on; older ScyllaDB and Cassandra reject the option instead.
    await admin.execute(`${create} AND tablets = {'enabled': false}`, [], DDL);
  } catch (err) {
    if (!/tablets/i.test(String(err))) throw err;
    log?.info("the cluster does not know tablets; creating the keyspace without the option");
    await admin.execute(create, [], DDL);
  }
}

async function acquireLock(cql: Cql, owner: string, log?: Logger): Promise<void> {
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (let delay = 100; ; delay = Math.min(delay * 2, 2_000)) {
    const result = await cql.lwt(
      `INSERT INTO schema_migration_lock (name, owner, acquired_at_ms) VALUES ('schema', ?, ?)
        IF NOT EXISTS USING TTL ${LOCK_TTL_SECONDS}`,
      [owner, Date.now()],
    );
    if (result.wasApplied()) return;
    if (Date.now() > deadline) {
      throw new Error("timed out waiting for another process's ScyllaDB migration lock");
    }
    log?.info("another process is migrating the ScyllaDB schema; waiting");
    await sleep(delay);
  }
}

/** Driver options for the engine's settings, with or without the keyspace bound. */
export function clientOptions(options: ScyllaConnectionOptions, withKeyspace: boolean): ClientOptions {
  return {
    contactPoints: options.contactPoints,
    localDataCenter: options.localDataCenter,
    ...(withKeyspace && { keyspace: options.keyspace }),
    ...(options.username !== undefined &&
      options.password !== undefined && {
        authProvider: new auth.PlainTextAuthProvider(options.username, options.password),
      }),
    queryOptions: {
      consistency: types.consistencies.localQuorum,
      serialConsistency: types.consistencies.localSerial,
    },
    // Back to a node that returns within seconds, not the driver's default (1 s doubling up to
    // 10 minutes, which kept processes away for 3-13 s after the node answered again).
    policies: { reconnection: new policies.reconnection.ExponentialReconnectionPolicy(200, 2000, true) },
  };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A row as the driver returns it. */
export type Row = types.Row;

/** How a statement is run. */
export interface RunOptions {
  /** Read at LOCAL_SERIAL, which also finishes any LWT left in progress on the partition. */
  serial?: boolean;
  /** The write timestamp, in microseconds since the Unix epoch (otherwise the driver's clock). */
  timestampMicros?: number;
  /** Rows per page for reads. */
  fetchSize?: number;
}

/** The default page size of paged reads. */
const FETCH_SIZE = 500;

/**
 * The one way both stores run CQL: prepared, LOCAL_QUORUM for reads and writes, LOCAL_SERIAL for
 * LWT and serial reads, explicit paging for reads that can be large.
 */
export class Cql {
  constructor(readonly client: Client) {}

  /** A read or unconditional write. */
  run(query: string, params: unknown[], options: RunOptions = {}): Promise<types.ResultSet> {
    return this.client.execute(query, params, this.queryOptions(options));
  }

  /** A conditional statement (LWT). */
  lwt(query: string, params: unknown[]): Promise<types.ResultSet> {
    return this.client.execute(query, params, this.queryOptions({}));
  }

  /** The first row of a read, or undefined. */
  async one(query: string, params: unknown[], options: RunOptions = {}): Promise<Row | undefined> {
    const result = await this.run(query, params, options);
    return result.rows?.[0];
  }

  /**
   * An unconditional batch. Every batch here is single-partition, which is atomic and isolated
   * without the batch log, so it goes unlogged.
   */
  batch(queries: { query: string; params: unknown[] }[], options: RunOptions = {}): Promise<types.ResultSet> {
    return this.client.batch(queries, { ...this.queryOptions(options), logged: false });
  }

  /** A conditional batch (one LWT): single-partition, as ScyllaDB and Cassandra require. */
  lwtBatch(queries: { query: string; params: unknown[] }[]): Promise<types.ResultSet> {
    return this.client.batch(queries, this.queryOptions({}));
  }

  /** Every row of a read, fetched page by page. */
  async *pages(query: string, params: unknown[], options: RunOptions = {}): AsyncGenerator<Row> {
    let pageState: string | undefined;
    do {
      const result = await this.client.execute(query, params, {
        ...this.queryOptions(options),
        fetchSize: options.fetchSize ?? FETCH_SIZE,
        ...(pageState !== undefined && { pageState }),
      });
      yield* result.rows ?? [];
      pageState = result.pageState ?? undefined;
    } while (pageState !== undefined);
  }

  private queryOptions(options: RunOptions): QueryOptions {
    return {
      prepare: true,
      consistency: options.serial ? types.consistencies.localSerial : types.consistencies.localQuorum,
      serialConsistency: types.consistencies.localSerial,
      ...(options.timestampMicros !== undefined && { timestamp: options.timestampMicros }),
    };
  }
}

/**
 * An int64 column as a number. The driver returns bigint columns as types.Long; null (an absent
 * cell) reads as fallback. Values past 2^53 are refused rather than silently rounded.
 */
export function num(value: unknown, fallback = 0): number {
  if (value === null || value === undefined) return fallback;
  if (typeof value === "number") return value;
  if (typeof value === "bigint") return safe(Number(value), String(value));
  if (value instanceof types.Long) return safe(value.toNumber(), value.toString());
  throw new TypeError(`expected an int64 column, got ${typeof value}`);
}

function safe(n: number, text: string): number {
  if (!Number.isSafeInteger(n)) throw new RangeError(`int64 value ${text} exceeds the safe integer range`);
  return n;
}

/** A number as an int64 parameter. */
export function long(value: number): types.Long {
  if (!Number.isSafeInteger(value)) throw new RangeError(`${value} is not a safe integer`);
  return types.Long.fromNumber(value);
}
