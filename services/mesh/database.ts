import { spawn } from "node:child_process";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { environment } from "../common/config.js";
import { type CassandraServer, javaProblem, startCassandra } from "./cassandra.js";
import { root } from "./process-control.js";

/** The store settings `switchboard mesh --store scylla` gives every process, and the node it started. */
export interface MeshDatabase {
  /** SWITCHBOARD_STORE, and SCYLLA_CONTACT_POINTS, _LOCAL_DC and _REPLICATION_FACTOR when the node is local. */
  settings: Record<string, string>;
  /** The local Cassandra node, when the mesh started one. */
  cassandra: CassandraServer | undefined;
}

/**
 * Starts a local Apache Cassandra 5.0 node with its files in `dir`/cassandra unless `env` names a
 * cluster in SCYLLA_CONTACT_POINTS, then migrates the schema once (one writer of DDL instead of
 * every process at once, which is what Cassandra-family databases handle worst).
 */
export async function startMeshDatabase(
  dir: string,
  env: Record<string, string>,
  say: (line: string) => void,
): Promise<MeshDatabase> {
  const settings: Record<string, string> = { SWITCHBOARD_STORE: "scylla" };
  let cassandra: CassandraServer | undefined;
  if (!env.SCYLLA_CONTACT_POINTS) {
    const problem = javaProblem();
    if (problem !== undefined) {
      throw new Error(
        `--store scylla starts a local Cassandra node, but ${problem}; or set SCYLLA_CONTACT_POINTS to a running cluster`,
      );
    }
    const home = join(dir, "cassandra");
    await mkdir(home, { recursive: true });
    cassandra = await startCassandra({ dir: home, log: say });
    settings.SCYLLA_CONTACT_POINTS = cassandra.contactPoint;
    settings.SCYLLA_LOCAL_DC = cassandra.localDataCenter;
    // One node holds one copy; migrate creates the keyspace with it.
    settings.SCYLLA_REPLICATION_FACTOR = env.SCYLLA_REPLICATION_FACTOR ?? "1";
  }
  try {
    await migrate({ ...env, ...settings }, say);
  } catch (err) {
    await cassandra?.stop("SIGTERM");
    throw err;
  }
  return { settings, cassandra };
}

/** Runs `switchboard migrate` with these settings; throws with its output if it fails. */
async function migrate(settings: Record<string, string>, say: (line: string) => void): Promise<void> {
  const child = spawn(process.execPath, [join(root, "bin/switchboard.js"), "migrate"], {
    cwd: root,
    env: { ...environment(), ...settings },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  const collect = (chunk: string): void => {
    output += chunk;
  };
  child.stdout.setEncoding("utf8").on("data", collect);
  child.stderr.setEncoding("utf8").on("data", collect);
  const code = await new Promise<number | null>((resolve) => child.once("exit", (c) => resolve(c)));
  if (code !== 0) throw new Error(`switchboard migrate failed (exit ${code}):\n${output.slice(-4000)}`);
  say(`schema: ${output.trim().split("\n").at(-1)}`);
}
