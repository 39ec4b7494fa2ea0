/**
 * A scratch keyspace on the test database for a suite of the ScyllaDB engine. test/run.mjs starts
 * an Apache Cassandra node when a selected file uses this helper (or reads SCYLLA_CONTACT_POINTS)
 * and passes its address in SCYLLA_CONTACT_POINTS.
 */
import { randomBytes } from "node:crypto";
import { Client } from "cassandra-driver";
import { loadScyllaConfig } from "../../services/common/config.js";
import type { ScyllaOptions } from "../../services/store/scylla/engine.js";
import { clientOptions, migrateScylla } from "../../services/store/scylla/schema.js";

/** Schema changes on a loaded one-node test cluster can outlast the driver's 12 s default. */
const DDL_TIMEOUT_MS = 120_000;

const SKIPPED =
  "SCYLLA_CONTACT_POINTS is not set; the ScyllaDB suites did not run " +
  "(node test/run.mjs starts Apache Cassandra 5.0 when Java 17 and Maven are installed)";

/**
 * The `skip` of a suite that needs the database: the reason when there is none, else false.
 * Under CI=true it is never skipped, so a missing database fails (in scratchKeyspace) instead.
 */
export const SCYLLA_SKIP: string | false =
  process.env.SCYLLA_CONTACT_POINTS || process.env.CI === "true" ? false : SKIPPED;
if (SCYLLA_SKIP) console.log(SKIPPED);

/** A keyspace of its own, migrated, and how to drop it. */
export interface ScratchKeyspace {
  /** The engine's options for it: the test database's settings, this keyspace, the extras given. */
  options: ScyllaOptions;
  /** Drops the keyspace (with a deadline fit for a loaded one-node cluster). */
  drop(): Promise<void>;
}

/** Creates and migrates a fresh keyspace named `switchboard_<name>_<random>`. */
export async function scratchKeyspace(
  name: string,
  extra: Partial<ScyllaOptions> = {},
): Promise<ScratchKeyspace> {
  if (!process.env.SCYLLA_CONTACT_POINTS) throw new Error(`CI=true requires a CQL database: ${SKIPPED}`);
  const fromEnv = loadScyllaConfig(process.env);
  const options: ScyllaOptions = {
    ...fromEnv,
    keyspace: `switchboard_${name}_${randomBytes(6).toString("hex")}`,
    replicationFactor: fromEnv.replicationFactor ?? 1,
    ...extra,
  };
  await migrateScylla(options);
  return {
    options,
    drop: async () => {
      const admin = new Client(clientOptions(options, false));
      try {
        await admin.execute(`DROP KEYSPACE IF EXISTS ${options.keyspace}`, [], {
          readTimeout: DDL_TIMEOUT_MS,
        });
      } finally {
        await admin.shutdown();
      }
    },
  };
}

/** The settings that put a Switchboard server's store on this keyspace of the test database. */
export function scyllaServerEnv(keyspace: ScratchKeyspace): Record<string, string> {
  return {
    SWITCHBOARD_STORE: "scylla",
    SCYLLA_CONTACT_POINTS: process.env.SCYLLA_CONTACT_POINTS ?? "",
    SCYLLA_LOCAL_DC: keyspace.options.localDataCenter,
    SCYLLA_KEYSPACE: keyspace.options.keyspace,
    SCYLLA_REPLICATION_FACTOR: "1",
  };
}

/**
 * The seqs of a conversation's first bucket still stored in `log_entries`, read until `seq` is
 * no longer among them or 10 s pass. An entry row's TTL runs about a second past the entry's
 * expiry (services/store/scylla/conversations/layout.ts: the database truncates TTLs to the
 * second), so a row goes within about two seconds of being served as expired.
 */
export async function storedSeqsOnceGone(
  options: ScyllaOptions,
  conversationId: string,
  seq: number,
): Promise<number[]> {
  const cql = new Client(clientOptions(options, true));
  try {
    const read = async () =>
      (
        await cql.execute(
          "SELECT seq FROM log_entries WHERE conversation_id = ? AND bucket = 0",
          [conversationId],
          {
            prepare: true,
          },
        )
      ).rows.map((r) => Number(r.get("seq")));
    const deadline = Date.now() + 10_000;
    let stored = await read();
    while (stored.includes(seq) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 200));
      stored = await read();
    }
    return stored;
  } finally {
    await cql.shutdown();
  }
}
