import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { UnavailableError } from "../../common/errors.js";
import { StoreError } from "../errors.js";
import { FAILING_HOLD_MS, WriteFaults } from "./write-faults.js";

/** lmdb-js's failed commit, as its write thread reports it: a message and the cause, rejected. */
function commitFailure(cause: Error): Error {
  const err = new Error("Commit failed (see commitError for details)") as Error & {
    commitError: Promise<never>;
  };
  err.commitError = Promise.reject(cause);
  return err;
}

describe("WriteFaults", () => {
  it("turns a failed commit into UNAVAILABLE with a retry hint, observes its cause, and reports it until the hold ends", async () => {
    let now = 1_000_000;
    const faults = new WriteFaults(() => now);
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on("unhandledRejection", onUnhandled);
    try {
      const cause = Object.assign(new Error("No space left on device"), { code: 28 });
      const err = await faults.run(() => Promise.reject(commitFailure(cause))).catch((e: unknown) => e);
      assert.ok(err instanceof UnavailableError, String(err));
      assert.match(err.message, /storage is failing/);
      assert.ok((err.retryAfterMs ?? 0) > 0);
      await new Promise((r) => setImmediate(r));
      assert.deepEqual(unhandled, [], "the cause's rejection is observed");
    } finally {
      process.off("unhandledRejection", onUnhandled);
    }
    assert.match(
      faults.problem() ?? "",
      /storage writes failing since .*\(1 failed\): No space left on device/,
    );
    // A write that fits does not end it at once (the disk may be nearly full still); time does.
    assert.equal(await faults.run(async () => 7), 7);
    assert.ok(faults.problem());
    now += FAILING_HOLD_MS;
    assert.equal(faults.problem(), undefined);
  });

  it("passes a domain refusal and a bug through unchanged, and does not count them", async () => {
    const faults = new WriteFaults();
    const conflict = new StoreError("conflict", "seq 2 of g_x is already written");
    assert.equal(await faults.run(() => Promise.reject(conflict)).catch((e: unknown) => e), conflict);
    const bug = new TypeError("x is undefined");
    assert.equal(await faults.run(() => Promise.reject(bug)).catch((e: unknown) => e), bug);
    assert.equal(faults.problem(), undefined);
  });

  it("takes errno-style failures (EIO, ENOSPC, lmdb's numeric codes) for storage faults", async () => {
    const faults = new WriteFaults();
    for (const code of ["EIO", "ENOSPC", 5]) {
      const err = Object.assign(new Error("I/O"), { code });
      assert.ok(
        (await faults.run(() => Promise.reject(err)).catch((e: unknown) => e)) instanceof UnavailableError,
      );
    }
    assert.match(faults.problem() ?? "", /\(3 failed\)/);
  });
});
