import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { eventually } from "../test/helpers/inbox.js";
import { mediaBackends, sdkMediaSuite } from "../test/helpers/media-backends.js";
import { readFilesUnder } from "../test/helpers/scan.js";
import { HistoryError, TRANSFER_TITLE } from "./client/history.js";
import { SwitchboardClient } from "./client.js";
import type { HistoryImportedEvent, HistoryRefusedEvent } from "./history-types.js";

// History for a newly linked device, end to end: SDK devices against a real server process, once
// with the embedded (local directory) media store and once with a real MinIO server. An old device
// sends a new device of the same user its recent history; the new device shows the old messages,
// refuses a tampered bundle, and the server's stores (LMDB files, media objects, MinIO's drive)
// never hold a plaintext.

const text = (e: { payload: Uint8Array | undefined }) =>
  new TextDecoder().decode(e.payload ?? new Uint8Array());

/** Resolves with the promise, or rejects once `ms` have passed (every wait has a deadline). */
function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

const BUCKET = "switchboard-history-e2e";
/** How this suite's names call each engine. */
const ENGINE_NAMES = { local: "the embedded media store", minio: "MinIO" } as const;

for (const backend of mediaBackends(BUCKET)) {
  describe(`history for a newly linked device (SDK against a server process, ${ENGINE_NAMES[backend.engine]})`, {
    skip: backend.skip,
  }, () => {
    const suite = sdkMediaSuite(backend, "sb-history-");

    /** A user with a direct conversation and a group, each with messages both ways, all before any link. */
    async function userWithHistory(marker: string) {
      const alice = await suite.devices.register("alice");
      const bob = await suite.devices.register("bob");
      const direct = (await alice.openDirect(bob.userId)).conversationId;
      const group = (await alice.createGroup("friends", [bob.userId])).conversationId;
      await bob.sendUnary(direct, `${marker} bob one`);
      await alice.sendUnary(direct, `${marker} alice two`);
      await bob.sendUnary(direct, `${marker} bob three`, { replyTo: 2 });
      await alice.sendUnary(group, `${marker} alice in group`);
      await bob.sendUnary(group, `${marker} bob in group`);
      // The old device reads what it was sent (and keeps the plaintexts, as a streaming device does).
      for (const id of [direct, group]) {
        const page = await alice.getHistory(id);
        assert.ok(
          page.entries.every((e) => e.decodeError === undefined),
          "alice reads her history",
        );
      }
      return { alice, bob, direct, group };
    }

    it("the new device shows the old messages, deduplicated against what it synced itself", async () => {
      const marker = "HISTMARK-7d1f";
      const { alice, bob, direct, group } = await userWithHistory(marker);
      const linked = await suite.devices.link(alice, "alice-new");
      await linked.connect();
      // Before the transfer the new device cannot read what was sent before it linked.
      const before = await linked.getHistory(direct);
      assert.deepEqual(
        before.entries.filter((e) => e.payload !== undefined && e.payload.length > 0),
        [],
      );
      // Gateways trust their device lists for 5 s: bob's send must be checked against one with
      // the new device in it, or it may leave it out (e2ee.e2e.test.ts does the same).
      await new Promise((resolve) => setTimeout(resolve, 5_500));

      // A message after the link: the new device gets it itself, and the bundle carries it too.
      const own = linked.waitFor("entry", (e) => text(e) === `${marker} after link`);
      await bob.sendUnary(direct, `${marker} after link`);
      await within(own, 20_000, "the new device's own copy of the message after the link");

      const imported = linked.waitFor("historyImported");
      const sent = await alice.history.sendTo(linked.deviceId, { days: 7 });
      assert.equal(sent.deviceId, linked.deviceId);
      assert.equal(sent.conversations, 2);
      const event: HistoryImportedEvent = await within(imported, 30_000, "the import");
      assert.equal(event.fromDeviceId, alice.deviceId);
      assert.equal(event.duplicates, 1, "the message after the link is kept once, as synced");
      assert.equal(event.imported + event.duplicates, sent.entries);
      assert.deepEqual(new Set(event.conversationIds), new Set([direct, group]));

      const shown = (await linked.history.entries(direct)).filter((e) => e.kind === "message");
      assert.deepEqual(shown.map(text), [`${marker} bob one`, `${marker} alice two`, `${marker} bob three`]);
      assert.equal(shown[2]?.replyTo, 2n);
      assert.equal(shown[1]?.senderUserId, alice.userId);
      assert.equal(shown[1]?.fromThisDevice, false);
      const inGroup = (await linked.history.entries(group)).filter((e) => e.kind === "message").map(text);
      assert.deepEqual(inGroup, [`${marker} alice in group`, `${marker} bob in group`]);

      // The new device left the transfer conversation once done, so nobody can reach it any more.
      await eventually(
        async () => !(await alice.listConversations()).some((c) => c.title === TRANSFER_TITLE),
        () => "the transfer conversation was left",
        20_000,
      );

      // The server's stores hold ciphertext only: no file under its data directory (LMDB, media
      // objects and records) contains any of the plaintexts. LMDB writes through to its files.
      const stores = [suite.server.dataDir, ...backend.directories()];
      for (const { path, bytes } of await readFilesUnder(...stores)) {
        assert.ok(!bytes.includes(marker), `${path} holds a plaintext`);
      }
      // The same scan finds them where they are meant to be: in the new device's profile.
      const kept = await readFilesUnder(join(linked.profileDir, "history"));
      assert.ok(
        kept.some(({ bytes }) => bytes.includes(`${marker} bob one`)),
        "the new device keeps the history",
      );
    });

    it("a device that never streams imports with receivePending; a sibling device ignores the transfer", async () => {
      const { alice, bob, direct } = await userWithHistory("PENDING-5c");
      const linked = await suite.devices.link(alice, "alice-unary");
      const sibling = await suite.devices.link(alice, "alice-sibling");
      // A message after the link that the new device has not read when the bundle arrives (the
      // gateways' 5 s device lists must include it first, as above).
      await new Promise((resolve) => setTimeout(resolve, 5_500));
      await bob.sendUnary(direct, "PENDING-5c after link");
      await alice.getHistory(direct);
      const sent = await alice.history.sendTo(linked.deviceId, { days: 1 });
      // The sibling reads the transfer conversation too (it is the user's), and takes nothing.
      let siblingImported = false;
      sibling.on("historyImported", () => {
        siblingImported = true;
      });
      await within(sibling.history.receivePending(), 30_000, "the sibling's receivePending");
      assert.equal(siblingImported, false);
      assert.deepEqual(await sibling.history.entries(direct), []);
      const imported = linked.waitFor("historyImported");
      await within(linked.history.receivePending(), 30_000, "receivePending");
      const event = await within(imported, 1_000, "the import event");
      assert.equal(event.imported, sent.entries);
      const messages = async () =>
        (await linked.history.entries(direct)).filter((e) => e.kind === "message").map(text);
      const old = ["PENDING-5c bob one", "PENDING-5c alice two", "PENDING-5c bob three"];
      assert.deepEqual(await messages(), [...old, "PENDING-5c after link"]);
      // Once the device has read that message itself, its own copy is the one: entries() leaves
      // the imported one out.
      const own = await linked.getHistory(direct);
      assert.ok(
        own.entries.some((e) => text(e) === "PENDING-5c after link"),
        "the new device reads it itself",
      );
      assert.deepEqual(await messages(), old);
    });

    it("a transfer that could not be fetched stays pending and is imported on the next start", async () => {
      const { alice, direct } = await userWithHistory("RESUME-9e");
      const linked = await suite.devices.link(alice, "alice-resume");
      const profileDir = linked.profileDir;
      await linked.close();
      const sent = await alice.history.sendTo(linked.deviceId, { days: 1 });
      const stored = await backend.readObject(suite.server.dataDir, sent.objectId);
      await backend.removeObject(suite.server.dataDir, sent.objectId);

      // The store answers, but without the object: not a refusal of the bundle, a failure to try again.
      const first = await suite.devices.reopen(profileDir);
      let refused: HistoryRefusedEvent | undefined;
      first.on("historyRefused", (e) => {
        refused = e;
      });
      const failed = first.waitFor("error");
      await first.connect();
      const failure = await within(failed, 30_000, "the failed download");
      // The media service checks the object before it hands out a URL: claimed, and its bytes
      // missing, it is gone (NOT_FOUND), and the SDK keeps the transfer to try again.
      assert.match(failure.error.message, /\[not_found\] object m_\w+ is no longer stored/);
      assert.equal(refused, undefined);
      assert.deepEqual(await first.history.entries(direct), []);
      assert.ok(
        (await first.listConversations()).some((c) => c.conversationId === sent.transferConversationId),
        "the transfer conversation stays",
      );
      await first.close();

      // The next start takes it up again, with no new message needed.
      await backend.writeObject(suite.server.dataDir, sent.objectId, stored);
      const second = await suite.devices.reopen(profileDir);
      const imported = second.waitFor("historyImported");
      await second.connect();
      const event = await within(imported, 30_000, "the resumed import");
      assert.equal(event.imported, sent.entries);
      const shown = (await second.history.entries(direct)).filter((e) => e.kind === "message").map(text);
      assert.deepEqual(shown, ["RESUME-9e bob one", "RESUME-9e alice two", "RESUME-9e bob three"]);
    });

    it("a tampered bundle is refused, and nothing of it is imported", async () => {
      const { alice, direct } = await userWithHistory("TAMPER-42aa");
      const linked = await suite.devices.link(alice, "alice-tampered");
      const profileDir = linked.profileDir;
      // Offline while the bundle is uploaded, so the test can change it in the store first.
      await linked.close();
      const sent = await alice.history.sendTo(linked.deviceId, { days: 1 });
      const stored = await backend.readObject(suite.server.dataDir, sent.objectId);
      assert.equal(stored.length, sent.ciphertextBytes);
      stored[stored.length - 40] = (stored[stored.length - 40] ?? 0) ^ 0x01;
      await backend.writeObject(suite.server.dataDir, sent.objectId, stored);

      const reopened = await suite.devices.reopen(profileDir);
      const refused = reopened.waitFor("historyRefused");
      await reopened.connect();
      const event: HistoryRefusedEvent = await within(refused, 30_000, "the refusal");
      assert.equal(event.fromDeviceId, alice.deviceId);
      assert.ok(event.error instanceof HistoryError);
      assert.equal(event.error.reason, "digest");
      assert.equal(event.error.code, Code.DataLoss);
      assert.deepEqual(await reopened.history.entries(direct), []);
    });

    it("bounds and bad requests are refused with precise errors", async () => {
      const { alice } = await userWithHistory("BOUNDS");
      const linked = await suite.devices.link(alice, "alice-bounds");
      const refusedWith = async (p: Promise<unknown>, code: Code, pattern: RegExp) =>
        assert.rejects(p, (err: unknown) => {
          assert.ok(err instanceof ConnectError, String(err));
          assert.equal(err.code, code, err.rawMessage);
          assert.match(err.rawMessage, pattern);
          return true;
        });
      await refusedWith(
        alice.history.sendTo(linked.deviceId, { days: 7, maxEntries: 2 }),
        Code.ResourceExhausted,
        /hold more than 2 entries, the most one transfer carries/,
      );
      await refusedWith(
        alice.history.sendTo(linked.deviceId, { days: 7, maxBytes: 100 }),
        Code.ResourceExhausted,
        /more than 100 bytes \(\d+ entries fit\)/,
      );
      await refusedWith(
        alice.history.sendTo(linked.deviceId, { days: 0 }),
        Code.InvalidArgument,
        /days must be/,
      );
      await refusedWith(
        alice.history.sendTo("dv_00000000000000000000000000", { days: 1 }),
        Code.NotFound,
        /not an active device of this user/,
      );
      await refusedWith(alice.history.sendTo(alice.deviceId, { days: 1 }), Code.InvalidArgument, /to itself/);
      // A device linked without encryption has no keys: nobody could read a transfer to it.
      const { code } = await alice.createLinkCode();
      const plain = await SwitchboardClient.link({
        serverUrl: suite.server.url,
        profileDir: join(suite.base, "profile-alice-plain"),
        code,
        encryption: false,
      });
      try {
        await refusedWith(
          alice.history.sendTo(plain.deviceId, { days: 7 }),
          Code.FailedPrecondition,
          /has no keys in the key directory/,
        );
      } finally {
        await plain.close();
      }
      // Nothing was created for a refused transfer.
      assert.ok(!(await alice.listConversations()).some((c) => c.title === TRANSFER_TITLE));
    });
  });
}
