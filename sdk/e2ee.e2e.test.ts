import assert from "node:assert/strict";
import { readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { eventually, Inbox } from "../test/helpers/inbox.js";
import { readFilesUnder } from "../test/helpers/scan.js";
import { SdkServerSuite } from "../test/helpers/sdk-devices.js";
import type { SwitchboardClient } from "./client.js";
import { DecryptError } from "./crypto/pairwise.js";
import { connectToServer } from "./transport.js";

const decoder = new TextDecoder();

/** The texts of the messages that arrived without end-to-end encryption. */
const unencrypted = (inbox: Inbox) =>
  inbox.entries.filter((e) => e.kind === "message" && !e.encrypted).map((e) => decoder.decode(e.payload));

describe("end-to-end encrypted direct messages (SDK against a server process)", () => {
  const fx = new SdkServerSuite("sb-e2ee-");

  const register = (name: string) => fx.devices.register(name);
  const link = (first: SwitchboardClient, name: string) => fx.devices.link(first, name);

  it("two users with two devices each chat 1:1; a later device reads later messages; the server stores no plaintext", async () => {
    const alice1 = await register("alice");
    const bob1 = await register("bob");
    const alice2 = await link(alice1, "alice2");
    const bob2 = await link(bob1, "bob2");
    const inboxes = [alice1, alice2, bob1, bob2].map(
      (c, i) => new Inbox(["a1", "a2", "b1", "b2"][i] as string, c),
    );
    // connect() resolves once the device's keys are in the directory.
    for (const c of [alice1, alice2, bob1, bob2]) await c.connect();

    const conversation = await alice1.openDirect(bob1.userId);
    const id = conversation.conversationId;
    const sentTexts: string[] = [];
    const send = async (from: SwitchboardClient, text: string) => {
      sentTexts.push(text);
      return from.send(id, text);
    };

    await send(alice1, "secret-from-alice1 hello bob");
    await send(bob1, "secret-from-bob1 hi alice");
    await send(bob2, "secret-from-bob2 also me");
    await send(alice2, "secret-from-alice2 second device");
    const firstFour = sentTexts.slice();
    for (const inbox of inboxes) await inbox.has(...firstFour);

    // A device linked later: the directory's device lists are trusted for 5 s by the gateway, so
    // wait them out; then alice1's first send names too few devices, is refused as missing bob3,
    // and is retried (same client_msg_id) with a new session, without the app noticing.
    const bob3 = await link(bob1, "bob3");
    const b3 = new Inbox("b3", bob3);
    inboxes.push(b3);
    await bob3.connect();
    await new Promise((resolve) => setTimeout(resolve, 5_500));
    const failed: string[] = [];
    alice1.on("sendFailed", (f) => {
      failed.push(f.error.message);
    });
    const result = await send(alice1, "secret-after-link for bob3 too");
    assert.ok(result.seq > 0n);
    assert.deepEqual(failed, []);
    assert.deepEqual(alice1.pendingSends(), []);
    await send(bob3, "secret-from-bob3 new device here");
    const later = sentTexts.slice(firstFour.length);
    for (const inbox of inboxes) await inbox.has(...later);
    // bob3 never sees what was sent before it existed, and it is not a decryption failure either:
    // it only receives entries from its own start.
    for (const inbox of inboxes) assert.deepEqual(inbox.failures, [], inbox.name);
    // Its history holds nothing from before its link (the server gives it none); anything of that
    // time it is shown says it was encrypted for other devices only.
    const history = await bob3.getHistory(id, { limit: 100 });
    const shown = history.entries.flatMap((e) =>
      e.payload === undefined ? [] : [decoder.decode(e.payload)],
    );
    for (const t of firstFour) assert.ok(!shown.includes(t), `bob3 reads "${t}" from before its link`);
    const unaddressed = history.entries.filter((e) => e.kind === "message" && e.payload === undefined);
    for (const e of unaddressed) {
      assert.ok(e.decodeError instanceof DecryptError, String(e.decodeError));
      assert.equal(e.decodeError.reason, "not-addressed");
    }

    // Edits travel encrypted too.
    await alice1.edit(id, result.seq, "secret-edited text");
    sentTexts.push("secret-edited text");
    for (const inbox of inboxes) {
      await eventually(
        () => inbox.texts("edit").includes("secret-edited text"),
        () => `${inbox.name} has edits ${JSON.stringify(inbox.texts("edit"))}`,
      );
    }

    // What the server keeps: no payload, one ciphertext per device that never contains the text.
    const raw = await alice1.api.conversations.getHistory({ conversationId: id, afterSeq: 0n, limit: 0 });
    const messages = raw.entries.filter((e) => e.body.case === "message" || e.body.case === "edit");
    assert.ok(messages.length >= sentTexts.length);
    for (const entry of messages) {
      if (entry.body.case !== "message" && entry.body.case !== "edit") continue;
      assert.equal(entry.body.value.payload.length, 0, `#${entry.seq} has a plaintext payload`);
      for (const c of entry.body.value.devicePayloads) {
        const bytes = Buffer.from(c.ciphertext);
        for (const t of sentTexts) assert.ok(!bytes.includes(t), `#${entry.seq} ciphertext contains "${t}"`);
      }
    }
    // bob1 sees its own ciphertexts of others' messages, never the plaintext.
    const rawBob = await bob1.api.conversations.getHistory({ conversationId: id, afterSeq: 0n, limit: 0 });
    for (const entry of rawBob.entries) {
      if (entry.body.case !== "message") continue;
      assert.equal(entry.body.value.payload.length, 0);
      if (entry.senderDeviceId !== bob1.deviceId) {
        assert.deepEqual(
          entry.body.value.devicePayloads.map((c) => c.deviceId),
          [bob1.deviceId],
          "each device gets only its own ciphertext",
        );
      }
    }
    // And nothing the server wrote to disk contains any of the texts.
    for (const { path, bytes } of await readFilesUnder(fx.server.dataDir)) {
      for (const t of sentTexts) assert.ok(!bytes.includes(t), `${path} contains "${t}"`);
    }
  });

  it("an old signed prekey is replaced when a stream opens; sessions open against the new one", async () => {
    const alice = await register("rotating");
    await alice.connect();
    const deviceId = alice.deviceId;
    const secret = JSON.parse(
      await readFile(join(alice.profileDir, "credentials.json"), "utf8"),
    ).deviceSecret;
    const conn = connectToServer({
      serverUrl: fx.server.url,
      credential: { deviceId, deviceSecret: secret },
    });
    try {
      const first = await conn.keys.getPrekeyCounts({});
      const dir = alice.profileDir;
      await alice.close();
      // Reopened with a maximum age its keys already exceed: the next stream rotates both.
      const reopened = await fx.devices.reopen(dir, { signedPrekeyMaxAgeMs: 1 });
      await reopened.connect();
      const second = await conn.keys.getPrekeyCounts({});
      assert.notEqual(second.signedPrekeyId, first.signedPrekeyId);
      assert.notEqual(second.kyberLastResortPrekeyId, first.kyberLastResortPrekeyId);
      assert.ok(second.signedPrekeyUploadedAtMs > first.signedPrekeyUploadedAtMs);

      // A new contact's session is opened against the new keys, and the device reads it.
      const inbox = new Inbox("rotated", reopened);
      const carol = await register("carol");
      await carol.connect();
      const { conversationId } = await carol.openDirect(reopened.userId);
      await carol.send(conversationId, "after the rotation");
      await inbox.has("after the rotation");
      assert.deepEqual(inbox.failures, []);
    } finally {
      conn.close();
    }
  });

  it("register puts the keys in the directory before any stream; a profile that lost them is told so", async () => {
    const dana = await register("dana");
    const secret = JSON.parse(await readFile(join(dana.profileDir, "credentials.json"), "utf8")).deviceSecret;
    const conn = connectToServer({
      serverUrl: fx.server.url,
      credential: { deviceId: dana.deviceId, deviceSecret: secret },
    });
    try {
      assert.equal((await conn.keys.getPrekeyCounts({})).keysUploaded, true, "uploaded at register");
    } finally {
      conn.close();
    }
    // The profile's Signal directory is lost: a new identity is made locally, which the directory
    // can never take for this device. connect() says so instead of running unreachable.
    const profileDir = dana.profileDir;
    await dana.close();
    await rm(join(profileDir, "signal"), { recursive: true, force: true });
    const lost = await fx.devices.reopen(profileDir);
    await assert.rejects(lost.connect(), (err: unknown) => {
      const e = ConnectError.from(err);
      assert.equal(e.code, Code.FailedPrecondition);
      assert.match(e.rawMessage, /Signal keys are missing from its profile/);
      return true;
    });
  });

  it("a send left in the outbox re-encrypts its kept plaintext after a restart when the devices changed", async () => {
    const erin = await register("erin");
    const frank1 = await register("frank");
    const f1 = new Inbox("frank1", frank1);
    await erin.connect();
    await frank1.connect();
    const id = (await erin.openDirect(frank1.userId)).conversationId;
    await erin.send(id, "secret-before-restart");
    await f1.has("secret-before-restart");
    // Encrypted and written to the outbox while the stream is down (no server answer yet).
    const profileDir = erin.profileDir;
    await erin.close();
    const offline = await fx.devices.reopen(profileDir);
    const pending = offline.send(id, "secret-from-the-outbox");
    pending.catch(() => {});
    await eventually(
      () => offline.pendingSends().length === 1,
      () => "the send never reached the outbox",
    );
    await offline.close();
    // Meanwhile frank links a device: the stored ciphertexts no longer name every device.
    const frank2 = await link(frank1, "frank2");
    const f2 = new Inbox("frank2", frank2);
    await frank2.connect();
    await new Promise((resolve) => setTimeout(resolve, 5_500));
    const again = await fx.devices.reopen(profileDir);
    const sent = again.waitFor("sent");
    await again.connect();
    await sent;
    await f1.has("secret-from-the-outbox");
    await f2.has("secret-from-the-outbox");
    assert.deepEqual(again.pendingSends(), []);
  });

  it("a plaintext message from a client without encryption is delivered marked unencrypted", async () => {
    const alice = await register("marks");
    const inbox = new Inbox("marks", alice);
    await alice.connect();
    const plain = await fx.devices.register("plain", { encryption: false });
    await plain.connect();
    const { conversationId } = await plain.openDirect(alice.userId);
    await plain.send(conversationId, "sent in the clear");
    await inbox.has("sent in the clear");
    assert.deepEqual(unencrypted(inbox), ["sent in the clear"]);
    // What alice's contacts send her with encryption is marked encrypted.
    const bob = await register("marks_bob");
    await bob.connect();
    const direct = await bob.openDirect(alice.userId);
    await bob.send(direct.conversationId, "sealed for alice");
    await inbox.has("sealed for alice");
    assert.deepEqual(unencrypted(inbox), ["sent in the clear"]);
  });

  it("a reply and a mention travel beside the encrypted content, over the stream and without it", async () => {
    const erin = await register("erin");
    const fred = await register("fred");
    const f = new Inbox("fred", fred);
    await erin.connect();
    await fred.connect();
    const id = (await erin.openDirect(fred.userId)).conversationId;
    const first = await erin.send(id, "question");
    await erin.send(id, "over the stream", { replyTo: first.seq, mentions: [fred.userId] });
    await erin.sendUnary(id, "without it", { replyTo: first.seq });
    await f.has("without it");
    const streamed = f.entries.find((e) => new TextDecoder().decode(e.payload) === "over the stream");
    assert.equal(streamed?.encrypted, true);
    assert.equal(streamed?.replyTo, first.seq);
    assert.deepEqual(streamed?.mentions, [fred.userId]);
    const unary = f.entries.find((e) => new TextDecoder().decode(e.payload) === "without it");
    assert.equal(unary?.replyTo, first.seq);
    assert.deepEqual(unary?.mentions, []);
    assert.equal(f.entries.find((e) => e.seq === first.seq)?.replyTo, undefined);
  });

  it("a tampered or undecryptable entry is surfaced with its seq and acked; the stream moves on", async () => {
    const carol = await register("carol");
    const dave = await register("dave");
    const d = new Inbox("dave", dave);
    await carol.connect();
    await dave.connect();
    const id = (await carol.openDirect(dave.userId)).conversationId;
    await carol.send(id, "secret-one");
    await d.has("secret-one");
    // A ciphertext for dave that is garbage, sent with the raw API (the server cannot tell).
    const [bundle] = (await carol.api.keys.getBundles({ userId: dave.userId, deviceIds: [dave.deviceId] }))
      .bundles;
    assert.ok(bundle !== undefined);
    const bad = await carol.api.gateway.send({
      entry: {
        clientMsgId: "tampered-message-0001",
        conversationId: id,
        body: {
          case: "message",
          value: {
            devicePayloads: [
              {
                deviceId: dave.deviceId,
                registrationId: bundle.registrationId,
                ciphertext: new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]),
                type: 2,
              },
            ],
          },
        },
      },
    });
    await eventually(
      () => d.failures.length === 1,
      () => `dave's failures: ${JSON.stringify(d.failures.map((f) => f.error.message))}`,
    );
    assert.equal(d.failures[0]?.seq, bad.seq);
    // The stream moved on: the next good message arrives, and the bad entry was acknowledged.
    await carol.send(id, "secret-two");
    await d.has("secret-two");
    await eventually(
      () => (dave.localCursor(id)?.delivered ?? 0n) > bad.seq,
      () => `dave's cursor ${dave.localCursor(id)?.delivered}`,
    );
  });
});
