import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { generateInitialKeys } from "./keys.js";
import { MemoryKeyDirectory } from "./memory-directory.js";
import { DecryptError, type DeviceCiphertext, PairwiseCipher, PairwiseMessageType } from "./pairwise.js";
import { type DeviceRef, type IdentityChangeEvent, SignalStores, UntrustedIdentityError } from "./stores.js";

const text = (s: string) => new TextEncoder().encode(s);
const str = (b: Uint8Array) => new TextDecoder().decode(b);

interface Device {
  ref: DeviceRef;
  dir: string;
  stores: SignalStores;
  cipher: PairwiseCipher;
  changes: IdentityChangeEvent[];
}

let root: string;
let directory: MemoryKeyDirectory;

async function openDevice(ref: DeviceRef, dir: string, changes: IdentityChangeEvent[] = []): Promise<Device> {
  const stores = await SignalStores.open(dir, { onIdentityChange: (e) => changes.push(e) });
  return { ref, dir, stores, cipher: new PairwiseCipher(stores, ref, directory.fetcherFor(ref)), changes };
}

async function newDevice(userId: string, deviceId: string): Promise<Device> {
  const ref = { userId, deviceId };
  const device = await openDevice(ref, join(root, deviceId));
  directory.upload(ref, await generateInitialKeys(device.stores, { ec: 5, kyber: 3 }));
  return device;
}

function copyFor(out: DeviceCiphertext[], to: Device): DeviceCiphertext {
  const copy = out.find((c) => c.deviceId === to.ref.deviceId && c.userId === to.ref.userId);
  assert.ok(copy, `no ciphertext for ${to.ref.deviceId}`);
  return copy;
}

describe("pairwise sessions", () => {
  let alice1: Device;
  let alice2: Device;
  let bob1: Device;
  let bob2: Device;

  before(async () => {
    root = await mkdtemp(join(tmpdir(), "sb-pairwise-"));
    directory = new MemoryKeyDirectory();
    alice1 = await newDevice("u_alice", "dv_a1");
    alice2 = await newDevice("u_alice", "dv_a2");
    bob1 = await newDevice("u_bob", "dv_b1");
    bob2 = await newDevice("u_bob", "dv_b2");
  });
  after(() => rm(root, { recursive: true, force: true }));

  test("a message to every device of the recipient and the sender's other devices, both ways", async () => {
    const out = await alice1.cipher.encrypt(text("hi bob"), [bob1.ref, bob2.ref, alice2.ref]);
    assert.equal(out.length, 3);
    for (const c of out) assert.equal(c.type, PairwiseMessageType.PreKey);
    assert.equal(copyFor(out, bob1).registrationId, bob1.stores.registrationId);
    // Each bundle consumed one one-time EC and one one-time Kyber prekey.
    assert.deepEqual(directory.counts("dv_b1"), { oneTimeEcPrekeys: 4, oneTimeKyberPrekeys: 2 });
    for (const d of [bob1, bob2, alice2]) {
      assert.equal(str(await d.cipher.decrypt(alice1.ref, copyFor(out, d))), "hi bob");
    }
    // The recipient removed the one-time prekeys it used.
    assert.equal(bob1.stores.preKeys.count(), 4);
    assert.equal(bob1.stores.kyberPreKeys.oneTimeCount(), 2);

    // Bob answers on the session Alice opened: a Whisper message, no bundle fetched.
    const reply = await bob1.cipher.encrypt(text("hi alice"), [alice1.ref]);
    assert.equal(reply[0]?.type, PairwiseMessageType.Whisper);
    assert.equal(str(await alice1.cipher.decrypt(bob1.ref, copyFor(reply, alice1))), "hi alice");
    // After the answer, Alice's messages are Whisper messages too.
    const next = await alice1.cipher.encrypt(text("how are you"), [bob1.ref]);
    assert.equal(next[0]?.type, PairwiseMessageType.Whisper);
    assert.equal(str(await bob1.cipher.decrypt(alice1.ref, copyFor(next, bob1))), "how are you");
    assert.deepEqual(directory.counts("dv_b1"), { oneTimeEcPrekeys: 4, oneTimeKyberPrekeys: 2 });
  });

  test("out-of-order delivery decrypts; a duplicate is refused as a duplicate", async () => {
    const msgs: DeviceCiphertext[] = [];
    for (let i = 0; i < 5; i++)
      msgs.push(copyFor(await bob2.cipher.encrypt(text(`m${i}`), [alice1.ref]), alice1));
    // Alice 1 opened this session in the first test and Bob 2 decrypted it: Whisper messages.
    for (const m of msgs) assert.equal(m.type, PairwiseMessageType.Whisper);
    const order = [3, 0, 4, 1, 2];
    for (const i of order)
      assert.equal(str(await alice1.cipher.decrypt(bob2.ref, msgs[i] as DeviceCiphertext)), `m${i}`);
    await assert.rejects(alice1.cipher.decrypt(bob2.ref, msgs[3] as DeviceCiphertext), (err: unknown) => {
      assert.ok(err instanceof DecryptError);
      assert.equal(err.reason, "duplicate");
      assert.match(err.message, /already received/);
      return true;
    });
  });

  test("a PreKey message delivered twice: the second copy is a duplicate", async () => {
    const carol = await newDevice("u_carol", "dv_c1");
    const out = await carol.cipher.encrypt(text("first"), [bob1.ref]);
    const first = copyFor(out, bob1);
    assert.equal(first.type, PairwiseMessageType.PreKey);
    assert.equal(str(await bob1.cipher.decrypt(carol.ref, first)), "first");
    await assert.rejects(bob1.cipher.decrypt(carol.ref, first), (err: unknown) => {
      assert.ok(err instanceof DecryptError);
      assert.equal(err.reason, "duplicate");
      return true;
    });
  });

  test("tampered ciphertext is refused with a clear error", async () => {
    const out = copyFor(await alice1.cipher.encrypt(text("secret"), [bob1.ref]), bob1);
    const bad = new Uint8Array(out.ciphertext);
    bad[bad.length - 12] = (bad[bad.length - 12] as number) ^ 1;
    await assert.rejects(bob1.cipher.decrypt(alice1.ref, { ...out, ciphertext: bad }), (err: unknown) => {
      assert.ok(err instanceof DecryptError);
      assert.equal(err.reason, "invalid");
      assert.match(err.message, /from device dv_a1 of user u_alice/);
      return true;
    });
    await assert.rejects(
      bob1.cipher.decrypt(alice1.ref, { type: PairwiseMessageType.Whisper, ciphertext: text("x") }),
      {
        name: "DecryptError",
        message: /malformed/,
      },
    );
    // The genuine message still decrypts.
    assert.equal(str(await bob1.cipher.decrypt(alice1.ref, out)), "secret");
  });

  test("the stores reopened from disk mid-conversation carry on", async () => {
    const inFlight = copyFor(await alice1.cipher.encrypt(text("before restart"), [bob2.ref]), bob2);
    // Both sides restart: new objects over the same directories.
    alice1 = await openDevice(alice1.ref, alice1.dir, alice1.changes);
    bob2 = await openDevice(bob2.ref, bob2.dir, bob2.changes);
    assert.equal(str(await bob2.cipher.decrypt(alice1.ref, inFlight)), "before restart");
    const back = copyFor(await bob2.cipher.encrypt(text("after restart"), [alice1.ref]), alice1);
    assert.equal(back.type, PairwiseMessageType.Whisper);
    assert.equal(str(await alice1.cipher.decrypt(bob2.ref, back)), "after restart");
    const again = copyFor(await alice1.cipher.encrypt(text("still here"), [bob2.ref]), bob2);
    assert.equal(str(await bob2.cipher.decrypt(alice1.ref, again)), "still here");
  });

  test("a device without keys is refused before anything is encrypted", async () => {
    await assert.rejects(alice1.cipher.encrypt(text("x"), [{ userId: "u_bob", deviceId: "dv_gone" }]), {
      name: "DevicesWithoutKeysError",
      message: /device dv_gone of user u_bob/,
    });
  });
});

describe("identity changes", () => {
  before(async () => {
    root = await mkdtemp(join(tmpdir(), "sb-identity-"));
    directory = new MemoryKeyDirectory();
  });
  after(() => rm(root, { recursive: true, force: true }));

  test("an unverified contact's new key is accepted and surfaced; a verified one's is refused", async () => {
    const alice = await newDevice("u_alice", "dv_a1");
    const bob = await newDevice("u_bob", "dv_b1");
    const dave = await newDevice("u_dave", "dv_d1");
    for (const peer of [bob, dave]) {
      const out = await alice.cipher.encrypt(text("hello"), [peer.ref]);
      await peer.cipher.decrypt(alice.ref, copyFor(out, peer));
    }
    const bobKey = bob.stores.identity.keyPair().publicKey;
    const remembered = alice.stores.identity.identityOf(bob.ref);
    assert.ok(remembered?.key.equals(bobKey));
    assert.equal(remembered?.verified, false);
    // Alice compared safety numbers with Bob (not with Dave).
    assert.equal(await alice.stores.identity.setVerified(bob.ref, bobKey, true), true);
    assert.equal(
      await alice.stores.identity.setVerified(bob.ref, dave.stores.identity.keyPair().publicKey, true),
      false,
      "verifying a key we do not hold is refused",
    );

    // The directory now serves other identities for both devices (a compromised server, say).
    const fakeBob = await openDevice(bob.ref, join(root, "fake-b1"));
    directory.replace(bob.ref, await generateInitialKeys(fakeBob.stores, { ec: 2, kyber: 1 }));
    const fakeDave = await openDevice(dave.ref, join(root, "fake-d1"));
    directory.replace(dave.ref, await generateInitialKeys(fakeDave.stores, { ec: 2, kyber: 1 }));

    // Verified Bob: the new bundle is refused, the app is told, nothing is encrypted.
    await alice.cipher.dropSession(bob.ref);
    await assert.rejects(alice.cipher.encrypt(text("to bob"), [bob.ref]), (err: unknown) => {
      assert.ok(err instanceof UntrustedIdentityError);
      assert.match(err.message, /device dv_b1 of user u_bob/);
      return true;
    });
    // An incoming message under the substituted key is refused as well.
    const fakeMsg = await fakeBob.cipher.encrypt(text("it's me, bob"), [alice.ref]);
    await assert.rejects(alice.cipher.decrypt(bob.ref, copyFor(fakeMsg, alice)), UntrustedIdentityError);
    const refused = alice.changes.filter((e) => e.device.deviceId === "dv_b1");
    assert.ok(refused.length >= 1);
    for (const e of refused) {
      assert.equal(e.outcome, "refused");
      assert.equal(e.wasVerified, true);
      assert.ok(e.previousKey.equals(bobKey));
      assert.ok(e.newKey.equals(fakeBob.stores.identity.keyPair().publicKey));
    }
    assert.ok(alice.stores.identity.identityOf(bob.ref)?.key.equals(bobKey), "the verified key stays");

    // Unverified Dave: the new key is accepted (trust on first use) and surfaced.
    await alice.cipher.dropSession(dave.ref);
    const toDave = await alice.cipher.encrypt(text("to dave"), [dave.ref]);
    assert.equal(str(await fakeDave.cipher.decrypt(alice.ref, copyFor(toDave, fakeDave))), "to dave");
    const accepted = alice.changes.filter((e) => e.device.deviceId === "dv_d1");
    assert.equal(accepted.length, 1);
    assert.equal(accepted[0]?.outcome, "accepted");
    assert.equal(accepted[0]?.wasVerified, false);

    // The user re-verifies Bob's new key: accepted explicitly, sessions work again.
    await alice.stores.identity.trustIdentity(bob.ref, fakeBob.stores.identity.keyPair().publicKey, true);
    const toBob = await alice.cipher.encrypt(text("ok then"), [bob.ref]);
    assert.equal(str(await fakeBob.cipher.decrypt(alice.ref, copyFor(toBob, fakeBob))), "ok then");

    // Trust decisions survive a restart.
    const reopened = await SignalStores.open(alice.dir);
    const after = reopened.identity.identityOf(bob.ref);
    assert.equal(after?.verified, true);
    assert.ok(after?.key.equals(fakeBob.stores.identity.keyPair().publicKey));
  });
});
