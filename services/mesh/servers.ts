import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cachedToolPath, installHint, onPath } from "./go-tools.js";

/**
 * Local nats-server and redis-server processes for the one-machine mesh and the tests that kill
 * backends. redis-server is Debian's package; nats-server is preferably the current release built
 * into the tool cache (go-tools.ts), else Debian's (2.9), see natsServerBinary.
 */

/** A backend server process this program owns. */
export interface BackendServer {
  url: string;
  port: number;
  pid: number;
  /** Kills the process by its PID (SIGKILL unless told: a crash, nothing flushed) and waits for exit. */
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/** A NATS server this program owns, with its JetStream store directory. */
export interface NatsServer extends BackendServer {
  storeDir: string;
  /** The executable started. */
  binary: string;
  /** The version the server announced in its INFO greeting, e.g. "2.15.3". */
  version: string;
}

/**
 * A TCP port that was free a moment ago, chosen at random below the kernel's ephemeral range.
 * The port is bound by another process later (a mesh member, a backend), and a port the kernel
 * hands out for `listen(0)` is from the ephemeral range, which every outgoing connection on the
 * machine draws its local port from: one of them could take it in between (it happened: a
 * launched process failed with EADDRINUSE). Below the range only another listener can, and the
 * random choice makes two pickers unlikely to meet. Falls back to a kernel-chosen port.
 */
export async function freePort(): Promise<number> {
  const high = ephemeralLow() - 1;
  for (let attempt = 0; attempt < 32 && high > LOWEST_PICKED_PORT; attempt++) {
    const port = LOWEST_PICKED_PORT + Math.floor(Math.random() * (high - LOWEST_PICKED_PORT));
    if ((await bindOnce(port)) !== undefined) return port;
  }
  const port = await bindOnce(0);
  if (port === undefined) throw new Error("no free TCP port on 127.0.0.1");
  return port;
}

/** Ports below this are left to services with well-known ports. */
const LOWEST_PICKED_PORT = 10_000;

/** The first port of the kernel's ephemeral range (Linux's file; 32768, its default, elsewhere). */
function ephemeralLow(): number {
  try {
    const low = Number(readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0]);
    return Number.isInteger(low) && low > LOWEST_PICKED_PORT ? low : 32_768;
  } catch {
    return 32_768;
  }
}

/** Binds 127.0.0.1:port and lets it go: the port bound (the kernel's when 0), or undefined if taken. */
function bindOnce(port: number): Promise<number | undefined> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once("error", () => resolve(undefined));
    server.listen(port, "127.0.0.1", () => {
      const address = server.address();
      const bound = typeof address === "object" && address !== null ? address.port : undefined;
      server.close(() => resolve(bound));
    });
  });
}

/**
 * Opens a TCP connection, optionally writes a probe, and decides from the first line the server
 * sends. No client library, so the check cannot hang in a client's reconnect loop.
 */
function probe(
  url: string,
  defaultPort: number,
  write: string | undefined,
  accept: (firstLine: string) => boolean,
  timeoutMs: number,
): Promise<boolean> {
  const parsed = new URL(url);
  const host = parsed.hostname || "127.0.0.1";
  const port = Number(parsed.port || defaultPort);
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    let reply = "";
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    socket.setEncoding("utf8");
    if (write !== undefined) socket.once("connect", () => socket.write(write));
    socket.on("data", (chunk: string) => {
      reply += chunk;
      if (reply.includes("\r\n")) done(accept(reply));
    });
    socket.once("error", () => done(false));
    socket.once("close", () => done(false));
  });
}

/** True if a Redis server answers PING at the URL (a server wanting a password counts). */
export function pingRedis(url: string, timeoutMs = 1000): Promise<boolean> {
  return probe(url, 6379, "PING\r\n", (r) => r.startsWith("+PONG") || r.startsWith("-NOAUTH"), timeoutMs);
}

/** True if a NATS server greets at the URL. */
export function pingNats(url: string, timeoutMs = 1000): Promise<boolean> {
  return probe(url, 4222, undefined, (r) => r.startsWith("INFO "), timeoutMs);
}

/** The version a NATS server announces in its INFO greeting, or undefined if it does not greet. */
export async function natsVersion(url: string, timeoutMs = 1000): Promise<string | undefined> {
  let version: string | undefined;
  await probe(
    url,
    4222,
    undefined,
    (r) => {
      if (!r.startsWith("INFO ")) return false;
      try {
        const info = JSON.parse(r.slice("INFO ".length, r.indexOf("\r\n"))) as { version?: unknown };
        if (typeof info.version === "string") version = info.version;
      } catch {
        // Not JSON: a server that greets, of no version we can read.
      }
      return true;
    },
    timeoutMs,
  );
  return version;
}

/**
 * The nats-server to start, first found of: $SWITCHBOARD_NATS_SERVER_BIN; the pinned current
 * release in the tool cache (`npx tsx services/mesh/go-tools.ts install nats-server` builds it);
 * `nats-server` on PATH (Debian's package, 2.9). Undefined when there is none.
 */
export function natsServerBinary(): string | undefined {
  const chosen = process.env.SWITCHBOARD_NATS_SERVER_BIN;
  if (chosen !== undefined && chosen !== "") return chosen;
  const cached = cachedToolPath("nats-server");
  if (existsSync(cached)) return cached;
  return onPath("nats-server");
}

/** Spawns a server binary and waits until `ready` says it serves. */
async function spawnServer(
  binary: string,
  debianPackage: string,
  args: string[],
  url: string,
  port: number,
  ready: (url: string) => Promise<boolean>,
  timeoutMs: number,
): Promise<BackendServer> {
  const child: ChildProcess = spawn(binary, args, { stdio: ["ignore", "pipe", "pipe"] });
  const output: string[] = [];
  child.stdout?.setEncoding("utf8").on("data", (chunk: string) => output.push(chunk));
  child.stderr?.setEncoding("utf8").on("data", (chunk: string) => output.push(chunk));
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  await new Promise<void>((resolve, reject) => {
    child.once("spawn", () => resolve());
    child.once("error", (err) =>
      reject(
        new Error(`cannot run ${binary} (${err.message}); install the Debian package ${debianPackage}`, {
          cause: err,
        }),
      ),
    );
  });
  const pid = child.pid;
  if (pid === undefined) throw new Error(`${binary} started without a PID`);
  const stop = async (signal: NodeJS.Signals = "SIGKILL"): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) process.kill(pid, signal);
    await exited;
  };
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null) {
      throw new Error(`${binary} exited with ${child.exitCode} on port ${port}: ${output.join("")}`);
    }
    if (await ready(url)) return { url, port, pid, stop };
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`${binary} did not answer on port ${port}: ${output.join("")}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/**
 * Spawns `redis-server` with no persistence on a free port (or the given one, to restart "the same"
 * Redis empty) and waits until it answers PING.
 */
export async function startRedisServer(
  options: { port?: number; timeoutMs?: number } = {},
): Promise<BackendServer> {
  const port = options.port ?? (await freePort());
  return spawnServer(
    "redis-server",
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmpdir()],
    `redis://127.0.0.1:${port}`,
    port,
    (url) => pingRedis(url, 200),
    options.timeoutMs ?? 5000,
  );
}

/**
 * Spawns `nats-server -js` (natsServerBinary's choice; the result names it and the version it
 * announced) with file storage on a free port (or the given one and store, to restart
 * "the same" server after a crash) and waits until it accepts clients, which it does only after
 * JetStream has recovered its streams.
 */
export async function startNatsServer(
  options: { port?: number; storeDir?: string; timeoutMs?: number } = {},
): Promise<NatsServer> {
  const port = options.port ?? (await freePort());
  const storeDir = options.storeDir ?? (await mkdtemp(join(tmpdir(), "sb-nats-")));
  const binary = natsServerBinary() ?? "nats-server";
  const server = await spawnServer(
    binary,
    `nats-server, or build the current release: ${installHint("nats-server")}`,
    ["-js", "-a", "127.0.0.1", "-p", String(port), "-sd", storeDir],
    `nats://127.0.0.1:${port}`,
    port,
    (url) => pingNats(url, 200),
    options.timeoutMs ?? 10_000,
  ).catch(async (err: unknown) => {
    // A store this call made for a server that never ran is nobody's: remove it.
    if (options.storeDir === undefined) await rm(storeDir, { recursive: true, force: true });
    throw err;
  });
  const version = (await natsVersion(server.url)) ?? "unknown";
  return { ...server, storeDir, binary, version };
}
