import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { open } from "lmdb";
import { DeviceCiphertextSchema, type Entry, EntrySchema } from "../gen/switchboard/v1/entry_pb.js";
import { sendUnderNewIdentity } from "../test/helpers/impostor.js";
import { eventually, Inbox } from "../test/helpers/inbox.js";
import { SdkServerSuite } from "../test/helpers/sdk-devices.js";
import { startServerProcess } from "../test/helpers/server.js";
import type { SwitchboardClient } from "./client.js";
import { GroupDecryptError } from "./crypto/groups.js";
import { DecryptError } from "./crypto/pairwise.js";
import { type IdentityChangeEvent, UntrustedIdentityError } from "./crypto/stores.js";
import { type DevicesChangedEvent, PAIRWISE_PAYLOAD_TYPE, SENDER_KEY_PAYLOAD_TYPE } from "./e2ee.js";

const decoder = new TextDecoder();
const text = (e: { payload: Uint8Array | undefined }) =>
  e.payload === undefined ? undefined : decoder.decode(e.payload);

/** An edit that flips a bit in the key distribution to this device (so its copy of the key is lost). */
function corruptKeyFor(deviceId: string): (e: Entry) => void {
  return (e) => {
    if (e.body.case !== "message") throw new Error("not a message");
    const mine = e.body.value.devicePayloads.find((d) => d.deviceId === deviceId);
    assert.ok(mine !== undefined, "no key distribution for bob");
    const i = Math.floor(mine.ciphertext.length / 2);
    mine.ciphertext[i] = (mine.ciphertext[i] as number) ^ 0x01;
  };
}

/**
 * The client against a hostile server: the server's stored log is edited while it is stopped (as
 * a server that controls its disk would), or entries are written with a device's own token, and
 * the SDK must refuse or heal.
 */
describe("end-to-end encryption against a malicious server (SDK against a server process)", () => {
  const fx = new SdkServerSuite("sb-e2ee-hostile-");

  /** Stops the server, rewrites stored entries as a malicious server would, starts it again on the same port. */
  async function tamper(edits: Array<{ conversationId: string; seq: bigint; edit: (e: Entry) => void }>) {
    const port = Number(new URL(fx.server.url).port);
    await fx.server.stop();
    const root = open({ path: join(fx.server.dataDir, "store"), noSubdir: false, maxDbs: 32 });
    const entries = root.openDB<Uint8Array, [string, number]>({ name: "entries", encoding: "binary" });
    for (const { conversationId, seq, edit } of edits) {
      const key: [string, number] = [conversationId, Number(seq)];
      const bytes = entries.get(key);
      assert.ok(bytes !== undefined, `no stored entry ${conversationId}#${seq}`);
      const entry = fromBinary(EntrySchema, bytes);
      edit(entry);
      await entries.put(key, toBinary(EntrySchema, entry));
    }
    await root.close();
    fx.server = await startServerProcess({ dataDir: fx.server.dataDir, port });
  }

  async function historyEntry(client: SwitchboardClient, conversationId: string, seq: bigint) {
    const page = await client.getHistory(conversationId, { afterSeq: seq - 1n, limit: 1 });
    const e = page.entries[0];
    assert.ok(e !== undefined && e.seq === seq, `no entry #${seq}`);
    return e;
  }

  it("a direct message's ciphertext copied into a group entry is refused, and a message stripped to plaintext is not shown", async () => {
    const alice = await fx.devices.register("alice");
    const bob = await fx.devices.register("bob");
    const group = (await alice.createGroup("moved", [bob.userId])).conversationId;
    const dm = (await alice.openDirect(bob.userId)).conversationId;

    await alice.sendUnary(dm, "hello bob");
    assert.equal(
      text(await historyEntry(bob, dm, (await alice.sendUnary(dm, "still there?")).seq)),
      "still there?",
    );
    const inGroup = await alice.sendUnary(group, "group hello");
    const secret = await alice.sendUnary(dm, "private to bob only");
    const stripped = await alice.sendUnary(dm, "encrypted, then stripped");

    let copied: Uint8Array | undefined;
    await tamper([
      {
        conversationId: dm,
        seq: secret.seq,
        edit: (e) => {
          if (e.body.case !== "message") throw new Error("not a message");
          copied = toBinary(
            DeviceCiphertextSchema,
            e.body.value.devicePayloads.find((d) => d.deviceId === bob.deviceId)!,
          );
        },
      },
    ]);
    await tamper([
      {
        conversationId: group,
        seq: inGroup.seq,
        edit: (e) => {
          // The direct message's ciphertext for bob, relabelled as alice's group message.
          if (e.body.case !== "message" || copied === undefined) throw new Error("not a message");
          e.body.value.payload = new Uint8Array();
          e.body.value.payloadType = PAIRWISE_PAYLOAD_TYPE;
          e.body.value.devicePayloads = [fromBinary(DeviceCiphertextSchema, copied)];
        },
      },
      {
        conversationId: dm,
        seq: stripped.seq,
        edit: (e) => {
          // payload_type 2 rewritten to 0, the device payloads dropped: "plaintext" from alice.
          if (e.body.case !== "message") throw new Error("not a message");
          e.body.value.payloadType = 0;
          e.body.value.payload = new TextEncoder().encode("server text: pay alice 1000 EUR");
          e.body.value.devicePayloads = [];
        },
      },
    ]);

    const moved = await historyEntry(bob, group, inGroup.seq);
    assert.equal(moved.payload, undefined, `the private text was shown in the group: ${text(moved)}`);
    assert.ok(moved.decodeError instanceof DecryptError, String(moved.decodeError));
    assert.equal(moved.decodeError.reason, "wrong-context");
    assert.match(moved.decodeError.message, new RegExp(`encrypted for conversation ${dm}, not ${group}`));

    const plain = await historyEntry(bob, dm, stripped.seq);
    assert.equal(plain.payload, undefined, `a stripped entry was shown: ${text(plain)}`);
    assert.ok(plain.decodeError instanceof DecryptError, String(plain.decodeError));
    assert.equal(plain.decodeError.reason, "unencrypted");
  });

  it("a client without a stream learns of a removal before its next group send: the removed member's key no longer opens it", async () => {
    const alice = await fx.devices.register("alice");
    const bob = await fx.devices.register("bob");
    const carol = await fx.devices.register("carol");
    const group = (await alice.createGroup("removal", [bob.userId, carol.userId])).conversationId;
    const before = await bob.sendUnary(group, "before the removal");
    // carol's device takes in bob's sender key.
    assert.equal(text(await historyEntry(carol, group, before.seq)), "before the removal");

    await alice.removeMembers(group, [carol.userId]);
    const afterRemoval = await bob.sendUnary(group, "secret after the removal");

    // What the server stores, fed to carol's device with the key it holds.
    const page = await alice.api.conversations.getHistory({
      conversationId: group,
      afterSeq: afterRemoval.seq - 1n,
      limit: 1,
    });
    const raw = page.entries[0];
    assert.ok(raw !== undefined && raw.body.case === "message");
    assert.equal(raw.body.value.payloadType, SENDER_KEY_PAYLOAD_TYPE);
    const seen = await carol.toIncoming(raw);
    assert.equal(seen.payload, undefined, `carol read "${text(seen)}" after her removal`);
    assert.ok(seen.decodeError instanceof GroupDecryptError, String(seen.decodeError));
    assert.equal(text(await historyEntry(alice, group, afterRemoval.seq)), "secret after the removal");
  });

  it("a corrupted sender key distribution heals: the recipient asks again, the sender hands the key over again", async () => {
    const alice = await fx.devices.register("alice");
    const bob = await fx.devices.register("bob");
    const group = (await alice.createGroup("healing", [bob.userId])).conversationId;
    const first = await alice.sendUnary(group, "first, key corrupted");
    await tamper([{ conversationId: group, seq: first.seq, edit: corruptKeyFor(bob.deviceId) }]);
    const second = await alice.sendUnary(group, "second");
    const failed = await historyEntry(bob, group, second.seq);
    assert.ok(failed.decodeError !== undefined, "bob read a message without alice's key");

    // bob's failure sent alice a retry request in their direct conversation; alice reads it.
    const dm = (await alice.openDirect(bob.userId)).conversationId;
    const dmPage = await alice.getHistory(dm);
    assert.deepEqual(
      dmPage.entries
        .filter((e) => e.kind === "message" && !e.keysOnly)
        .map((e) => `${text(e)} ${e.decodeError}`),
      [],
      "the retry request was shown to the app",
    );
    assert.ok(
      dmPage.entries.some((e) => e.keysOnly),
      "no retry request reached alice",
    );

    const third = await alice.sendUnary(group, "third, after the retry");
    assert.equal(text(await historyEntry(bob, group, third.seq)), "third, after the retry");
    // The same key opens what failed before.
    assert.equal(text(await historyEntry(bob, group, second.seq)), "second");
    assert.equal(text(await historyEntry(bob, group, first.seq)), "first, key corrupted");
  });

  it("with streams, the retry request goes out on the failure and the sender hands its key over at once", async () => {
    const alice = await fx.devices.register("alice");
    const bob = await fx.devices.register("bob");
    const group = (await alice.createGroup("healing live", [bob.userId])).conversationId;
    await alice.connect();
    const first = await alice.send(group, "first, key corrupted, streamed");
    await tamper([{ conversationId: group, seq: first.seq, edit: corruptKeyFor(bob.deviceId) }]);
    const bobBox = new Inbox("bob", bob);
    await bob.connect();
    const failure = await bobBox.entry(group, first.seq);
    assert.ok(failure.decodeError !== undefined, "bob read it without the key");
    // Nothing more from alice's app: her client answers the request with a keys-only send, and
    // bob's device then opens the failed entry from the log.
    let healed: string | undefined;
    await eventually(
      () => healed === "first, key corrupted, streamed",
      () => `bob still cannot read #${first.seq}: ${healed}`,
      20_000,
      async () => {
        healed = text(await historyEntry(bob, group, first.seq));
        if (healed === undefined) await new Promise((resolve) => setTimeout(resolve, 200));
      },
    );
    assert.ok(
      bobBox.entries.every((e) => !e.keysOnly),
      "a keys-only or control entry reached the app",
    );
  });

  it("a verified contact's new device is reported at send time; a changed identity shows its new number and is accepted only by verifying it", async () => {
    const alice = await fx.devices.register("alice");
    const bob = await fx.devices.register("bob");
    const dm = (await alice.openDirect(bob.userId)).conversationId;
    await alice.sendUnary(dm, "hi bob");
    const [original] = await alice.safetyNumbers(bob.userId);
    assert.ok(original !== undefined);
    await alice.verifyContact(bob.userId, bob.deviceId);

    const bob2 = await fx.devices.link(bob, "bob2");
    const changes: DevicesChangedEvent[] = [];
    alice.on("devicesChanged", (e) => {
      changes.push(e);
    });
    // The gateway may accept a send for up to 5 s on device lists it read before bob2 existed;
    // the first send it checks against the fresh list names bob2, and alice hears of it then.
    await eventually(
      () => changes.length > 0,
      () => "no devicesChanged event after sends",
      20_000,
      async () => {
        await alice.sendUnary(dm, "hi again");
        await new Promise((resolve) => setTimeout(resolve, 500));
      },
    );
    assert.deepEqual(
      changes.map((c) => ({ userId: c.userId, added: c.added, verifiedContact: c.verifiedContact })),
      [{ userId: bob.userId, added: [bob2.deviceId], verifiedContact: true }],
    );

    // The server (here: anyone with bob's device token) injects a message from bob's device
    // under another identity key.
    const credentials = (await import(join(bob.profileDir, "credentials.json"), { with: { type: "json" } }))
      .default as { deviceSecret: string };
    await sendUnderNewIdentity({
      serverUrl: fx.server.url,
      storeDir: join(fx.base, "impostor"),
      sender: { userId: bob.userId, deviceId: bob.deviceId, deviceSecret: credentials.deviceSecret },
      conversationId: dm,
      clientMsgId: "impostor-1",
      text: "from a swapped key",
      to: [
        { userId: alice.userId, deviceId: alice.deviceId },
        { userId: bob.userId, deviceId: bob2.deviceId },
      ],
    });

    const identity: IdentityChangeEvent[] = [];
    alice.on("identityChanged", (e) => {
      identity.push(e);
    });
    const page = await alice.getHistory(dm);
    const injected = page.entries.find((e) => e.clientMsgId === "impostor-1");
    assert.ok(injected?.decodeError instanceof UntrustedIdentityError, String(injected?.decodeError));
    assert.ok(identity.some((e) => e.outcome === "refused" && e.device.deviceId === bob.deviceId));

    const changed = (await alice.safetyNumbers(bob.userId)).find((n) => n.deviceId === bob.deviceId);
    assert.ok(changed !== undefined);
    assert.equal(changed.identityChanged, true);
    assert.equal(changed.verified, false, "the old verification still shows as holding");
    assert.notEqual(changed.digits, original.digits, "the old number is still shown");

    // Nothing goes to that device until the change is accepted, and the refusal says how.
    await assert.rejects(alice.sendUnary(dm, "to the changed device"), /verifyContact/);

    await alice.verifyContact(bob.userId, bob.deviceId);
    const accepted = (await alice.safetyNumbers(bob.userId)).find((n) => n.deviceId === bob.deviceId);
    assert.deepEqual(
      { digits: accepted?.digits, verified: accepted?.verified, identityChanged: accepted?.identityChanged },
      { digits: changed.digits, verified: true, identityChanged: false },
    );
  });

  it("sendUnary and getHistory top up one-time prekeys, for a device that never streams", async () => {
    const bob = await fx.devices.register("bob");
    // Several fetchers (the server may limit the one-time prekeys one user takes from a device).
    let stranger: SwitchboardClient | undefined;
    for (let s = 0; s < 5; s++) {
      stranger = await fx.devices.register("stranger");
      for (let i = 0; i < 4; i++) await stranger.api.keys.getBundles({ userId: bob.userId, deviceIds: [] });
    }
    assert.ok(stranger !== undefined);
    const drained = await bob.api.keys.getPrekeyCounts({});
    assert.ok(
      (drained.counts?.oneTimeKyberPrekeys ?? 0) < 16,
      `kyber left: ${drained.counts?.oneTimeKyberPrekeys}`,
    );

    const dm = (await bob.openDirect(stranger.userId)).conversationId;
    await bob.getHistory(dm);
    const topped = await bob.api.keys.getPrekeyCounts({});
    assert.ok(
      (topped.counts?.oneTimeKyberPrekeys ?? 0) >= 32,
      `kyber after: ${topped.counts?.oneTimeKyberPrekeys}`,
    );
    assert.ok((topped.counts?.oneTimeEcPrekeys ?? 0) >= 80, `ec after: ${topped.counts?.oneTimeEcPrekeys}`);
  });
});
