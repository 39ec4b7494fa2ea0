import { strict as assert } from "node:assert";
import { randomBytes, randomUUID } from "node:crypto";
import { describe, it } from "node:test";
import { isStoreError, type StoreErrorKind } from "../errors.js";
import type {
  DeviceKeysWrite,
  KeyStore,
  OneTimePrekeyRecord,
  SignedPrekeyRecord,
  StoreEngine,
} from "../types.js";

/**
 * The conformance suite of KeyStore, for every engine. The store keeps public keys as opaque
 * bytes (the accounts service verifies them), so random bytes stand in for keys here. `open` may
 * return a fresh or a shared store: every test works on device ids of its own.
 */
export function runKeyStoreConformance(open: () => Promise<StoreEngine>): void {
  const test = (name: string, fn: (store: KeyStore) => Promise<void>): void => {
    it(name, async () => {
      const engine = await open();
      try {
        await fn(engine.keys);
      } finally {
        await engine.close();
      }
    });
  };

  describe("KeyStore conformance", () => {
    test("a first upload is stored and read back, with its one-time prekey counts", async (store) => {
      const w = firstWrite({ oneTimeEc: ec(1, 5), oneTimeKyber: kyber(1, 3) });
      assert.deepEqual(await store.putKeys(w, 100), { ec: 5, kyber: 3 });
      assert.deepEqual(await store.getKeys(w.deviceId), {
        deviceId: w.deviceId,
        userId: w.userId,
        registrationId: w.registrationId,
        identityKey: w.identityKey,
        signedPrekey: w.signedPrekey,
        kyberLastResort: w.kyberLastResort,
      });
      assert.deepEqual(await store.countPrekeys(w.deviceId), { ec: 5, kyber: 3 });
    });

    test("an unknown device has no keys, no counts and nothing to take", async (store) => {
      const deviceId = id();
      assert.equal(await store.getKeys(deviceId), undefined);
      assert.deepEqual(await store.countPrekeys(deviceId), { ec: 0, kyber: 0 });
      assert.deepEqual(await store.takePrekeys(deviceId), { remaining: { ec: 0, kyber: 0 } });
    });

    test("a first upload without both signed prekeys is refused", async (store) => {
      const { signedPrekey: _s, ...noSigned } = firstWrite();
      await assert.rejects(store.putKeys(noSigned, 100), RangeError);
      const { kyberLastResort: _k, ...noKyber } = firstWrite();
      await assert.rejects(store.putKeys(noKyber, 100), RangeError);
      assert.equal(await store.getKeys(noSigned.deviceId), undefined);
    });

    test("another identity key or registration id is refused and nothing is written", async (store) => {
      const w = firstWrite({ oneTimeEc: ec(1, 2) });
      await store.putKeys(w, 100);
      const rotate = { signedPrekey: signedKey(9, 33), oneTimeEc: ec(10, 2), oneTimeKyber: kyber(10, 2) };
      await rejectsWith(store.putKeys({ ...base(w), identityKey: bytes(33), ...rotate }, 100), "conflict");
      await rejectsWith(
        store.putKeys({ ...base(w), registrationId: w.registrationId + 1, ...rotate }, 100),
        "conflict",
      );
      assert.deepEqual((await store.getKeys(w.deviceId))?.signedPrekey, w.signedPrekey);
      assert.deepEqual((await store.getKeys(w.deviceId))?.identityKey, w.identityKey);
      assert.deepEqual(await store.countPrekeys(w.deviceId), { ec: 2, kyber: 0 });
    });

    test("a later upload rotates the signed prekeys and adds one-time prekeys", async (store) => {
      const w = firstWrite({ oneTimeEc: ec(1, 2), oneTimeKyber: kyber(1, 2) });
      await store.putKeys(w, 100);
      const signedPrekey = signedKey(2, 33);
      assert.deepEqual(await store.putKeys({ ...base(w), signedPrekey, oneTimeEc: ec(3, 2) }, 100), {
        ec: 4,
        kyber: 2,
      });
      let keys = await store.getKeys(w.deviceId);
      assert.deepEqual(keys?.signedPrekey, signedPrekey);
      assert.deepEqual(keys?.kyberLastResort, w.kyberLastResort, "the last resort is kept");
      const kyberLastResort = signedKey(2, 1569);
      await store.putKeys({ ...base(w), kyberLastResort }, 100);
      keys = await store.getKeys(w.deviceId);
      assert.deepEqual(keys?.kyberLastResort, kyberLastResort);
      assert.deepEqual(keys?.signedPrekey, signedPrekey, "the signed prekey is kept");
      assert.deepEqual(await store.countPrekeys(w.deviceId), { ec: 4, kyber: 2 });
    });

    test("one-time prekeys whose ids are stored are skipped, so a retried upload counts once", async (store) => {
      const w = firstWrite({ oneTimeEc: ec(1, 3), oneTimeKyber: kyber(1, 3) });
      await store.putKeys(w, 100);
      const again = { ...w, oneTimeEc: [...ec(1, 3), ...ec(4, 1)], oneTimeKyber: kyber(1, 3) };
      assert.deepEqual(await store.putKeys(again, 100), { ec: 4, kyber: 3 });
      // The stored key with id 1 is the first upload's, not the retry's random bytes.
      const taken: OneTimePrekeyRecord[] = [];
      for (let i = 0; i < 4; i++) {
        const t = await store.takePrekeys(w.deviceId);
        if (t.ec) taken.push(t.ec);
      }
      const first = w.oneTimeEc?.find((k) => k.keyId === 1);
      assert.deepEqual(
        taken.find((k) => k.keyId === 1),
        first,
      );
    });

    test("more one-time prekeys than the limit are refused and none of the upload is kept", async (store) => {
      const w = firstWrite({ oneTimeEc: ec(1, 8), oneTimeKyber: kyber(1, 2) });
      await store.putKeys(w, 10);
      await rejectsWith(store.putKeys({ ...base(w), oneTimeEc: ec(100, 3) }, 10), "limit");
      await rejectsWith(store.putKeys({ ...base(w), oneTimeKyber: kyber(100, 9) }, 10), "limit");
      assert.deepEqual(await store.countPrekeys(w.deviceId), { ec: 8, kyber: 2 });
      // Exactly up to the limit is fine, and stored ids do not count twice.
      assert.deepEqual(await store.putKeys({ ...base(w), oneTimeEc: [...ec(1, 8), ...ec(100, 2)] }, 10), {
        ec: 10,
        kyber: 2,
      });
    });

    test("takes hand out every one-time prekey once, with what remains, then none", async (store) => {
      const w = firstWrite({ oneTimeEc: ec(1, 3), oneTimeKyber: kyber(50, 2) });
      await store.putKeys(w, 100);
      const ecTaken: OneTimePrekeyRecord[] = [];
      const kyberTaken: OneTimePrekeyRecord[] = [];
      const remaining = [];
      for (let i = 0; i < 4; i++) {
        const t = await store.takePrekeys(w.deviceId);
        if (t.ec) ecTaken.push(t.ec);
        if (t.kyber) kyberTaken.push(t.kyber);
        remaining.push(t.remaining);
      }
      assert.deepEqual(remaining, [
        { ec: 2, kyber: 1 },
        { ec: 1, kyber: 0 },
        { ec: 0, kyber: 0 },
        { ec: 0, kyber: 0 },
      ]);
      assert.deepEqual(sortById(ecTaken), w.oneTimeEc);
      assert.deepEqual(sortById(kyberTaken), w.oneTimeKyber, "Kyber prekeys keep their signatures");
      assert.deepEqual(await store.countPrekeys(w.deviceId), { ec: 0, kyber: 0 });
      assert.ok(await store.getKeys(w.deviceId), "the signed prekeys stay");
    });

    test("concurrent takes never hand out one key twice", async (store) => {
      const w = firstWrite({ oneTimeEc: ec(1, 40), oneTimeKyber: kyber(1, 25) });
      await store.putKeys(w, 100);
      const takes = await Promise.all(Array.from({ length: 60 }, () => store.takePrekeys(w.deviceId)));
      const ecIds = takes.flatMap((t) => (t.ec ? [t.ec.keyId] : []));
      const kyberIds = takes.flatMap((t) => (t.kyber ? [t.kyber.keyId] : []));
      assert.equal(new Set(ecIds).size, ecIds.length, "an EC prekey was handed out twice");
      assert.equal(new Set(kyberIds).size, kyberIds.length, "a Kyber prekey was handed out twice");
      assert.deepEqual(
        ecIds.sort((a, b) => a - b),
        Array.from({ length: 40 }, (_, i) => i + 1),
      );
      assert.deepEqual(
        kyberIds.sort((a, b) => a - b),
        Array.from({ length: 25 }, (_, i) => i + 1),
      );
      assert.deepEqual(await store.countPrekeys(w.deviceId), { ec: 0, kyber: 0 });
    });

    test("concurrent takes of several devices stay within each device", async (store) => {
      const writes = Array.from({ length: 3 }, () =>
        firstWrite({ oneTimeEc: ec(1, 5), oneTimeKyber: kyber(1, 5) }),
      );
      await Promise.all(writes.map((w) => store.putKeys(w, 100)));
      const takes = await Promise.all(
        writes.flatMap((w) => Array.from({ length: 4 }, () => store.takePrekeys(w.deviceId))),
      );
      assert.equal(takes.filter((t) => t.ec !== undefined && t.kyber !== undefined).length, 12);
      for (const w of writes) assert.deepEqual(await store.countPrekeys(w.deviceId), { ec: 1, kyber: 1 });
    });

    test("deleting a device's keys removes everything, and is idempotent", async (store) => {
      const w = firstWrite({ oneTimeEc: ec(1, 3), oneTimeKyber: kyber(1, 3) });
      await store.putKeys(w, 100);
      await store.deleteKeys(w.deviceId);
      await store.deleteKeys(w.deviceId);
      assert.equal(await store.getKeys(w.deviceId), undefined);
      assert.deepEqual(await store.countPrekeys(w.deviceId), { ec: 0, kyber: 0 });
      assert.deepEqual(await store.takePrekeys(w.deviceId), { remaining: { ec: 0, kyber: 0 } });
    });
  });
}

function id(): string {
  return `dv_${randomUUID().replaceAll("-", "").slice(0, 26)}`;
}

function bytes(n: number): Uint8Array {
  return new Uint8Array(randomBytes(n));
}

function signedKey(keyId: number, size: number): SignedPrekeyRecord {
  return { keyId, publicKey: bytes(size), signature: bytes(64), uploadedAtMs: 1_700_000_000_000 + keyId };
}

function ec(from: number, count: number): OneTimePrekeyRecord[] {
  return Array.from({ length: count }, (_, i) => ({ keyId: from + i, publicKey: bytes(33) }));
}

function kyber(from: number, count: number): OneTimePrekeyRecord[] {
  return Array.from({ length: count }, (_, i) => ({
    keyId: from + i,
    publicKey: bytes(1569),
    signature: bytes(64),
  }));
}

function firstWrite(extra: Partial<DeviceKeysWrite> = {}): DeviceKeysWrite {
  return {
    deviceId: id(),
    userId: `u_${randomUUID().replaceAll("-", "").slice(0, 26)}`,
    identityKey: bytes(33),
    registrationId: 1 + Math.floor(Math.random() * 16_000),
    signedPrekey: signedKey(1, 33),
    kyberLastResort: signedKey(1, 1569),
    ...extra,
  };
}

// The fields of a later write: same device, identity and registration id, nothing else.
function base(w: DeviceKeysWrite): DeviceKeysWrite {
  return {
    deviceId: w.deviceId,
    userId: w.userId,
    identityKey: w.identityKey,
    registrationId: w.registrationId,
  };
}

function sortById(keys: OneTimePrekeyRecord[]): OneTimePrekeyRecord[] {
  return [...keys].sort((a, b) => a.keyId - b.keyId);
}

async function rejectsWith(promise: Promise<unknown>, kind: StoreErrorKind): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(isStoreError(err, kind), `expected StoreError ${kind}, got ${String(err)}`);
    return true;
  });
}
