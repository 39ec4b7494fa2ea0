import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Coturn, startCoturn } from "../../services/mesh/coturn.js";
import { removeDir, type ServerProcess, startServerProcess } from "./server.js";

const root = new URL("../../", import.meta.url).pathname;
const SECRET = "cli-call-test-secret-shared-with-coturn";

/** A `switchboard` process (bin/switchboard.js), as a user runs it, with its output as it comes. */
export class SwitchboardProcess {
  readonly out: string[] = [];
  readonly err: string[] = [];
  readonly child: ChildProcess;
  readonly exited: Promise<number | null>;

  constructor(args: string[], serverUrl: string) {
    const env = { ...process.env };
    delete env.SWITCHBOARD_URL;
    delete env.SWITCHBOARD_PROFILE;
    this.child = spawn(process.execPath, [join(root, "bin/switchboard.js"), ...args, "--server", serverUrl], {
      cwd: root,
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    const lines = (into: string[]) => (d: Buffer) => into.push(...d.toString().split("\n").filter(Boolean));
    this.child.stdout?.on("data", lines(this.out));
    this.child.stderr?.on("data", lines(this.err));
    this.exited = new Promise((resolve) => this.child.once("close", (code) => resolve(code)));
  }

  /** Both outputs, for a failing assertion's message. */
  get shown(): string {
    return [...this.out, ...this.err].join("\n");
  }

  /** SIGTERM by PID, unless it has ended. */
  stop(): void {
    const { exitCode, signalCode, pid } = this.child;
    if (exitCode === null && signalCode === null && pid !== undefined) process.kill(pid, "SIGTERM");
  }
}

/** The match of `pattern` on the report line (stdout) of a call that starts with `line`. */
export function reported(p: SwitchboardProcess, line: string, pattern: RegExp): RegExpExecArray {
  const l = p.out.find((o) => o.startsWith(line));
  const m = l === undefined ? null : pattern.exec(l);
  assert.ok(m !== null, `no "${line}" line matching ${pattern} in:\n${p.shown}`);
  return m;
}

/**
 * A suite's backends for CLI calls: a real coturn, a server process handing out credentials for
 * it, a temporary directory for profiles, and the `switchboard` processes the suite started
 * (stopped by PID at the end).
 */
export class CallCliSuite {
  relay!: Coturn;
  server!: ServerProcess;
  base!: string;
  readonly running: SwitchboardProcess[] = [];

  async start(): Promise<void> {
    this.relay = await startCoturn(SECRET);
    this.server = await startServerProcess({
      env: { SWITCHBOARD_TURN_URLS: this.relay.url, SWITCHBOARD_TURN_SECRET: SECRET },
    });
    this.base = await mkdtemp(join(tmpdir(), "sb-call-cli-"));
  }

  async stop(): Promise<void> {
    for (const p of this.running) p.stop();
    await Promise.all(this.running.map((p) => p.exited));
    await this.server?.stop();
    if (this.server) await removeDir(this.server.dataDir);
    await this.relay?.stop();
    if (this.base) await removeDir(this.base);
  }

  /** Starts `switchboard ...args --server <url>` (the suite's server unless another is given). */
  readonly sb = (args: string[], serverUrl = this.server.url): SwitchboardProcess => {
    const p = new SwitchboardProcess(args, serverUrl);
    this.running.push(p);
    return p;
  };

  /** Runs a command that must succeed; its stdout lines. */
  readonly ok = async (...args: string[]): Promise<string[]> => {
    const p = this.sb(args);
    assert.equal(await p.exited, 0, `switchboard ${args.join(" ")}:\n${p.shown}`);
    return p.out;
  };
}
