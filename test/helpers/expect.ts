import assert from "node:assert/strict";
import { Code, ConnectError } from "@connectrpc/connect";

/** Asserts that a call fails with exactly this gRPC code (and message pattern). */
export async function rejectsWith(promise: Promise<unknown>, code: Code, pattern?: RegExp): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof ConnectError, `expected a ConnectError, got ${String(err)}`);
    assert.equal(err.code, code, `expected ${Code[code]}, got ${Code[err.code]}: ${err.rawMessage}`);
    if (pattern) assert.match(err.rawMessage, pattern);
    return true;
  });
}
