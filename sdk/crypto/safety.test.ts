import assert from "node:assert/strict";
import { test } from "node:test";
import { IdentityKeyPair } from "@signalapp/libsignal-client";
import { compareScannable, safetyNumber, safetyNumbersMatch } from "./safety.js";

test("safety numbers: equal on both sides, different for a different key", () => {
  const alice = IdentityKeyPair.generate().publicKey;
  const bob = IdentityKeyPair.generate().publicKey;
  const mallory = IdentityKeyPair.generate().publicKey;
  const onAlice = safetyNumber(
    { userId: "u_alice", identityKey: alice },
    { userId: "u_bob", identityKey: bob },
  );
  const onBob = safetyNumber(
    { userId: "u_bob", identityKey: bob.serialize() },
    { userId: "u_alice", identityKey: alice },
  );
  assert.match(onAlice.digits, /^\d{60}$/);
  assert.equal(onAlice.display.split(" ").length, 12);
  assert.equal(onAlice.digits, onBob.digits);
  assert.ok(safetyNumbersMatch(onAlice.display, onBob.digits));
  assert.equal(compareScannable(onAlice.scannable, onBob.scannable), true);

  const substituted = safetyNumber(
    { userId: "u_alice", identityKey: alice },
    { userId: "u_bob", identityKey: mallory },
  );
  assert.notEqual(substituted.digits, onAlice.digits);
  assert.equal(safetyNumbersMatch(substituted.digits, onBob.digits), false);
  const bobSeesMallory = safetyNumber(
    { userId: "u_bob", identityKey: mallory },
    { userId: "u_alice", identityKey: alice },
  );
  assert.equal(compareScannable(onAlice.scannable, bobSeesMallory.scannable), false);
  assert.throws(
    () => compareScannable(onAlice.scannable, new Uint8Array([1, 2, 3])),
    /not a comparable safety number/,
  );
});
