import { strict as assert } from "node:assert";
import { execFile, spawnSync } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

/**
 * "Durable before ack", checked where it is decided: in the system calls. A writer (fixtures/
 * sync-writer.ts) commits one entry at a time under strace and marks on stderr when it submits
 * each commit and when the commit resolves. Between the two, LMDB's commit must have completed an
 * fdatasync of the data file and then written the meta page through its O_DSYNC descriptor: that
 * is what makes a commit survive a power cut, which a SIGKILL test (lmdb.test.ts) cannot show.
 * It fails if the environment is opened with noSync or noMetaSync, or if a commit resolves before
 * its sync.
 */

const run = promisify(execFile);
const hasStrace = spawnSync("strace", ["-V"]).status === 0;
const skip = hasStrace ? false : "needs strace (apt-get install strace)";
if (skip && process.env.CI === "true") throw new Error(`lmdb durability: ${skip}; CI must run it`);

const COMMITS = 5;

interface Call {
  /** The line where the call completed, in the trace's order. */
  at: number;
  /** The line where it began (the same line unless it was interrupted by another thread's). */
  began: number;
  name: string;
  args: string;
  result: number;
}

/** The completed calls of an `strace -f` log, interrupted ones joined to their resumption. */
function parseTrace(log: string): Call[] {
  const calls: Call[] = [];
  const pending = new Map<string, { began: number; name: string; args: string }>();
  log.split("\n").forEach((line, at) => {
    const m = /^(\d+)\s+(.*)$/.exec(line);
    if (m === null) return;
    const [, pid, rest] = m as unknown as [string, string, string];
    const resumed = /^<\.\.\. (\w+) resumed>(.*)\)\s+= (-?\d+)/.exec(rest);
    if (resumed !== null) {
      const p = pending.get(pid);
      pending.delete(pid);
      if (p !== undefined && p.name === resumed[1]) {
        calls.push({
          at,
          began: p.began,
          name: p.name,
          args: p.args + resumed[2],
          result: Number(resumed[3]),
        });
      }
      return;
    }
    const unfinished = /^(\w+)\((.*) <unfinished \.\.\.>$/.exec(rest);
    if (unfinished !== null) {
      pending.set(pid, { began: at, name: unfinished[1]!, args: unfinished[2]! });
      return;
    }
    const whole = /^(\w+)\((.*)\)\s+= (-?\d+)/.exec(rest);
    if (whole !== null)
      calls.push({ at, began: at, name: whole[1]!, args: whole[2]!, result: Number(whole[3]) });
  });
  return calls;
}

describe("LMDB durability", { skip }, () => {
  const dirs: string[] = [];
  after(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it("a commit resolves only after the data file was synced and the meta page written through O_DSYNC", {
    timeout: 60_000,
  }, async () => {
    const dir = await mkdtemp(join(tmpdir(), "switchboard-durability-"));
    dirs.push(dir);
    const store = join(dir, "store");
    const log = join(dir, "trace.log");
    const fixture = fileURLToPath(new URL("./fixtures/sync-writer.ts", import.meta.url));
    const cwd = fileURLToPath(new URL("../../..", import.meta.url));
    await run(
      "strace",
      [
        "-f",
        "-qq",
        "-o",
        log,
        "-e",
        "trace=openat,fdatasync,fsync,pwrite64,pwritev,write",
        "--",
        process.execPath,
        "--import",
        "tsx",
        fixture,
        store,
        String(COMMITS),
      ],
      { cwd, timeout: 50_000 },
    );
    const calls = parseTrace(await readFile(log, "utf8"));

    const dataFds = new Set<number>();
    const dsyncFds = new Set<number>();
    for (const c of calls) {
      if (c.name !== "openat" || !c.args.includes('/data.mdb"') || c.result < 0) continue;
      (c.args.includes("O_DSYNC") ? dsyncFds : dataFds).add(c.result);
    }
    assert.ok(
      dataFds.size > 0 && dsyncFds.size > 0,
      "LMDB opened its data file, and once with O_DSYNC for the meta page",
    );
    const fdOf = (c: Call) => Number(c.args.split(",")[0]);
    const marker = (text: string) =>
      calls.find((c) => c.name === "write" && c.args.startsWith(`2, "${text}\\n"`));

    for (let seq = 1; seq <= COMMITS; seq++) {
      const submitted = marker(`submit ${seq}`);
      const resolved = marker(`resolved ${seq}`);
      assert.ok(submitted && resolved, `the writer marked commit ${seq} submitted and resolved`);
      const within = (c: Call) => c.began > submitted.at && c.at < resolved.began && c.result >= 0;
      const synced = calls.filter(
        (c) => within(c) && (c.name === "fdatasync" || c.name === "fsync") && dataFds.has(fdOf(c)),
      );
      assert.ok(synced.length > 0, `commit ${seq} resolved without an fdatasync of the data file`);
      const metaWritten = calls.filter(
        (c) =>
          within(c) &&
          (c.name === "pwrite64" || c.name === "pwritev") &&
          dsyncFds.has(fdOf(c)) &&
          c.began > synced[0]!.at,
      );
      assert.ok(
        metaWritten.length > 0,
        `commit ${seq} resolved before its meta page was written through O_DSYNC after the sync`,
      );
    }
  });
});
