import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp } from "node:fs/promises";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

/**
 * Local nats-server and redis-server processes for the one-machine mesh and the tests that kill
 * backends. Both come from Debian's packages (nats-server, redis-server).
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
}

/** A TCP port that was free a moment ago. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => resolve(port));
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
 * Spawns `nats-server -js` with file storage on a free port (or the given one and store, to restart
 * "the same" server after a crash) and waits until it accepts clients, which it does only after
 * JetStream has recovered its streams.
 */
export async function startNatsServer(
  options: { port?: number; storeDir?: string; timeoutMs?: number } = {},
): Promise<NatsServer> {
  const port = options.port ?? (await freePort());
  const storeDir = options.storeDir ?? (await mkdtemp(join(tmpdir(), "sb-nats-")));
  const server = await spawnServer(
    "nats-server",
    "nats-server",
    ["-js", "-a", "127.0.0.1", "-p", String(port), "-sd", storeDir],
    `nats://127.0.0.1:${port}`,
    port,
    (url) => pingNats(url, 200),
    options.timeoutMs ?? 10_000,
  );
  return { ...server, storeDir };
}
