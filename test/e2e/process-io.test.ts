import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { LOCK_FILE } from "../../services/server/data-dir-lock.js";
import { removeDir, type ServerProcess, startServerProcess } from "../helpers/server.js";

const root = new URL("../../", import.meta.url).pathname;

/** Runs `switchboard <args>` to its end; with closedStdout, the reader of its stdout is gone first. */
function switchboard(
  args: readonly string[],
  options: { closedStdout?: boolean; env?: Record<string, string> } = {},
): Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [join(root, "bin/switchboard.js"), ...args], {
    cwd: root,
    env: { ...process.env, SWITCHBOARD_MEDIA_PORT: "0", ...options.env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  // Closing our end at once: the command's first write to stdout fails with EPIPE, as it does
  // after `| head` has read its lines and exited.
  if (options.closedStdout) child.stdout.destroy();
  else child.stdout.setEncoding("utf8").on("data", (c: string) => (stdout += c));
  child.stderr.setEncoding("utf8").on("data", (c: string) => (stderr += c));
  return new Promise((resolve) =>
    child.once("close", (code, signal) => resolve({ code, signal, stdout, stderr })),
  );
}

describe("one server process per data directory", () => {
  const servers: ServerProcess[] = [];
  after(async () => {
    for (const s of servers) await s.kill();
    for (const s of servers) await removeDir(s.dataDir);
  });

  it("refuses a second server on the same directory, and takes over from one that was SIGKILLed", async () => {
    const first = await startServerProcess();
    servers.push(first);
    const second = await switchboard(["start", "--port", "0", "--data-dir", first.dataDir]);
    assert.equal(second.code, 1, `the second server exited with ${second.code}: ${second.stderr}`);
    assert.match(
      second.stderr,
      new RegExp(
        `data directory .* is in use by process ${first.process.pid} .*only one server may use a data directory`,
      ),
    );
    assert.doesNotMatch(second.stderr, /\n\s+at /, "a message, not a stack trace");
    assert.doesNotMatch(second.stdout, /listening on/);

    // SIGKILL: no chance to remove the lock file; the next server finds its holder dead.
    await first.kill();
    assert.ok(existsSync(join(first.dataDir, LOCK_FILE)), "a SIGKILLed server leaves its lock file");
    const third = await startServerProcess({ dataDir: first.dataDir });
    servers.push(third);
    assert.equal(await third.stop(), 0, third.logs.slice(-10).join("\n"));
    assert.equal(existsSync(join(first.dataDir, LOCK_FILE)), false, "a stopped server removes its lock");
  });

  it("takes over a lock whose pid now belongs to another process started later", async () => {
    const dir = mkdtempSync(join(tmpdir(), "switchboard-lock-"));
    // The pid of this test process, with a start time it never had: a recycled pid.
    writeFileSync(
      join(dir, LOCK_FILE),
      `${JSON.stringify({ pid: process.pid, host: (await import("node:os")).hostname(), boot: "", start: "1", since: "" })}\n`,
    );
    const server = await startServerProcess({ dataDir: dir });
    servers.push(server);
    assert.equal(await server.stop(), 0);
  });
});

describe("a closed stdout (switchboard ... | head)", () => {
  it("ends an admin command quietly, with exit code 0", async () => {
    const server = await startServerProcess();
    try {
      const run = await switchboard(["admin", "stats", "--url", server.url, "--data-dir", server.dataDir], {
        closedStdout: true,
      });
      assert.equal(run.code, 0, `exit ${run.code} ${run.signal}: ${run.stderr}`);
      assert.equal(run.stderr, "");
      // A client command (sdk/cli) goes through the same entry point.
      const profile = mkdtempSync(join(tmpdir(), "switchboard-profile-"));
      const reg = await switchboard(
        ["register", `pipe${process.pid}`, "--profile", profile, "--server", server.url, "--no-encryption"],
        { closedStdout: true },
      );
      assert.equal(reg.code, 0, `exit ${reg.code} ${reg.signal}: ${reg.stderr}`);
      assert.doesNotMatch(reg.stderr, /EPIPE|\n\s+at /);
      await removeDir(profile);
    } finally {
      assert.equal(await server.stop(), 0);
      await removeDir(server.dataDir);
    }
  });

  it("keeps a server running, and it still stops on SIGTERM (switchboard start | head -1)", async () => {
    const server = await startServerProcess();
    try {
      // The listening line was read; the reader goes away, as head does after one line.
      server.process.stdout!.destroy();
      // The server writes "SIGTERM: shutting down" to the closed pipe and must still stop cleanly.
      assert.equal(await server.stop(), 0, server.logs.slice(-10).join("\n"));
      assert.ok(server.logs.some((l) => l.includes('"msg":"stopped"')));
    } finally {
      await removeDir(server.dataDir);
    }
  });
});

describe("log format", () => {
  // A real process logging through createLogger, its stderr a pipe or a terminal.
  const program = `import(${JSON.stringify(join(root, "services/common/log.ts"))}).then((m) => m.createLogger({ level: "info", base: { role: "test" } }).info({ n: 7 }, "hello there"))`;
  const nodeArgs = ["--import", "tsx", "-e", program];

  it("writes JSON lines when stderr is not a terminal", async () => {
    const child = spawnSync(process.execPath, nodeArgs, { cwd: root, encoding: "utf8" });
    assert.equal(child.status, 0, child.stderr);
    const line = JSON.parse(child.stderr.trim()) as Record<string, unknown>;
    assert.equal(line.msg, "hello there");
    assert.equal(line.level, 30);
    assert.equal(line.n, 7);
    assert.equal(typeof line.time, "number");
  });

  it("writes lines for people when stderr is a terminal", async (t) => {
    // util-linux's script runs the command on a pseudo-terminal (Debian's bsdutils).
    if (spawnSync("script", ["--version"]).error) {
      t.skip("script (util-linux) is not installed: no pseudo-terminal to test with");
      return;
    }
    const command = [process.execPath, ...nodeArgs].map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(" ");
    const run = spawnSync("script", ["-q", "-e", "-c", command, "/dev/null"], {
      cwd: root,
      encoding: "utf8",
      env: { ...process.env, NO_COLOR: "1" },
    });
    assert.equal(run.status, 0, run.stderr);
    const out = run.stdout.replaceAll("\r", "");
    // [HH:MM:ss.l] INFO: message {fields}
    assert.match(out, /^\[\d\d:\d\d:\d\d\.\d{3}\] INFO: hello there \{"n":7\}$/m);
    assert.doesNotMatch(out, /"level":30/);
  });
});
