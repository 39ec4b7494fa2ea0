#!/usr/bin/env node
// Runs every *.test.ts under the source folders with node's test runner (through tsx).
// Node 20's runner does not expand globs, so the files are found here.
//
// The suites that need NATS and Redis share one nats-server and one redis-server. Unless
// SWITCHBOARD_TEST_NATS_URL / SWITCHBOARD_TEST_REDIS_URL point at servers already running, this
// runner starts its own on free ports (the same code `switchboard mesh` uses), hands their URLs to
// the test processes, and stops them by PID when the tests end, whatever the outcome.
//
// The suites that need a CQL database (they read SCYLLA_CONTACT_POINTS) share one Apache Cassandra
// 5.0 node (services/mesh/cassandra.ts: jars fetched once from Maven Central into
// ~/.cache/switchboard, run on Java 17, on free ports). It is started only when a selected test
// file reads process.env.SCYLLA_CONTACT_POINTS (or uses a test helper that does) and the
// environment does not already name a database. Under CI=true a database that cannot be started
// fails the run; elsewhere the suites skip and say why.
import { spawn, spawnSync } from "node:child_process";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { rm } from "node:fs/promises";
import { join, relative } from "node:path";
import { register } from "tsx/esm/api";
import { buildIsCurrent } from "../bin/build-state.js";

const root = new URL("..", import.meta.url).pathname;
const folders = ["services", "sdk", "test", "bench"];
const filter = process.argv.slice(2);

function walk(dir, out) {
  let names;
  try {
    names = readdirSync(dir);
  } catch {
    return out;
  }
  for (const name of names) {
    if (name === "node_modules") continue;
    const path = join(dir, name);
    if (statSync(path).isDirectory()) walk(path, out);
    else if (name.endsWith(".test.ts")) out.push(relative(root, path));
  }
  return out;
}

let files = folders.flatMap((f) => walk(join(root, f), [])).sort();
if (filter.length > 0) files = files.filter((f) => filter.some((pattern) => f.includes(pattern)));
if (files.length === 0) {
  console.error("no test files matched");
  process.exit(1);
}

register();
const { natsServerBinary, startNatsServer, startRedisServer } = await import("../services/mesh/servers.ts");
const { CASSANDRA_VERSION, javaProblem, startCassandra } = await import("../services/mesh/cassandra.ts");

const installed = (binary) => spawnSync(binary, ["--version"], { stdio: "ignore" }).error === undefined;
// nats-server: the pinned release built into the tool cache when there is one, else PATH's.
const natsAvailable = () => natsServerBinary() !== undefined;

/** Starts the shared backends the environment does not already name; returns how to stop them. */
async function startSharedBackends(env) {
  const owned = [];
  const wanted = [
    ["SWITCHBOARD_TEST_NATS_URL", "nats-server", startNatsServer, natsAvailable],
    ["SWITCHBOARD_TEST_REDIS_URL", "redis-server", startRedisServer, () => installed("redis-server")],
  ];
  for (const [variable, binary, start, available] of wanted) {
    if (env[variable] !== undefined) continue;
    // Without the binary the suites that need it skip (or, under CI=true, fail naming the package).
    if (!available()) continue;
    const server = await start();
    owned.push(server);
    env[variable] = server.url;
    const version = server.version === undefined ? "" : ` ${server.version}`;
    console.log(`# ${binary}${version} for the tests: ${server.url} (pid ${server.pid})`);
  }
  if (env.SCYLLA_CONTACT_POINTS === undefined && files.some(readsScylla)) {
    // Under CI=true a missing database throws: stop what was started before giving up.
    const cassandra = await startSharedCassandra().catch(async (err) => {
      await Promise.all(owned.map((s) => s.stop("SIGTERM")));
      throw err;
    });
    if (cassandra !== undefined) {
      owned.push(cassandra);
      env.SCYLLA_CONTACT_POINTS = cassandra.contactPoint;
      env.SCYLLA_LOCAL_DC = cassandra.localDataCenter;
    }
  }
  // A nats-server's JetStream store is this run's own temporary directory: removed with it.
  return () =>
    Promise.all(
      owned.map(async (s) => {
        await s.stop("SIGTERM");
        if (s.storeDir !== undefined) await rm(s.storeDir, { recursive: true, force: true });
      }),
    );
}

/**
 * True if a test file talks to the CQL database, so the run needs one: it reads
 * `process.env.SCYLLA_CONTACT_POINTS` or uses test/helpers/scylla.ts, scylla-mesh.ts or engine-server.ts (tests
 * that only parse the variable do not start Cassandra).
 */
function readsScylla(file) {
  const text = readFileSync(join(root, file), "utf8");
  return (
    text.includes("process.env.SCYLLA_CONTACT_POINTS") ||
    text.includes("helpers/scylla.js") ||
    text.includes("helpers/scylla-mesh.js") ||
    text.includes("helpers/engine-server.js")
  );
}

/** One Cassandra node for the run, or undefined (with the reason printed) when this machine has none. */
async function startSharedCassandra() {
  const ci = process.env.CI === "true";
  const problem = javaProblem();
  const howTo =
    "the CQL suites skip; install Java 17 and Maven (Debian: openjdk-17-jre-headless maven) and this " +
    `runner fetches Apache Cassandra ${CASSANDRA_VERSION} once, or set SCYLLA_CONTACT_POINTS to a running ` +
    "ScyllaDB or Cassandra";
  if (problem !== undefined) {
    if (ci) throw new Error(`CI=true needs a CQL database for the tests: ${problem}`);
    console.log(`# no CQL database for the tests (${problem}): ${howTo}`);
    return undefined;
  }
  const started = Date.now();
  try {
    const server = await startCassandra({ log: (line) => console.log(`# ${line}`) });
    console.log(
      `# cassandra ${CASSANDRA_VERSION} for the tests: ${server.contactPoint} (pid ${server.pid}, ` +
        `datacenter ${server.localDataCenter}, up in ${Date.now() - started} ms)`,
    );
    return server;
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    if (ci)
      throw new Error(
        `CI=true needs a CQL database for the tests, and Cassandra could not start: ${message}`,
      );
    console.log(`# Cassandra could not start (${message}): ${howTo}`);
    return undefined;
  }
}

// Every server a test starts runs bin/switchboard.js: the build in dist/ when it is current, the
// sources through tsx otherwise, which compiles each module again in every process and makes a
// server start (and a mesh process restart) take seconds more. The whole suite (and CI) builds
// first, so the tests run the server as deployed; a run of chosen files leaves that to the caller.
if (!buildIsCurrent(root)) {
  if (filter.length === 0 || process.env.CI === "true") {
    const started = Date.now();
    const built = spawnSync(process.execPath, [join(root, "scripts/build.mjs")], {
      cwd: root,
      stdio: "inherit",
    });
    if (built.status !== 0) {
      console.error("# npm run build failed: the tests need the server compiled");
      process.exit(1);
    }
    console.log(`# compiled the server for the tests (npm run build) in ${Date.now() - started} ms`);
  } else {
    console.log(
      "# dist/ is older than the sources: servers the tests start run them through tsx (npm run build to compile)",
    );
  }
}

const env = { ...process.env };
const stopBackends = await startSharedBackends(env).catch((err) => {
  console.error(`# ${err instanceof Error ? err.message : err}`);
  process.exit(1);
});
const child = spawn(
  process.execPath,
  [
    "--import",
    "tsx",
    "--test",
    "--test-concurrency=2",
    // The budget of every test and of every test file as a whole (Node applies it to each file's
    // process too): the mesh's fault matrix takes about 140 s alone and passed 180 s on a loaded
    // CI machine with all its cases passing. A file that hangs is still stopped, and what it
    // leaves running is killed below.
    "--test-timeout=300000",
    // TAP as before, then a list of what failed, so the tail of a long log names it.
    "--test-reporter=tap",
    "--test-reporter-destination=stdout",
    `--test-reporter=${join(root, "test/failures-reporter.mjs")}`,
    "--test-reporter-destination=stdout",
    ...files,
  ],
  // Its own process group, which every test file and every server a test starts inherits: what a
  // file leaves running (one cut short by its timeout skips its after hooks) is found and stopped
  // below, instead of loading the machine after the run, or the next run.
  { cwd: root, stdio: "inherit", env, detached: true },
);
const signalTests = (signal) => {
  try {
    process.kill(-child.pid, signal);
  } catch (err) {
    if (err.code !== "ESRCH") throw err;
  }
};
// The group is not the terminal's: Ctrl-C reaches this runner, which passes it on.
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => signalTests(signal));
const [code, signal] = await new Promise((resolve) => child.once("exit", (c, s) => resolve([c, s])));
stopLeftovers();
await stopBackends();
process.exit(code ?? (signal ? 1 : 0));

/** Kills what is left in the tests' process group once the test process has exited, naming it. */
function stopLeftovers() {
  const listed = spawnSync("ps", ["-o", "pid=,stat=,args=", "-g", String(child.pid)], { encoding: "utf8" });
  // A zombie (state Z) has already exited; only its parent's wait is missing.
  const left = (listed.stdout ?? "")
    .split("\n")
    .map((line) => line.trim().split(/\s+/))
    .filter(([pid, stat]) => pid !== undefined && pid !== "" && !stat?.startsWith("Z"))
    .map(([pid, , ...args]) => `${pid} ${args.join(" ")}`);
  if (left.length > 0) {
    console.log(`# stopping ${left.length} process(es) the tests left running:`);
    for (const line of left) console.log(`#   ${line.slice(0, 160)}`);
  }
  signalTests("SIGKILL");
}
