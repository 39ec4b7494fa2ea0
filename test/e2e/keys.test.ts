import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { IdentityKeyPair, KEMKeyPair, PrivateKey } from "@signalapp/libsignal-client";
import { KeyService } from "../../gen/switchboard/v1/keys_pb.js";
import { TestDevice, uniqueName } from "../helpers/device.js";
import { serverFixture } from "../helpers/fixture.js";

function signed(identity: IdentityKeyPair, keyId: number, key: Uint8Array) {
  // libsignal signs plain ArrayBuffer-backed bytes.
  const publicKey = new Uint8Array(key);
  return { keyId, publicKey, signature: identity.privateKey.sign(publicKey) };
}

/** A first upload as a real device makes it, with `count` one-time keys of each kind. */
function firstUpload(identity: IdentityKeyPair, count: number) {
  return {
    identityKey: identity.publicKey.serialize(),
    registrationId: 1 + Math.floor(Math.random() * 16_000),
    signedPrekey: signed(identity, 1, PrivateKey.generate().getPublicKey().serialize()),
    kyberLastResortPrekey: signed(identity, 1_000_000, KEMKeyPair.generate().getPublicKey().serialize()),
    oneTimePrekeys: Array.from({ length: count }, (_, i) => ({
      keyId: 1 + i,
      publicKey: PrivateKey.generate().getPublicKey().serialize(),
    })),
    oneTimeKyberPrekeys: Array.from({ length: count }, (_, i) =>
      signed(identity, 1 + i, KEMKeyPair.generate().getPublicKey().serialize()),
    ),
  };
}

describe("the key directory through a gateway (one server process, real gRPC)", () => {
  const fx = serverFixture();

  it("hands out each one-time prekey once and tells the device on its stream when it runs low", async () => {
    const alice = fx.track(await TestDevice.register(fx.server.url, uniqueName("alice")));
    const bob = fx.track(await TestDevice.register(fx.server.url, uniqueName("bob")));
    const aliceKeys = createClient(KeyService, alice.transport);
    const bobKeys = createClient(KeyService, bob.transport);

    const identity = IdentityKeyPair.generate();
    const { counts } = await aliceKeys.uploadKeys(firstUpload(identity, 11));
    assert.equal(counts?.oneTimeEcPrekeys, 11);
    alice.connect();
    await alice.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "alice caught up");

    const seen = new Set<number>();
    for (let i = 0; i < 2; i++) {
      const { bundles } = await bobKeys.getBundles({ userId: alice.userId });
      assert.equal(bundles.length, 1);
      const b = bundles[0]!;
      assert.deepEqual(new Uint8Array(b.identityKey), new Uint8Array(identity.publicKey.serialize()));
      assert.ok(b.oneTimePrekey, "a one-time EC prekey while any is left");
      assert.equal(b.kyberPrekeyIsLastResort, false);
      assert.ok(!seen.has(b.oneTimePrekey.keyId), "never the same one-time prekey twice");
      seen.add(b.oneTimePrekey.keyId);
    }
    // Nine of each are left, under the threshold of ten: the device hears it on its stream.
    const notice = await alice.waitFor(() => alice.ofCase("prekeysLow")[0], "prekeys_low frame");
    assert.equal(notice.oneTimeEcRemaining, 9);
  });

  it("refuses a prekey whose signature does not verify, naming it, and stores nothing", async () => {
    const carol = fx.track(await TestDevice.register(fx.server.url, uniqueName("carol")));
    const keys = createClient(KeyService, carol.transport);
    const identity = IdentityKeyPair.generate();
    const upload = firstUpload(identity, 2);
    upload.signedPrekey = {
      ...upload.signedPrekey,
      signature: IdentityKeyPair.generate().privateKey.sign(new Uint8Array(upload.signedPrekey.publicKey)),
    };
    await assert.rejects(keys.uploadKeys(upload), (err: unknown) => {
      const e = ConnectError.from(err);
      return e.code === Code.InvalidArgument && /signed_prekey/.test(e.rawMessage);
    });
    const { counts } = await keys.getPrekeyCounts({});
    assert.equal(counts?.oneTimeEcPrekeys ?? 0, 0);
  });
});
