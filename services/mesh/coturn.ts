import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort } from "./servers.js";

/**
 * A local coturn (Debian's `turnserver`) for `switchboard mesh` and the call tests: plain TURN
 * over UDP and TCP on a free port of 127.0.0.1, relaying on 127.0.0.1, checking credentials with
 * the coturn REST API shared secret exactly as a production relay configured for Switchboard does
 * (docs/calls.md). A deployment runs its own coturn (the Helm chart points gateways at it).
 */
export interface Coturn {
  /** The listening port (UDP and TCP). */
  port: number;
  /** The realm it answers in. */
  realm: string;
  /** The shared secret (static-auth-secret). */
  secret: string;
  /** The turn: URI a server hands to devices. */
  url: string;
  pid: number;
  /** What it logged, for a failing test's message. */
  logs: string[];
  /** Stops the process by its PID and waits for it to exit. */
  stop(): Promise<void>;
}

/** Why no local relay can run here, or false: turnserver is the Debian package coturn (.ci/run installs it). */
export function coturnMissing(): string | false {
  const found = (process.env.PATH ?? "")
    .split(":")
    .some((dir) => dir !== "" && existsSync(join(dir, "turnserver")));
  return found ? false : "turnserver is missing: apt-get install coturn";
}

/** Starts coturn with this shared secret; resolves once it accepts TCP connections. */
export async function startCoturn(secret: string, timeoutMs = 15_000): Promise<Coturn> {
  const dir = await mkdtemp(join(tmpdir(), "switchboard-coturn-"));
  const port = await freePort();
  // Relay ports from a range of their own, away from the ephemeral range the tests' sockets use.
  const minPort = 40_000 + Math.floor(Math.random() * 200) * 100;
  const realm = "switchboard.test";
  const args = [
    "-n", // no configuration file: everything is on this line
    `--listening-ip=127.0.0.1`,
    `--listening-port=${port}`,
    `--relay-ip=127.0.0.1`,
    `--min-port=${minPort}`,
    `--max-port=${minPort + 99}`,
    "--use-auth-secret",
    `--static-auth-secret=${secret}`,
    `--realm=${realm}`,
    "--no-tls",
    "--no-dtls",
    "--no-cli",
    // Both call devices live on this machine: the relay must be allowed to reach loopback peers.
    "--allow-loopback-peers",
    `--userdb=${join(dir, "turndb")}`,
    `--pidfile=${join(dir, "turnserver.pid")}`,
    "--log-file=stdout",
    "--simple-log",
    "--no-stdout-log",
  ];
  const child: ChildProcess = spawn("turnserver", args, { stdio: ["ignore", "pipe", "pipe"] });
  const logs: string[] = [];
  const collect = (chunk: Buffer) => logs.push(...chunk.toString().split("\n").filter(Boolean));
  child.stdout?.on("data", collect);
  child.stderr?.on("data", collect);
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined)
      process.kill(child.pid, "SIGTERM");
    await exited;
    await rm(dir, { recursive: true, force: true });
  };
  const deadline = Date.now() + timeoutMs;
  while (!(await accepts(port))) {
    if (child.exitCode !== null || Date.now() > deadline) {
      await stop();
      throw new Error(`coturn did not start on port ${port}:\n${logs.slice(-20).join("\n")}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { port, realm, secret, url: `turn:127.0.0.1:${port}?transport=udp`, pid: child.pid!, logs, stop };
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: "127.0.0.1", port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1000, () => done(false));
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });
}
