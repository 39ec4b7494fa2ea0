import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { ConfigurationError } from "../common/config.js";
import { LOCK_FILE, lockDataDir } from "./data-dir-lock.js";

// The two-process cases (a second server refused, a SIGKILLed one taken over) are in
// test/e2e/process-io.test.ts with real server processes.
describe("data directory lock", () => {
  const dirs: string[] = [];
  const dir = () => {
    const d = mkdtempSync(join(tmpdir(), "lock-test-"));
    dirs.push(d);
    return d;
  };
  after(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it("refuses a second lock in the same process, and is taken again once released", () => {
    const d = dir();
    const lock = lockDataDir(d);
    assert.throws(
      () => lockDataDir(d),
      (err: unknown) => {
        assert.ok(err instanceof ConfigurationError);
        assert.match(err.message, new RegExp(`is in use by process ${process.pid} `));
        return true;
      },
    );
    lock.release();
    assert.equal(existsSync(join(d, LOCK_FILE)), false);
    lockDataDir(d).release();
  });

  it("respects a lock from another host until its heartbeat is 45 s old", () => {
    const d = dir();
    const path = join(d, LOCK_FILE);
    const record = {
      pid: 4242,
      host: "elsewhere.example",
      boot: "x",
      start: "1",
      since: "2026-01-01T00:00:00Z",
    };
    writeFileSync(path, `${JSON.stringify(record)}\n`);
    assert.throws(() => lockDataDir(d), /in use by process 4242 on elsewhere\.example .*another host/);
    const old = new Date(Date.now() - 46_000);
    utimesSync(path, old, old);
    const lock = lockDataDir(d);
    lock.release();
  });

  it("takes over a lock whose holder on this host is gone", () => {
    const d = dir();
    // A pid far above any the kernel hands out (pid_max is at most 2^22).
    const record = { pid: 2 ** 30, host: hostname(), boot: "", start: "", since: "" };
    writeFileSync(join(d, LOCK_FILE), `${JSON.stringify(record)}\n`);
    lockDataDir(d).release();
  });

  it("leaves alone a lock file that is not its own when releasing", () => {
    const d = dir();
    const lock = lockDataDir(d);
    // An operator removed ours and another process took the directory.
    writeFileSync(join(d, LOCK_FILE), '{"pid":1,"host":"other"}\n');
    lock.release();
    assert.equal(existsSync(join(d, LOCK_FILE)), true);
  });
});
