import { spawn, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { closeSync, openSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";
import { Client } from "cassandra-driver";
import { freePort } from "./servers.js";

/**
 * A local Apache Cassandra 5.0 node, the CQL and lightweight-transaction compatible stand-in for
 * ScyllaDB that the tests and `switchboard mesh --store scylla` use. Its jars come from Maven
 * Central (org.apache.cassandra:cassandra-all and its runtime dependencies), fetched once with
 * Maven's strict checksums into ~/.cache/switchboard/cassandra-<version>/ and hashed there; it runs
 * on the machine's Java 17 as one node listening on 127.0.0.1 on free ports, its files in a
 * temporary directory.
 */

/** The cassandra-all release the tests run against. */
export const CASSANDRA_VERSION = "5.0.9";

/** Written after a complete fetch: the SHA-256 of every jar, checked again before each start. */
const MARKER = "complete.sha256";

/** A Cassandra node this program owns. */
export interface CassandraServer {
  /** "127.0.0.1:<native port>", what SCYLLA_CONTACT_POINTS takes. */
  contactPoint: string;
  /** The CQL native protocol port. */
  port: number;
  /** The inter-node (gossip) port; nothing else connects to it, but a restart must reuse it. */
  storagePort: number;
  /** The datacenter the node reports (SCYLLA_LOCAL_DC). */
  localDataCenter: string;
  pid: number;
  /** Data, commit log, hints, saved caches, the generated configuration and `output.log`. */
  dir: string;
  /**
   * Sends the signal (SIGTERM unless told; SIGKILL is a crash) and waits for the exit, escalating
   * to SIGKILL after 20 s. Removes `dir` if this call created it (not when given one to restart).
   */
  stop(signal?: NodeJS.Signals): Promise<void>;
}

export interface StartCassandraOptions {
  /** A directory of an earlier node to start again on its data (with its ports); kept on stop. */
  dir?: string;
  port?: number;
  storagePort?: number;
  /** How long to wait for CQL to answer (default 120 s). */
  timeoutMs?: number;
  /** Progress lines (the fetch, the start); silent by default. */
  log?: (line: string) => void;
  version?: string;
}

/** Where the jars of a version are cached (SWITCHBOARD_CACHE_DIR overrides ~/.cache/switchboard). */
export function cassandraHome(version = CASSANDRA_VERSION): string {
  const cache = process.env.SWITCHBOARD_CACHE_DIR ?? join(homedir(), ".cache", "switchboard");
  return join(cache, `cassandra-${version}`);
}

/** Why this machine cannot run Cassandra 5.0 (no Java 17), or undefined when it can. */
export function javaProblem(): string | undefined {
  const run = spawnSync("java", ["-version"], { encoding: "utf8" });
  if (run.error !== undefined || run.status !== 0)
    return "java is not installed: Cassandra 5.0 needs Java 17 (Debian: apt-get install openjdk-17-jre-headless)";
  const match = /version "(\d+)/.exec(run.stderr);
  // Cassandra 5.0 supports Java 11 and 17; the JVM options below are those of its jvm17-server.options.
  if (match?.[1] !== "17")
    return `java is version ${match?.[1] ?? "unknown"}: Cassandra 5.0 is run here on Java 17 (openjdk-17-jre-headless)`;
  return undefined;
}

async function sha256(path: string): Promise<string> {
  return createHash("sha256")
    .update(await readFile(path))
    .digest("hex");
}

/** The jar directory of a complete fetch, or undefined when absent, incomplete or altered. */
async function verifiedLib(home: string): Promise<string | undefined> {
  let manifest: string;
  try {
    manifest = await readFile(join(home, MARKER), "utf8");
  } catch {
    return undefined;
  }
  const lib = join(home, "lib");
  const lines = manifest.split("\n").filter((l) => l !== "");
  const jars = (await readdir(lib)).filter((n) => n.endsWith(".jar"));
  if (lines.length === 0 || jars.length !== lines.length) return undefined;
  for (const line of lines) {
    const [hash, name] = line.split("  ");
    if (name === undefined || (await sha256(join(lib, name)).catch(() => "")) !== hash) return undefined;
  }
  return lib;
}

const pom = (version: string): string => `<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>switchboard.test</groupId>
  <artifactId>cassandra-fetch</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>${version}</version>
    </dependency>
  </dependencies>
</project>
`;

/**
 * Fetches cassandra-all and its runtime dependencies with Maven (`-C`: a checksum mismatch fails
 * the fetch) into the cache, once; later calls only re-hash the jars against the manifest written
 * after the first complete fetch. Returns the jar directory.
 */
export async function fetchCassandra(
  options: { version?: string; log?: (line: string) => void } = {},
): Promise<string> {
  const version = options.version ?? CASSANDRA_VERSION;
  const home = cassandraHome(version);
  const cached = await verifiedLib(home);
  if (cached !== undefined) return cached;
  // Fetched into a directory of its own and renamed into place, so a crash or a concurrent fetch
  // never leaves a half-filled cache that looks complete.
  await mkdir(join(home, ".."), { recursive: true });
  const staging = `${home}.partial-${process.pid}-${randomBytes(4).toString("hex")}`;
  await mkdir(staging, { recursive: true });
  try {
    await writeFile(join(staging, "pom.xml"), pom(version));
    options.log?.(`fetching org.apache.cassandra:cassandra-all:${version} from Maven Central into ${home}`);
    const mvn = spawnSync(
      "mvn",
      [
        "-q",
        "-B",
        "-C",
        "-f",
        join(staging, "pom.xml"),
        "org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies",
        "-DincludeScope=runtime",
        `-DoutputDirectory=${join(staging, "lib")}`,
      ],
      { encoding: "utf8", maxBuffer: 64 * 1024 * 1024 },
    );
    if (mvn.error !== undefined)
      throw new Error(
        `cannot run mvn (${mvn.error.message}): fetching Cassandra needs Maven (Debian: apt-get install maven)`,
      );
    if (mvn.status !== 0)
      throw new Error(
        `mvn could not fetch cassandra-all ${version}:\n${`${mvn.stdout}${mvn.stderr}`.slice(-4000)}`,
      );
    const jars = (await readdir(join(staging, "lib"))).filter((n) => n.endsWith(".jar")).sort();
    if (!jars.includes(`cassandra-all-${version}.jar`))
      throw new Error(`mvn finished without cassandra-all-${version}.jar in ${staging}/lib`);
    const lines = await Promise.all(jars.map(async (n) => `${await sha256(join(staging, "lib", n))}  ${n}`));
    await writeFile(join(staging, MARKER), `${lines.join("\n")}\n`);
    await rm(home, { recursive: true, force: true });
    await rename(staging, home).catch(async (err: unknown) => {
      // Another process finished first: use its fetch if it is complete.
      if ((await verifiedLib(home)) === undefined) throw err;
    });
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
  const lib = await verifiedLib(home);
  if (lib === undefined)
    throw new Error(`the Cassandra cache ${home} does not match its manifest after the fetch`);
  return lib;
}

/**
 * A one-node cluster that starts in seconds: one token, no auth, no gossip waits, no JMX.
 * `commitlog_sync: batch`: a write is acknowledged only after its commit log sync. With the default
 * (periodic, 10 s) replay stops at the last sync marker, so a SIGKILLed node came back without
 * writes it had acknowledged (8 of 300 in a test here), and a test that kills the database would
 * blame the application for the database's setting; one node has no replica to cover for it.
 * `auto_snapshot: false`: tests drop a keyspace each, and a snapshot per drop only costs time.
 */
function cassandraYaml(dir: string, port: number, storagePort: number): string {
  return `cluster_name: switchboard_test
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
auto_bootstrap: false
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
role_manager: CassandraRoleManager
network_authorizer: AllowAllNetworkAuthorizer
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:${storagePort}"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: ${storagePort}
ssl_storage_port: ${storagePort}
native_transport_port: ${port}
start_native_transport: true
endpoint_snitch: SimpleSnitch
data_file_directories:
  - ${join(dir, "data")}
commitlog_directory: ${join(dir, "commitlog")}
hints_directory: ${join(dir, "hints")}
saved_caches_directory: ${join(dir, "saved_caches")}
cdc_raw_directory: ${join(dir, "cdc_raw")}
commitlog_sync: batch
commitlog_segment_size: 32MiB
disk_failure_policy: stop
commit_failure_policy: stop
concurrent_reads: 8
concurrent_writes: 8
concurrent_counter_writes: 8
concurrent_materialized_view_writes: 8
concurrent_compactors: 1
memtable_heap_space: 128MiB
memtable_offheap_space: 128MiB
key_cache_size: 16MiB
counter_cache_size: 0MiB
prepared_statements_cache_size: 16MiB
read_request_timeout: 10000ms
range_request_timeout: 10000ms
write_request_timeout: 5000ms
cas_contention_timeout: 5000ms
truncate_request_timeout: 60000ms
request_timeout: 10000ms
materialized_views_enabled: false
auto_snapshot: false
sasi_indexes_enabled: false
`;
}

const LOGBACK = `<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT" /></root>
  <logger name="org.apache.cassandra" level="INFO" />
</configuration>
`;

/** The JPMS options of Cassandra 5.0's conf/jvm17-server.options, without which it cannot start on 17. */
const JVM17_OPTIONS = [
  "-Djdk.attach.allowAttachSelf=true",
  "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
  "--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
  "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
  "--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED",
  "--add-exports=java.sql/java.sql=ALL-UNNAMED",
  "--add-exports=java.base/java.lang.ref=ALL-UNNAMED",
  "--add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED",
  "--add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
  "--add-exports=jdk.attach/sun.tools.attach=ALL-UNNAMED",
  "--add-opens=java.base/java.lang.module=ALL-UNNAMED",
  "--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED",
  "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
  "--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED",
  "--add-opens=java.base/jdk.internal.math=ALL-UNNAMED",
  "--add-opens=java.base/jdk.internal.module=ALL-UNNAMED",
  "--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED",
  "--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED",
  "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
  "--add-opens=java.base/java.io=ALL-UNNAMED",
  "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
  "--add-opens=jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
  "--add-opens=java.base/java.lang=ALL-UNNAMED",
  "--add-opens=java.base/java.util=ALL-UNNAMED",
  "-Dio.netty.tryReflectionSetAccessible=true",
  "-Dio.netty.allocator.useCacheForAllThreads=true",
  "-Dio.netty.allocator.maxOrder=11",
];

async function tail(path: string, lines = 40): Promise<string> {
  const text = await readFile(path, "utf8").catch(() => "");
  return text.split("\n").slice(-lines).join("\n");
}

/** The datacenter the node reports once it answers CQL, or undefined while it does not. */
async function askDataCenter(contactPoint: string): Promise<string | undefined> {
  // The driver needs a datacenter name to connect; any is fine for reading system.local.
  const client = new Client({
    contactPoints: [contactPoint],
    localDataCenter: "datacenter1",
    socketOptions: { connectTimeout: 2000, readTimeout: 5000 },
    pooling: { warmup: false },
  });
  try {
    await client.connect();
    const result = await client.execute("SELECT data_center FROM system.local");
    return String(result.first()?.get("data_center") ?? "datacenter1");
  } catch {
    return undefined;
  } finally {
    await client.shutdown().catch(() => {});
  }
}

/**
 * Starts one Cassandra node (fetching its jars first if the cache lacks them) and waits until it
 * answers CQL. On failure the node is stopped and the error carries the tail of its log.
 */
export async function startCassandra(options: StartCassandraOptions = {}): Promise<CassandraServer> {
  const problem = javaProblem();
  if (problem !== undefined) throw new Error(problem);
  const lib = await fetchCassandra(options);
  const owned = options.dir === undefined;
  const dir = options.dir ?? (await mkdtemp(join(tmpdir(), "sb-cassandra-")));
  const port = options.port ?? (await freePort());
  let storagePort = options.storagePort ?? (await freePort());
  while (storagePort === port) storagePort = await freePort();
  await writeFile(join(dir, "cassandra.yaml"), cassandraYaml(dir, port, storagePort));
  await writeFile(join(dir, "logback.xml"), LOGBACK);
  const outputPath = join(dir, "output.log");
  const output = openSync(outputPath, "a");
  const started = Date.now();
  const child = spawn(
    "java",
    [
      "-Xms512m",
      "-Xmx1g",
      "-Xss512k",
      "-XX:+UseG1GC",
      "-XX:+HeapDumpOnOutOfMemoryError",
      `-XX:HeapDumpPath=${dir}`,
      ...JVM17_OPTIONS,
      `-Dcassandra.config=file://${join(dir, "cassandra.yaml")}`,
      `-Dlogback.configurationFile=file://${join(dir, "logback.xml")}`,
      `-Dcassandra.logdir=${dir}`,
      `-Dcassandra.storagedir=${dir}`,
      "-Dcassandra-foreground=yes",
      // No JMX: without cassandra.jmx.local.port or .remote.port the daemon opens no JMX port.
      // A fresh one-node cluster has nobody to gossip with: skip the waits meant for real rings.
      "-Dcassandra.skip_wait_for_gossip_to_settle=0",
      "-Dcassandra.ring_delay_ms=100",
      "-Dcassandra.superuser_setup_delay_ms=0",
      "-cp",
      `${lib}/*`,
      "org.apache.cassandra.service.CassandraDaemon",
    ],
    { stdio: ["ignore", output, output] },
  );
  closeSync(output);
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  await new Promise<void>((resolve, reject) => {
    child.once("spawn", () => resolve());
    child.once("error", (err) => reject(new Error(`cannot run java (${err.message})`, { cause: err })));
  });
  const pid = child.pid;
  if (pid === undefined) throw new Error("java started without a PID");
  const running = (): boolean => child.exitCode === null && child.signalCode === null;
  const stop = async (signal: NodeJS.Signals = "SIGTERM"): Promise<void> => {
    if (running()) process.kill(pid, signal);
    const timer = setTimeout(() => {
      if (running()) process.kill(pid, "SIGKILL");
    }, 20_000);
    await exited;
    clearTimeout(timer);
    if (owned) await rm(dir, { recursive: true, force: true });
  };
  const contactPoint = `127.0.0.1:${port}`;
  const deadline = started + (options.timeoutMs ?? 120_000);
  for (;;) {
    if (!running()) {
      const log = await tail(outputPath);
      await stop();
      throw new Error(
        `Cassandra exited with ${child.exitCode ?? child.signalCode} before answering CQL:\n${log}`,
      );
    }
    const localDataCenter = await askDataCenter(contactPoint);
    if (localDataCenter !== undefined) {
      options.log?.(
        `Cassandra ${options.version ?? CASSANDRA_VERSION} answers CQL at ${contactPoint} after ${Date.now() - started} ms`,
      );
      return { contactPoint, port, storagePort, localDataCenter, pid, dir, stop };
    }
    if (Date.now() > deadline) {
      const log = await tail(outputPath);
      await stop("SIGKILL");
      throw new Error(
        `Cassandra did not answer CQL at ${contactPoint} within ${options.timeoutMs ?? 120_000} ms:\n${log}`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}
