import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { GroupCipher, GroupDecryptError } from "./groups.js";
import { type DeviceRef, SignalStores } from "./stores.js";

const text = (s: string) => new TextEncoder().encode(s);
const str = (b: Uint8Array) => new TextDecoder().decode(b);

interface Member {
  ref: DeviceRef;
  dir: string;
  groups: GroupCipher;
}

let root: string;
before(async () => {
  root = await mkdtemp(join(tmpdir(), "sb-groups-"));
});
after(() => rm(root, { recursive: true, force: true }));

async function member(userId: string, deviceId: string, dir = join(root, deviceId)): Promise<Member> {
  const ref = { userId, deviceId };
  const stores = await SignalStores.open(dir);
  return { ref, dir, groups: await GroupCipher.open(stores, ref) };
}

/**
 * Hands a member's current sender key to the others. In the SDK the distribution message travels
 * inside a pairwise-encrypted message; here it is handed over directly.
 */
async function distribute(groupId: string, from: Member, to: Member[]): Promise<void> {
  const need = from.groups.devicesWithoutKey(
    groupId,
    to.map((m) => m.ref),
  );
  const { key, message } = await from.groups.distributionMessage(groupId);
  for (const m of to) {
    if (need.some((d) => d.deviceId === m.ref.deviceId))
      await m.groups.processDistribution(groupId, from.ref, message);
  }
  await from.groups.markDistributed(groupId, need, key.epoch);
}

test("three members, sender keys, and a removed member who cannot read later messages", async () => {
  const g = "g_team";
  const alice = await member("u_alice", "dv_a1");
  const bob = await member("u_bob", "dv_b1");
  let carol = await member("u_carol", "dv_c1");
  const all = [alice, bob, carol];
  for (const m of all)
    await distribute(
      g,
      m,
      all.filter((x) => x !== m),
    );
  assert.deepEqual(alice.groups.devicesWithoutKey(g, [bob.ref, carol.ref]), [], "everyone has Alice's key");

  // One ciphertext for everyone.
  const m1 = await alice.groups.encrypt(g, text("hello team"));
  assert.equal(str(await bob.groups.decrypt(g, alice.ref, m1.ciphertext)), "hello team");
  assert.equal(str(await carol.groups.decrypt(g, alice.ref, m1.ciphertext)), "hello team");
  const m2 = await carol.groups.encrypt(g, text("hi from carol"));
  assert.equal(str(await alice.groups.decrypt(g, carol.ref, m2.ciphertext)), "hi from carol");
  assert.equal(str(await bob.groups.decrypt(g, carol.ref, m2.ciphertext)), "hi from carol");

  // A duplicate is refused as such; a message is not accepted in another group.
  await assert.rejects(bob.groups.decrypt(g, alice.ref, m1.ciphertext), {
    name: "GroupDecryptError",
    reason: "duplicate",
  });
  await assert.rejects(bob.groups.decrypt("g_other", alice.ref, m1.ciphertext), { reason: "no-key" });
  // Nor from a device that did not send it.
  await assert.rejects(bob.groups.decrypt(g, carol.ref, m1.ciphertext), { reason: "no-key" });

  // Sender key state survives a restart (Carol reopens her profile).
  carol = await member("u_carol", "dv_c1", carol.dir);
  const m3 = await alice.groups.encrypt(g, text("after carol restarted"));
  assert.equal(str(await carol.groups.decrypt(g, alice.ref, m3.ciphertext)), "after carol restarted");
  assert.equal(str(await bob.groups.decrypt(g, alice.ref, m3.ciphertext)), "after carol restarted");

  // Carol is removed: the remaining members forget her key and rotate theirs.
  const before = (await alice.groups.currentKey(g)).distributionId;
  const rotated = await alice.groups.removeMember(g, "u_carol");
  await bob.groups.removeMember(g, "u_carol");
  assert.notEqual(rotated.distributionId, before);
  assert.equal(rotated.epoch, 2);
  assert.deepEqual(
    alice.groups.devicesWithoutKey(g, [bob.ref]).map((d) => d.deviceId),
    ["dv_b1"],
    "nobody has the new key yet",
  );
  await distribute(g, alice, [bob]);
  await distribute(g, bob, [alice]);

  const secret = await alice.groups.encrypt(g, text("carol is gone"));
  assert.equal(secret.key.distributionId, rotated.distributionId);
  assert.equal(str(await bob.groups.decrypt(g, alice.ref, secret.ciphertext)), "carol is gone");
  await assert.rejects(carol.groups.decrypt(g, alice.ref, secret.ciphertext), (err: unknown) => {
    assert.ok(err instanceof GroupDecryptError);
    assert.equal(err.reason, "no-key");
    assert.match(err.message, /group g_team from device dv_a1 of user u_alice/);
    return true;
  });
  const fromBob = await bob.groups.encrypt(g, text("bob, after"));
  await assert.rejects(carol.groups.decrypt(g, bob.ref, fromBob.ciphertext), { reason: "no-key" });
  // Carol's own messages are no longer accepted by the remaining members.
  const fromCarol = await carol.groups.encrypt(g, text("still here?"));
  await assert.rejects(alice.groups.decrypt(g, carol.ref, fromCarol.ciphertext), { reason: "no-key" });
});

test("a member who joins later reads messages under the rotated key, not the ones before it", async () => {
  const g = "g_late";
  const alice = await member("u_alice", "dv_la1");
  const bob = await member("u_bob", "dv_lb1");
  await distribute(g, alice, [bob]);
  const early = await alice.groups.encrypt(g, text("before dan"));
  assert.equal(str(await bob.groups.decrypt(g, alice.ref, early.ciphertext)), "before dan");
  const dan = await member("u_dan", "dv_ld1");
  // As the SDK does on a membership entry adding someone: a new key for the new member set.
  await alice.groups.rotate(g);
  await distribute(g, alice, [bob, dan]);
  const later = await alice.groups.encrypt(g, text("welcome dan"));
  assert.equal(str(await dan.groups.decrypt(g, alice.ref, later.ciphertext)), "welcome dan");
  assert.equal(str(await bob.groups.decrypt(g, alice.ref, later.ciphertext)), "welcome dan");
  await assert.rejects(dan.groups.decrypt(g, alice.ref, early.ciphertext), { reason: "no-key" });
});

test("a key handed over mid-epoch opens the epoch from its first message, in any order", async () => {
  const g = "g_epoch";
  const alice = await member("u_alice", "dv_ea1");
  const bob = await member("u_bob", "dv_eb1");
  // Alice encrypts before anyone has her key; Bob's device gets it afterwards and still reads both,
  // the later one first.
  const one = await alice.groups.encrypt(g, text("one"));
  const two = await alice.groups.encrypt(g, text("two"));
  await distribute(g, alice, [bob]);
  assert.equal(str(await bob.groups.decrypt(g, alice.ref, two.ciphertext)), "two");
  assert.equal(str(await bob.groups.decrypt(g, alice.ref, one.ciphertext)), "one");
  await assert.rejects(bob.groups.decrypt(g, alice.ref, one.ciphertext), { reason: "duplicate" });
});

test("a tampered group message is refused", async () => {
  const g = "g_tamper";
  const alice = await member("u_alice", "dv_ta1");
  const bob = await member("u_bob", "dv_tb1");
  await distribute(g, alice, [bob]);
  const { ciphertext } = await alice.groups.encrypt(g, text("intact"));
  const bad = new Uint8Array(ciphertext);
  bad[bad.length - 70] = (bad[bad.length - 70] as number) ^ 1;
  await assert.rejects(bob.groups.decrypt(g, alice.ref, bad), {
    name: "GroupDecryptError",
    reason: "invalid",
  });
  assert.equal(str(await bob.groups.decrypt(g, alice.ref, ciphertext)), "intact");
});

test("the key rotates when a holder is no longer a recipient or a new user is, without membership entries", async () => {
  const g = "g_recipients";
  const alice = await member("u_alice", "dv_ra1");
  const bob = await member("u_bob", "dv_rb1");
  const carol = await member("u_carol", "dv_rc1");
  await alice.groups.rotateIfRecipientsChanged(g, [bob.ref, carol.ref]);
  await distribute(g, alice, [bob, carol]);
  const first = await alice.groups.currentKey(g);

  // The same recipients, and a second device of a user already there: the key stays.
  await alice.groups.rotateIfRecipientsChanged(g, [bob.ref, carol.ref]);
  const bob2 = await member("u_bob", "dv_rb2");
  await alice.groups.rotateIfRecipientsChanged(g, [bob.ref, bob2.ref, carol.ref]);
  assert.equal((await alice.groups.currentKey(g)).distributionId, first.distributionId);

  // Carol is gone from the recipients (say a process that never saw her removal): a new key, which
  // only the remaining devices are given.
  await alice.groups.rotateIfRecipientsChanged(g, [bob.ref, bob2.ref]);
  const second = await alice.groups.currentKey(g);
  assert.notEqual(second.distributionId, first.distributionId);
  assert.deepEqual(alice.groups.devicesWithoutKey(g, [bob.ref, bob2.ref]), [bob.ref, bob2.ref]);
  await distribute(g, alice, [bob, bob2]);
  const after = await alice.groups.encrypt(g, text("without carol"));
  assert.equal(str(await bob2.groups.decrypt(g, alice.ref, after.ciphertext)), "without carol");
  await assert.rejects(carol.groups.decrypt(g, alice.ref, after.ciphertext), { reason: "no-key" });

  // Dan, a user the key was not made among, appears: another new key.
  const dan = await member("u_dan", "dv_rd1");
  await alice.groups.rotateIfRecipientsChanged(g, [bob.ref, bob2.ref, dan.ref]);
  assert.notEqual((await alice.groups.currentKey(g)).distributionId, second.distributionId);
});
