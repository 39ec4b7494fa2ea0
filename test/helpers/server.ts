import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { waitForListening } from "../../services/mesh/listening.js";

const root = new URL("../../", import.meta.url).pathname;

/** A switchboard server running as its own OS process, as in production. */
export interface ServerProcess {
  url: string;
  dataDir: string;
  process: ChildProcess;
  /** Lines the process wrote to stderr (its JSON log). */
  logs: string[];
  /** SIGTERM and wait for exit; returns the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL and wait: no chance to flush anything. */
  kill(): Promise<void>;
}

/** Starts `switchboard start` on a free port with its own data directory (or the given one). */
export async function startServerProcess(
  options: { dataDir?: string; env?: Record<string, string>; port?: number } = {},
): Promise<ServerProcess> {
  const dataDir = options.dataDir ?? (await mkdtemp(join(tmpdir(), "switchboard-test-")));
  const child = spawn(
    process.execPath,
    [join(root, "bin/switchboard.js"), "start", "--data-dir", dataDir, "--port", String(options.port ?? 0)],
    {
      cwd: root,
      // The attachment server takes a free port too, so test servers can run side by side.
      env: {
        ...process.env,
        SWITCHBOARD_LOG_LEVEL: "info",
        SWITCHBOARD_MEDIA_PORT: "0",
        // Suites register many users from 127.0.0.1; the registration limits have their own tests.
        SWITCHBOARD_REGISTRATIONS_PER_ADDRESS_PER_HOUR: "1000000",
        SWITCHBOARD_REGISTRATIONS_PER_HOUR: "1000000",
        ...options.env,
      },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  const logs: string[] = [];
  child.stderr
    ?.setEncoding("utf8")
    .on("data", (chunk: string) => logs.push(...chunk.split("\n").filter(Boolean)));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const url = await waitForListening(child, () => logs, 20_000);
  return {
    url,
    dataDir,
    process: child,
    logs,
    async stop() {
      if (child.exitCode === null) child.kill("SIGTERM");
      return exited;
    },
    async kill() {
      if (child.exitCode === null) child.kill("SIGKILL");
      await exited;
    },
  };
}

/** Removes a test data directory. */
export async function removeDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}

/**
 * Waits until the server has logged a line that matches. The server writes its log
 * asynchronously on stderr, so a line about something that just happened may still be on its way:
 * asserting on `logs` at once would race it.
 */
export async function loggedLine(
  server: { logs: string[] },
  matches: (line: string) => boolean,
  what: string,
  timeoutMs = 10_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!server.logs.some(matches)) {
    if (Date.now() > deadline)
      throw new Error(`timed out after ${timeoutMs} ms waiting for a log line: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
