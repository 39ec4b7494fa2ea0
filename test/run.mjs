#!/usr/bin/env node
// Runs every *.test.ts under the source folders with node's test runner (through tsx).
// Node 20's runner does not expand globs, so the files are found here.
//
// The suites that need NATS and Redis share one nats-server and one redis-server. Unless
// SWITCHBOARD_TEST_NATS_URL / SWITCHBOARD_TEST_REDIS_URL point at servers already running, this
// runner starts its own on free ports (the same code `switchboard mesh` uses), hands their URLs to
// the test processes, and stops them by PID when the tests end, whatever the outcome.
import { spawn, spawnSync } from "node:child_process";
import { readdirSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { register } from "tsx/esm/api";

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
const { startNatsServer, startRedisServer } = await import("../services/mesh/servers.ts");

const installed = (binary) => spawnSync(binary, ["--version"], { stdio: "ignore" }).error === undefined;

/** Starts the shared backends the environment does not already name; returns how to stop them. */
async function startSharedBackends(env) {
  const owned = [];
  const wanted = [
    ["SWITCHBOARD_TEST_NATS_URL", "nats-server", startNatsServer],
    ["SWITCHBOARD_TEST_REDIS_URL", "redis-server", startRedisServer],
  ];
  for (const [variable, binary, start] of wanted) {
    if (env[variable] !== undefined) continue;
    // Without the binary the suites that need it skip (or, under CI=true, fail naming the package).
    if (!installed(binary)) continue;
    const server = await start();
    owned.push(server);
    env[variable] = server.url;
    console.log(`# ${binary} for the tests: ${server.url} (pid ${server.pid})`);
  }
  return () => Promise.all(owned.map((s) => s.stop("SIGTERM")));
}

const env = { ...process.env };
const stopBackends = await startSharedBackends(env);
const child = spawn(
  process.execPath,
  ["--import", "tsx", "--test", "--test-concurrency=2", "--test-timeout=180000", ...files],
  { cwd: root, stdio: "inherit", env },
);
// Ctrl-C reaches the test process through the terminal; the backends are stopped once it exits.
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => child.kill(signal));
const [code, signal] = await new Promise((resolve) => child.once("exit", (c, s) => resolve([c, s])));
await stopBackends();
process.exit(code ?? (signal ? 1 : 0));
