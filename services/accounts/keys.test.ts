import { strict as assert } from "node:assert";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, afterEach, beforeEach, describe, it } from "node:test";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import {
  IdentityKeyPair,
  KEMKeyPair,
  KEMPublicKey,
  PreKeyBundle,
  PrivateKey,
  PublicKey,
} from "@signalapp/libsignal-client";
import type { BusEvent } from "../../gen/switchboard/internal/v1/events_pb.js";
import { KeyService } from "../../gen/switchboard/v1/keys_pb.js";
import { InProcessBus } from "../bus/in-process.js";
import { Tokens } from "../common/auth.js";
import { errorBoundary, toConnectError } from "../common/boundary.js";
import { DomainError } from "../common/errors.js";
import { createLogger } from "../common/log.js";
import { LocalRateLimiter } from "../common/rate-limit/memory.js";
import { type LmdbStoreEngine, openLmdbStore } from "../store/lmdb/engine.js";
import { Accounts } from "./accounts.js";
import {
  DEFAULT_KEYS_OPTIONS,
  Keys,
  type KeysOptions,
  type SignedPrekeyInput,
  type UploadInput,
} from "./keys.js";
import { keyService } from "./keys-handler.js";

const log = createLogger({ level: "silent" });
const tokens = new Tokens(new Uint8Array(32).fill(7), 3600);

/** A device's key material as a client holds it, and the upload that publishes it. */
interface ClientKeys {
  identity: IdentityKeyPair;
  registrationId: number;
  upload: UploadInput;
}

function signedBy(identity: IdentityKeyPair, keyId: number, publicKey: Uint8Array): SignedPrekeyInput {
  const bytes = new Uint8Array(publicKey);
  return { keyId, publicKey: bytes, signature: identity.privateKey.sign(bytes) };
}

function ecPrekeys(from: number, count: number) {
  return Array.from({ length: count }, (_, i) => ({
    keyId: from + i,
    publicKey: PrivateKey.generate().getPublicKey().serialize(),
  }));
}

function kyberPrekeys(identity: IdentityKeyPair, from: number, count: number): SignedPrekeyInput[] {
  return Array.from({ length: count }, (_, i) =>
    signedBy(identity, from + i, KEMKeyPair.generate().getPublicKey().serialize()),
  );
}

function clientKeys(ec = 5, kyber = 5): ClientKeys {
  const identity = IdentityKeyPair.generate();
  const registrationId = 1 + Math.floor(Math.random() * 16_000);
  return {
    identity,
    registrationId,
    upload: {
      identityKey: identity.publicKey.serialize(),
      registrationId,
      signedPrekey: signedBy(identity, 1, PrivateKey.generate().getPublicKey().serialize()),
      // Last-resort ids start high so that one-time ids (from 1) never meet them.
      kyberLastResortPrekey: signedBy(identity, 1_000_000, KEMKeyPair.generate().getPublicKey().serialize()),
      oneTimePrekeys: ecPrekeys(1, ec),
      oneTimeKyberPrekeys: kyberPrekeys(identity, 1, kyber),
    },
  };
}

/** A later upload: nothing but what is given. */
function later(extra: Partial<UploadInput> = {}): UploadInput {
  return {
    identityKey: new Uint8Array(),
    registrationId: 0,
    oneTimePrekeys: [],
    oneTimeKyberPrekeys: [],
    ...extra,
  };
}

/** Asserts the code and message a client gets (a manager's domain error as the boundary sends it). */
async function rejectsWithCode(promise: Promise<unknown>, code: Code, message?: RegExp): Promise<void> {
  await assert.rejects(promise, (thrown: unknown) => {
    const err = thrown instanceof DomainError ? toConnectError(thrown) : thrown;
    assert.ok(err instanceof ConnectError, `expected a ConnectError, got ${String(err)}`);
    assert.equal(err.code, code, `expected ${Code[code]}, got ${Code[err.code]}: ${err.rawMessage}`);
    if (message) assert.match(err.rawMessage, message);
    return true;
  });
}

const dirs: string[] = [];
after(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

describe("key directory", () => {
  let engine: LmdbStoreEngine;
  let bus: InProcessBus;
  let accounts: Accounts;
  let broadcasts: BusEvent[];
  let clock: number;

  beforeEach(async () => {
    const dir = await mkdtemp(join(tmpdir(), "switchboard-keys-"));
    dirs.push(dir);
    engine = await openLmdbStore({ path: dir });
    bus = new InProcessBus(log);
    broadcasts = [];
    bus.onBroadcast((events) => broadcasts.push(...events));
    accounts = new Accounts(engine.accounts, tokens, bus, log, {
      maxDevicesPerUser: 5,
      linkCodeTtlSeconds: 60,
    });
    clock = 1_700_000_000_000;
  });

  afterEach(async () => {
    await bus.close();
    await engine.close();
  });

  const keysWith = (options: Partial<KeysOptions> = {}) =>
    new Keys(engine.keys, engine.accounts, bus, log, {
      ...DEFAULT_KEYS_OPTIONS,
      now: () => clock,
      ...options,
    });

  let names = 0;
  async function newUser(devices = 1): Promise<{ userId: string; deviceIds: string[] }> {
    const { user, credential } = await accounts.register(`user_${names++}`, "", "first");
    const deviceIds = [credential.deviceId];
    for (let i = 1; i < devices; i++) {
      const { code } = await accounts.createLinkCode(user.userId, credential.deviceId);
      deviceIds.push((await accounts.linkDevice(code, `device ${i}`)).credential.deviceId);
    }
    return { userId: user.userId, deviceIds };
  }

  it("stores a first upload with real keys and reports its counts", async () => {
    const keys = keysWith();
    const alice = await newUser();
    const device = alice.deviceIds[0]!;
    const client = clientKeys(7, 4);
    assert.deepEqual(await keys.upload(alice.userId, device, client.upload), { ec: 7, kyber: 4 });
    const status = await keys.status(device);
    assert.deepEqual(status.counts, { ec: 7, kyber: 4 });
    assert.deepEqual(status.keys?.identityKey, client.identity.publicKey.serialize());
    assert.equal(status.keys?.registrationId, client.registrationId);
    assert.equal(status.keys?.signedPrekey.uploadedAtMs, clock);
  });

  it("refuses a bad signature, naming the key, and stores nothing", async () => {
    const keys = keysWith();
    const alice = await newUser();
    const device = alice.deviceIds[0]!;
    const other = IdentityKeyPair.generate();
    const client = clientKeys();
    const badSigned = {
      ...client.upload,
      signedPrekey: signedBy(other, 1, client.upload.signedPrekey!.publicKey),
    };
    await rejectsWithCode(
      keys.upload(alice.userId, device, badSigned),
      Code.InvalidArgument,
      /^signed_prekey \(id 1\)/,
    );
    const badLastResort = {
      ...client.upload,
      kyberLastResortPrekey: signedBy(other, 1_000_000, client.upload.kyberLastResortPrekey!.publicKey),
    };
    await rejectsWithCode(
      keys.upload(alice.userId, device, badLastResort),
      Code.InvalidArgument,
      /^kyber_last_resort_prekey \(id 1000000\)/,
    );
    const oneTime = [...client.upload.oneTimeKyberPrekeys];
    oneTime[3] = signedBy(other, oneTime[3]!.keyId, oneTime[3]!.publicKey);
    await rejectsWithCode(
      keys.upload(alice.userId, device, { ...client.upload, oneTimeKyberPrekeys: oneTime }),
      Code.InvalidArgument,
      /^one_time_kyber_prekeys\[3\] \(id 4\): the signature does not verify/,
    );
    // A signature of the EC key over the Kyber key's bytes, or a truncated one.
    const swapped = {
      ...client.upload.signedPrekey!,
      signature: client.upload.kyberLastResortPrekey!.signature,
    };
    await rejectsWithCode(
      keys.upload(alice.userId, device, { ...client.upload, signedPrekey: swapped }),
      Code.InvalidArgument,
      /signed_prekey/,
    );
    const short = {
      ...client.upload.signedPrekey!,
      signature: client.upload.signedPrekey!.signature.slice(0, 63),
    };
    await rejectsWithCode(
      keys.upload(alice.userId, device, { ...client.upload, signedPrekey: short }),
      Code.InvalidArgument,
      /signature is 64 bytes/,
    );
    assert.equal((await keys.status(device)).keys, undefined);
    assert.deepEqual((await keys.status(device)).counts, { ec: 0, kyber: 0 });
  });

  it("verifies later uploads against the stored identity key", async () => {
    const keys = keysWith();
    const alice = await newUser();
    const device = alice.deviceIds[0]!;
    const client = clientKeys(0, 0);
    await keys.upload(alice.userId, device, client.upload);
    const forged = kyberPrekeys(IdentityKeyPair.generate(), 1, 2);
    await rejectsWithCode(
      keys.upload(alice.userId, device, later({ oneTimeKyberPrekeys: forged })),
      Code.InvalidArgument,
      /one_time_kyber_prekeys\[0\]/,
    );
    assert.deepEqual(
      await keys.upload(
        alice.userId,
        device,
        later({ oneTimeKyberPrekeys: kyberPrekeys(client.identity, 1, 2) }),
      ),
      { ec: 0, kyber: 2 },
    );
  });

  it("never changes a device's identity key or registration id, but a new device has its own", async () => {
    const keys = keysWith();
    const alice = await newUser(2);
    const [first, second] = alice.deviceIds as [string, string];
    const client = clientKeys();
    await keys.upload(alice.userId, first, client.upload);
    const impostor = clientKeys();
    await rejectsWithCode(
      keys.upload(alice.userId, first, impostor.upload),
      Code.FailedPrecondition,
      /identity_key/,
    );
    await rejectsWithCode(
      keys.upload(alice.userId, first, {
        ...client.upload,
        registrationId: (client.registrationId % 16_000) + 1,
      }),
      Code.FailedPrecondition,
      /registration_id/,
    );
    assert.deepEqual((await keys.status(first)).keys?.identityKey, client.identity.publicKey.serialize());
    // Sending the same identity again is fine (the whole first upload retried).
    await keys.upload(alice.userId, first, client.upload);
    await keys.upload(alice.userId, second, impostor.upload);
    assert.deepEqual((await keys.status(second)).keys?.identityKey, impostor.identity.publicKey.serialize());
  });

  it("needs the identity key, registration id and both signed prekeys on the first upload", async () => {
    const keys = keysWith();
    const alice = await newUser();
    const device = alice.deviceIds[0]!;
    const { upload } = clientKeys();
    const { signedPrekey: _s, ...noSigned } = upload;
    await rejectsWithCode(
      keys.upload(alice.userId, device, noSigned),
      Code.FailedPrecondition,
      /signed_prekey/,
    );
    const { kyberLastResortPrekey: _k, ...noKyber } = upload;
    await rejectsWithCode(
      keys.upload(alice.userId, device, noKyber),
      Code.FailedPrecondition,
      /kyber_last_resort/,
    );
    await rejectsWithCode(
      keys.upload(alice.userId, device, { ...upload, identityKey: new Uint8Array() }),
      Code.FailedPrecondition,
      /identity_key: required/,
    );
    await rejectsWithCode(
      keys.upload(alice.userId, device, { ...upload, registrationId: 0 }),
      Code.FailedPrecondition,
      /registration_id: required/,
    );
    await rejectsWithCode(keys.upload(alice.userId, "dv_00000000000000000000000000", upload), Code.NotFound);
  });

  it("rotates the signed prekey and the last resort through the same call", async () => {
    const keys = keysWith();
    const alice = await newUser();
    const device = alice.deviceIds[0]!;
    const client = clientKeys(3, 3);
    await keys.upload(alice.userId, device, client.upload);
    clock += 86_400_000;
    const signedPrekey = signedBy(client.identity, 2, PrivateKey.generate().getPublicKey().serialize());
    const kyberLastResortPrekey = signedBy(
      client.identity,
      1_000_001,
      KEMKeyPair.generate().getPublicKey().serialize(),
    );
    assert.deepEqual(
      await keys.upload(alice.userId, device, later({ signedPrekey, kyberLastResortPrekey })),
      {
        ec: 3,
        kyber: 3,
      },
    );
    const stored = (await keys.status(device)).keys;
    assert.equal(stored?.signedPrekey.keyId, 2);
    assert.equal(stored?.signedPrekey.uploadedAtMs, clock);
    assert.deepEqual(stored?.kyberLastResort.publicKey, kyberLastResortPrekey.publicKey);
  });

  it("enforces sizes, per-upload limits, distinct ids and the stored limit", async () => {
    const keys = keysWith({ maxEcPrekeysPerUpload: 10, maxKyberPrekeysPerUpload: 4, maxStoredPerKind: 12 });
    const alice = await newUser();
    const device = alice.deviceIds[0]!;
    const client = clientKeys(0, 0);
    await keys.upload(alice.userId, device, client.upload);
    const up = (extra: Partial<UploadInput>) => keys.upload(alice.userId, device, later(extra));
    await rejectsWithCode(
      up({ oneTimePrekeys: ecPrekeys(1, 11) }),
      Code.InvalidArgument,
      /at most 10 per upload/,
    );
    await rejectsWithCode(
      up({ oneTimeKyberPrekeys: kyberPrekeys(client.identity, 1, 5) }),
      Code.InvalidArgument,
      /at most 4 per upload/,
    );
    await rejectsWithCode(
      up({ oneTimePrekeys: [...ecPrekeys(1, 2), ...ecPrekeys(2, 1)] }),
      Code.InvalidArgument,
      /key id 2 appears twice/,
    );
    await rejectsWithCode(
      up({ oneTimePrekeys: [{ keyId: 1, publicKey: new Uint8Array(32) }] }),
      Code.InvalidArgument,
      /one_time_prekeys\[0\]\.public_key: .*33 bytes/,
    );
    await rejectsWithCode(
      up({ oneTimePrekeys: [{ keyId: 1, publicKey: new Uint8Array(33) }] }),
      Code.InvalidArgument,
      /not a serialized EC public key/,
    );
    const notKem = signedBy(client.identity, 1, new Uint8Array(3000));
    await rejectsWithCode(up({ oneTimeKyberPrekeys: [notKem] }), Code.InvalidArgument, /1 to 2048 bytes/);
    await rejectsWithCode(
      up({
        oneTimeKyberPrekeys: [
          signedBy(client.identity, 1_000_000, KEMKeyPair.generate().getPublicKey().serialize()),
        ],
      }),
      Code.InvalidArgument,
      /last-resort prekey's id/,
    );
    await rejectsWithCode(up({ registrationId: 20_000 }), Code.InvalidArgument, /registration_id/);
    assert.deepEqual(await up({ oneTimePrekeys: ecPrekeys(1, 10) }), { ec: 10, kyber: 0 });
    await rejectsWithCode(up({ oneTimePrekeys: ecPrekeys(11, 3) }), Code.ResourceExhausted, /at most 12/);
    assert.deepEqual(await up({ oneTimePrekeys: ecPrekeys(11, 2) }), { ec: 12, kyber: 0 });
  });

  it("hands out one bundle per active device, consuming one one-time prekey of each kind", async () => {
    const keys = keysWith();
    const alice = await newUser(4);
    const bob = await newUser();
    const [a1, a2, a3, a4] = alice.deviceIds as [string, string, string, string];
    const c1 = clientKeys(2, 1);
    const c2 = clientKeys(0, 0);
    await keys.upload(alice.userId, a1, c1.upload);
    await keys.upload(alice.userId, a2, c2.upload);
    await keys.upload(alice.userId, a4, clientKeys().upload);
    await accounts.revokeDevice(alice.userId, a4);
    const requester = { userId: bob.userId, deviceId: bob.deviceIds[0]! };

    const first = await keys.bundles(requester, alice.userId);
    assert.deepEqual(
      first.bundles.map((b) => b.deviceId),
      [a1, a2],
      "revoked devices and devices without keys are left out",
    );
    assert.deepEqual(first.devicesWithoutKeys, [a3]);
    const [b1, b2] = first.bundles as [(typeof first.bundles)[0], (typeof first.bundles)[0]];
    assert.equal(b1.registrationId, c1.registrationId);
    assert.deepEqual(b1.identityKey, c1.identity.publicKey.serialize());
    assert.equal(b1.signedPrekey?.keyId, 1);
    assert.equal(b1.oneTimePrekey?.keyId, 1);
    assert.equal(b1.kyberPrekey?.keyId, 1);
    assert.equal(b1.kyberPrekeyIsLastResort, false);
    assert.equal(b2.oneTimePrekey, undefined, "a device without one-time prekeys gets none");
    assert.equal(b2.kyberPrekey?.keyId, 1_000_000);
    assert.equal(b2.kyberPrekeyIsLastResort, true);

    const second = await keys.bundles(requester, alice.userId, [a1]);
    assert.deepEqual(
      second.bundles.map((b) => [b.deviceId, b.oneTimePrekey?.keyId, b.kyberPrekeyIsLastResort]),
      [[a1, 2, true]],
    );
    const third = await keys.bundles(requester, alice.userId, [a1]);
    assert.equal(third.bundles[0]?.oneTimePrekey, undefined);
    assert.deepEqual((await keys.status(a1)).counts, { ec: 0, kyber: 0 });

    // Fetching one's own user leaves the calling device out.
    const own = await keys.bundles({ userId: alice.userId, deviceId: a1 }, alice.userId);
    assert.deepEqual(
      own.bundles.map((b) => b.deviceId),
      [a2],
    );
    await rejectsWithCode(keys.bundles(requester, "u_00000000000000000000000000"), Code.NotFound);
  });

  it("builds a libsignal PreKeyBundle whose signatures check out", async () => {
    const keys = keysWith();
    const alice = await newUser();
    const bob = await newUser();
    const client = clientKeys(1, 1);
    await keys.upload(alice.userId, alice.deviceIds[0]!, client.upload);
    const { bundles } = await keys.bundles({ userId: bob.userId, deviceId: bob.deviceIds[0]! }, alice.userId);
    const b = bundles[0]!;
    const identity = PublicKey.deserialize(new Uint8Array(b.identityKey));
    const signed = PublicKey.deserialize(new Uint8Array(b.signedPrekey!.publicKey));
    const kyber = KEMPublicKey.deserialize(new Uint8Array(b.kyberPrekey!.publicKey));
    assert.ok(identity.verify(signed.serialize(), new Uint8Array(b.signedPrekey!.signature)));
    assert.ok(identity.verify(kyber.serialize(), new Uint8Array(b.kyberPrekey!.signature)));
    const bundle = PreKeyBundle.new(
      b.registrationId,
      1,
      b.oneTimePrekey?.keyId ?? null,
      b.oneTimePrekey ? PublicKey.deserialize(new Uint8Array(b.oneTimePrekey.publicKey)) : null,
      b.signedPrekey!.keyId,
      signed,
      new Uint8Array(b.signedPrekey!.signature),
      identity,
      b.kyberPrekey!.keyId,
      kyber,
      new Uint8Array(b.kyberPrekey!.signature),
    );
    assert.equal(bundle.registrationId(), client.registrationId);
    assert.equal(bundle.preKeyId(), 1);
    assert.ok(bundle.identityKey().equals(client.identity.publicKey));
  });

  it("never hands one one-time prekey to two concurrent fetches", async () => {
    const keys = keysWith();
    const alice = await newUser();
    const device = alice.deviceIds[0]!;
    await keys.upload(alice.userId, device, clientKeys(20, 12).upload);
    const fetchers = await Promise.all(Array.from({ length: 5 }, () => newUser()));
    const results = await Promise.all(
      Array.from({ length: 30 }, (_, i) => {
        const f = fetchers[i % fetchers.length]!;
        return keys.bundles({ userId: f.userId, deviceId: f.deviceIds[0]! }, alice.userId);
      }),
    );
    const bundles = results.map((r) => r.bundles[0]!);
    const ecIds = bundles.flatMap((b) => (b.oneTimePrekey ? [b.oneTimePrekey.keyId] : []));
    const kyberIds = bundles.filter((b) => !b.kyberPrekeyIsLastResort).map((b) => b.kyberPrekey!.keyId);
    assert.deepEqual(
      [...ecIds].sort((a, b) => a - b),
      Array.from({ length: 20 }, (_, i) => i + 1),
    );
    assert.deepEqual(
      [...kyberIds].sort((a, b) => a - b),
      Array.from({ length: 12 }, (_, i) => i + 1),
    );
    assert.equal(bundles.filter((b) => b.kyberPrekeyIsLastResort).length, 18);
    assert.deepEqual((await keys.status(device)).counts, { ec: 0, kyber: 0 });
  });

  it("tells a device on its stream when a fetch leaves it low, at most once per interval", async () => {
    const keys = keysWith({ lowThreshold: 3, lowNoticeIntervalMs: 60_000 });
    const alice = await newUser();
    const bob = await newUser();
    const device = alice.deviceIds[0]!;
    await keys.upload(alice.userId, device, clientKeys(5, 10).upload);
    const fetch = () => keys.bundles({ userId: bob.userId, deviceId: bob.deviceIds[0]! }, alice.userId);
    await fetch(); // 4 EC and 9 Kyber left
    await fetch(); // 3 and 8
    assert.equal(broadcasts.length, 0);
    await fetch(); // 2 and 7: low
    assert.equal(broadcasts.length, 1);
    const event = broadcasts[0]!.event;
    assert.equal(event.case, "prekeysLow");
    if (event.case === "prekeysLow") {
      assert.equal(event.value.userId, alice.userId);
      assert.equal(event.value.deviceId, device);
      assert.equal(event.value.frame?.oneTimeEcRemaining, 2);
      assert.equal(event.value.frame?.oneTimeKyberRemaining, 7);
    }
    await fetch();
    assert.equal(broadcasts.length, 1, "throttled");
    clock += 60_000;
    await fetch();
    assert.equal(broadcasts.length, 2);
    const again = broadcasts[1]!.event;
    assert.equal(again.case === "prekeysLow" && again.value.frame?.oneTimeEcRemaining, 0);
  });

  it("limits bundle fetches per requesting device when a limiter is given", async () => {
    const limiter = new LocalRateLimiter();
    const keys = keysWith({ bundleRate: { limiter, limit: { name: "key-bundles", rate: 0.001, burst: 2 } } });
    const alice = await newUser();
    const bob = await newUser();
    const requester = { userId: bob.userId, deviceId: bob.deviceIds[0]! };
    await keys.bundles(requester, alice.userId);
    await keys.bundles(requester, alice.userId);
    await rejectsWithCode(keys.bundles(requester, alice.userId), Code.ResourceExhausted, /retry in/);
    await limiter.close();
  });

  it("deletes a revoked device's keys when the revocation is broadcast", async () => {
    const keys = keysWith();
    const stop = keys.watchRevocations();
    const alice = await newUser(2);
    const device = alice.deviceIds[1]!;
    await keys.upload(alice.userId, device, clientKeys(3, 3).upload);
    await accounts.revokeDevice(alice.userId, device);
    for (let i = 0; i < 50 && (await keys.status(device)).keys !== undefined; i++) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    assert.equal((await keys.status(device)).keys, undefined);
    assert.deepEqual((await keys.status(device)).counts, { ec: 0, kyber: 0 });
    stop();
  });

  it("serves KeyService with authentication, over the wire", async () => {
    const keys = keysWith();
    const transport = createRouterTransport(
      (router) => router.service(KeyService, keyService(keys, accounts, tokens)),
      {
        router: { interceptors: [errorBoundary(log)] },
      },
    );
    const client = createClient(KeyService, transport);
    const alice = await newUser();
    const bob = await newUser();
    const auth = async (userId: string, deviceId: string) => ({
      headers: { authorization: `Bearer ${(await tokens.issue(userId, deviceId, Date.now())).token}` },
    });
    await rejectsWithCode(client.getPrekeyCounts({}), Code.Unauthenticated);
    const asAlice = await auth(alice.userId, alice.deviceIds[0]!);
    const before = await client.getPrekeyCounts({}, asAlice);
    assert.equal(before.keysUploaded, false);
    const c = clientKeys(3, 2);
    const uploaded = await client.uploadKeys(
      {
        ...c.upload,
        oneTimePrekeys: [...c.upload.oneTimePrekeys],
        oneTimeKyberPrekeys: [...c.upload.oneTimeKyberPrekeys],
      },
      asAlice,
    );
    assert.equal(uploaded.counts?.oneTimeEcPrekeys, 3);
    assert.equal(uploaded.counts?.oneTimeKyberPrekeys, 2);
    const counts = await client.getPrekeyCounts({}, asAlice);
    assert.equal(counts.keysUploaded, true);
    assert.equal(counts.signedPrekeyId, 1);
    assert.equal(counts.kyberLastResortPrekeyId, 1_000_000);
    const asBob = await auth(bob.userId, bob.deviceIds[0]!);
    const { bundles } = await client.getBundles({ userId: alice.userId }, asBob);
    assert.equal(bundles.length, 1);
    assert.deepEqual(bundles[0]?.identityKey, c.identity.publicKey.serialize());
    await rejectsWithCode(client.getBundles({ userId: "nope" }, asBob), Code.InvalidArgument, /user_id/);
    await rejectsWithCode(
      client.getBundles({ userId: alice.userId, deviceIds: ["x"] }, asBob),
      Code.InvalidArgument,
      /device_ids/,
    );
    await accounts.revokeDevice(bob.userId, bob.deviceIds[0]!);
    await rejectsWithCode(
      client.getBundles({ userId: alice.userId }, asBob),
      Code.Unauthenticated,
      /revoked/,
    );
  });
});
