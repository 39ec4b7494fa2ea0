import assert from "node:assert/strict";
import { test } from "node:test";
import { deriveMediaUrlKey } from "./config.js";

test("media settings: the derived URL key is stable and not the token key", () => {
  const tokenKey = Buffer.alloc(32, 9);
  assert.deepEqual(deriveMediaUrlKey(tokenKey), deriveMediaUrlKey(Buffer.alloc(32, 9)));
  assert.notDeepEqual(Buffer.from(deriveMediaUrlKey(tokenKey)), tokenKey);
  assert.equal(deriveMediaUrlKey(tokenKey).length, 32);
});
