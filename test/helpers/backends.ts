import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp } from "node:fs/promises";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** The Redis the tests share: 127.0.0.1:6379 unless SWITCHBOARD_TEST_REDIS_URL says otherwise. */
export function testRedisUrl(): string {
  return process.env.SWITCHBOARD_TEST_REDIS_URL ?? "redis://127.0.0.1:6379";
}

/** What a test needs to skip itself; node:test's TestContext fits. */
export interface Skippable {
  skip(message?: string): void;
}

/**
 * True if a Redis server answers at the URL. A raw PING over TCP, so the check needs no client
 * library and cannot hang on a client's reconnect loop.
 */
export function pingRedis(url: string, timeoutMs = 1000): Promise<boolean> {
  const parsed = new URL(url);
  const host = parsed.hostname || "127.0.0.1";
  const port = Number(parsed.port || 6379);
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
    socket.once("connect", () => socket.write("PING\r\n"));
    socket.on("data", (chunk: string) => {
      reply += chunk;
      // A server that wants a password still proves that Redis is there; the client will log in.
      if (reply.includes("\r\n")) done(reply.startsWith("+PONG") || reply.startsWith("-NOAUTH"));
    });
    socket.once("error", () => done(false));
    socket.once("close", () => done(false));
  });
}

/**
 * Returns the Redis URL when Redis answers. Otherwise the test is skipped with a message, except
 * under CI=true, where a missing backend must not pass silently: the test fails instead.
 */
export async function requireRedis(t: Skippable, url: string = testRedisUrl()): Promise<string | undefined> {
  if (await pingRedis(url)) return url;
  if (process.env.CI === "true") {
    throw new Error(
      `redis-server not reachable at ${url}, and CI=true requires it: install the Debian package ` +
        "redis-server (apt-get install redis-server) and start it, or point SWITCHBOARD_TEST_REDIS_URL at one",
    );
  }
  t.skip(
    `redis-server not reachable at ${url}; install it (apt-get install redis-server) to run these tests`,
  );
  return undefined;
}

/** A redis-server this test owns. */
export interface RedisServer {
  url: string;
  port: number;
  pid: number;
  /** Kills the process by its PID (SIGKILL unless told: a crash, nothing flushed) and waits for exit. */
  stop(signal?: NodeJS.Signals): Promise<void>;
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
 * Spawns `redis-server` with no persistence on a free port (or the given one, to restart "the same"
 * Redis empty) and waits until it answers PING.
 */
export async function startRedisServer(
  options: { port?: number; timeoutMs?: number } = {},
): Promise<RedisServer> {
  const port = options.port ?? (await freePort());
  const url = `redis://127.0.0.1:${port}`;
  const child: ChildProcess = spawn(
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmpdir()],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  const output: string[] = [];
  child.stdout?.setEncoding("utf8").on("data", (chunk: string) => output.push(chunk));
  child.stderr?.setEncoding("utf8").on("data", (chunk: string) => output.push(chunk));
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const spawned = new Promise<void>((resolve, reject) => {
    child.once("spawn", () => resolve());
    child.once("error", (err) =>
      reject(
        new Error(`cannot run redis-server (${err.message}); install the Debian package redis-server`, {
          cause: err,
        }),
      ),
    );
  });
  await spawned;
  const pid = child.pid;
  if (pid === undefined) throw new Error("redis-server started without a PID");
  const stop = async (signal: NodeJS.Signals = "SIGKILL"): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) process.kill(pid, signal);
    await exited;
  };
  const deadline = Date.now() + (options.timeoutMs ?? 5000);
  for (;;) {
    if (child.exitCode !== null) {
      throw new Error(`redis-server exited with ${child.exitCode} on port ${port}: ${output.join("")}`);
    }
    if (await pingRedis(url, 200)) return { url, port, pid, stop };
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`redis-server did not answer on port ${port}: ${output.join("")}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** The NATS the tests share: 127.0.0.1:4222 unless SWITCHBOARD_TEST_NATS_URL says otherwise. */
export function testNatsUrl(): string {
  return process.env.SWITCHBOARD_TEST_NATS_URL ?? "nats://127.0.0.1:4222";
}

/**
 * True if a NATS server answers at the URL: a server greets every connection with an INFO line,
 * so reading it needs no client library and cannot hang on a client's reconnect loop.
 */
export function pingNats(url: string, timeoutMs = 1000): Promise<boolean> {
  const parsed = new URL(url);
  const host = parsed.hostname || "127.0.0.1";
  const port = Number(parsed.port || 4222);
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    let greeting = "";
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      greeting += chunk;
      if (greeting.includes("\r\n")) done(greeting.startsWith("INFO "));
    });
    socket.once("error", () => done(false));
    socket.once("close", () => done(false));
  });
}

/**
 * Returns the NATS URL when NATS answers. Otherwise the test is skipped with a message, except
 * under CI=true, where a missing backend must not pass silently: the test fails instead.
 */
export async function requireNats(t: Skippable, url: string = testNatsUrl()): Promise<string | undefined> {
  if (await pingNats(url)) return url;
  if (process.env.CI === "true") {
    throw new Error(
      `nats-server not reachable at ${url}, and CI=true requires it: install the Debian package ` +
        "nats-server (apt-get install nats-server) and start it with JetStream (-js), or point " +
        "SWITCHBOARD_TEST_NATS_URL at one",
    );
  }
  t.skip(
    `nats-server not reachable at ${url}; install the Debian package nats-server (apt-get install nats-server) ` +
      "and start it with -js to run these tests",
  );
  return undefined;
}

/** A nats-server with JetStream that this test owns. */
export interface NatsServer {
  url: string;
  port: number;
  pid: number;
  /** The JetStream store directory; pass it to a restart to keep the streams. */
  storeDir: string;
  /** Kills the process by its PID (SIGKILL unless told: a crash, nothing flushed) and waits for exit. */
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/**
 * Spawns `nats-server` with JetStream on a free port (or the given one) storing in storeDir (a new
 * temporary directory unless given; pass the previous one to restart "the same" server) and waits
 * until it accepts connections. The caller removes a store directory it did not pass in.
 */
export async function startNatsServer(
  options: { port?: number; storeDir?: string; timeoutMs?: number } = {},
): Promise<NatsServer> {
  const port = options.port ?? (await freePort());
  const storeDir = options.storeDir ?? (await mkdtemp(join(tmpdir(), "sb-nats-")));
  const url = `nats://127.0.0.1:${port}`;
  const child: ChildProcess = spawn(
    "nats-server",
    ["-js", "-a", "127.0.0.1", "-p", String(port), "-sd", storeDir],
    {
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  const output: string[] = [];
  child.stdout?.setEncoding("utf8").on("data", (chunk: string) => output.push(chunk));
  child.stderr?.setEncoding("utf8").on("data", (chunk: string) => output.push(chunk));
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const spawned = new Promise<void>((resolve, reject) => {
    child.once("spawn", () => resolve());
    child.once("error", (err) =>
      reject(
        new Error(`cannot run nats-server (${err.message}); install the Debian package nats-server`, {
          cause: err,
        }),
      ),
    );
  });
  await spawned;
  const pid = child.pid;
  if (pid === undefined) throw new Error("nats-server started without a PID");
  const stop = async (signal: NodeJS.Signals = "SIGKILL"): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) process.kill(pid, signal);
    await exited;
  };
  const deadline = Date.now() + (options.timeoutMs ?? 5000);
  for (;;) {
    if (child.exitCode !== null) {
      throw new Error(`nats-server exited with ${child.exitCode} on port ${port}: ${output.join("")}`);
    }
    // The server opens its client port only after JetStream has recovered its streams.
    if (await pingNats(url, 200)) return { url, port, pid, storeDir, stop };
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`nats-server did not answer on port ${port}: ${output.join("")}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
