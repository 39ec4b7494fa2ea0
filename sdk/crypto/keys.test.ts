import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { KEMPublicKey, PublicKey } from "@signalapp/libsignal-client";
import { toBytes } from "../storage/records.js";
import {
  generateInitialKeys,
  MAX_EC_PREKEYS_PER_UPLOAD,
  MAX_KYBER_PREKEYS_PER_UPLOAD,
  replenishPrekeys,
  rotateSignedPrekeys,
} from "./keys.js";
import { SignalStores } from "./stores.js";

let root: string;
before(async () => {
  root = await mkdtemp(join(tmpdir(), "sb-keys-"));
});
after(() => rm(root, { recursive: true, force: true }));

test("the first upload: every field, valid signatures, private halves stored", async () => {
  const stores = await SignalStores.open(join(root, "d1"));
  const req = await generateInitialKeys(stores, { ec: 10, kyber: 4 });
  const identity = PublicKey.deserialize(toBytes(req.identityKey));
  assert.equal(req.identityKey.length, 33);
  assert.ok(identity.equals(stores.identity.keyPair().publicKey));
  assert.ok(req.registrationId >= 1 && req.registrationId <= 16383);
  const signed = req.signedPrekey;
  const lastResort = req.kyberLastResortPrekey;
  assert.ok(signed && lastResort);
  assert.equal(signed.publicKey.length, 33);
  assert.ok(identity.verify(toBytes(signed.publicKey), toBytes(signed.signature)));
  assert.ok(identity.verify(toBytes(lastResort.publicKey), toBytes(lastResort.signature)));
  KEMPublicKey.deserialize(toBytes(lastResort.publicKey));
  assert.equal(req.oneTimePrekeys.length, 10);
  assert.equal(req.oneTimeKyberPrekeys.length, 4);
  for (const k of req.oneTimeKyberPrekeys)
    assert.ok(identity.verify(toBytes(k.publicKey), toBytes(k.signature)));
  const kyberIds = [lastResort.keyId, ...req.oneTimeKyberPrekeys.map((k) => k.keyId)];
  assert.equal(new Set(kyberIds).size, kyberIds.length, "one-time Kyber ids differ from the last-resort id");
  assert.equal(stores.preKeys.count(), 10);
  assert.equal(stores.kyberPreKeys.oneTimeCount(), 4);
  assert.ok(stores.kyberPreKeys.isLastResort(lastResort.keyId));
  assert.ok(await stores.signedPreKeys.getSignedPreKey(signed.keyId));

  // Reopened: same identity, same keys, and new ids never collide with the old ones.
  const again = await SignalStores.open(join(root, "d1"));
  assert.ok(again.identity.keyPair().publicKey.equals(identity));
  assert.equal(again.registrationId, req.registrationId);
  assert.equal(again.preKeys.count(), 10);
  const more = await replenishPrekeys(
    again,
    { oneTimeEcPrekeys: 0, oneTimeKyberPrekeys: 0 },
    { ec: 20, kyber: 6 },
  );
  const ecIds = [...req.oneTimePrekeys, ...more.flatMap((r) => r.oneTimePrekeys)].map((k) => k.keyId);
  assert.equal(new Set(ecIds).size, ecIds.length);
  const allKyber = [...kyberIds, ...more.flatMap((r) => r.oneTimeKyberPrekeys).map((k) => k.keyId)];
  assert.equal(new Set(allKyber).size, allKyber.length);
});

test("replenishing: nothing above the low-water marks, split by the per-call limits below", async () => {
  const stores = await SignalStores.open(join(root, "d2"));
  assert.deepEqual(await replenishPrekeys(stores, { oneTimeEcPrekeys: 80, oneTimeKyberPrekeys: 20 }), []);
  const reqs = await replenishPrekeys(
    stores,
    { oneTimeEcPrekeys: 3, oneTimeKyberPrekeys: 1 },
    { ec: 250, kyber: 40, ecLowWater: 10, kyberLowWater: 10 },
  );
  assert.deepEqual(
    reqs.map((r) => [r.oneTimePrekeys.length, r.oneTimeKyberPrekeys.length]),
    [
      [100, 32],
      [100, 7],
      [47, 0],
    ],
  );
  for (const r of reqs) {
    assert.ok(r.oneTimePrekeys.length <= MAX_EC_PREKEYS_PER_UPLOAD);
    assert.ok(r.oneTimeKyberPrekeys.length <= MAX_KYBER_PREKEYS_PER_UPLOAD);
    assert.equal(r.identityKey.length, 0, "later uploads leave the identity out");
  }
  assert.equal(stores.preKeys.count(), 247);
});

test("rotation keeps the previous signed and last-resort keys, drops older ones", async () => {
  const stores = await SignalStores.open(join(root, "d3"));
  const first = await generateInitialKeys(stores, { ec: 0, kyber: 0 });
  const ids: number[] = [first.signedPrekey?.keyId as number];
  for (let i = 0; i < 3; i++) ids.push((await rotateSignedPrekeys(stores, 1)).signedPrekey?.keyId as number);
  assert.deepEqual(
    stores.signedPreKeys
      .all()
      .map((r) => r.id())
      .sort(),
    ids.slice(-2).sort(),
  );
  assert.equal(stores.kyberPreKeys.lastResortKeys().length, 2);
});
