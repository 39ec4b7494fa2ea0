import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { Inbox } from "../test/helpers/inbox.js";
import { mediaBackends, sdkMediaSuite } from "../test/helpers/media-backends.js";
import { scanDirectory } from "../test/helpers/scan.js";
import { AttachmentError } from "./crypto/attachments.js";
import { MAX_AVATAR_BYTES } from "./crypto/avatars.js";

// Profile avatars through the SDK against a real server process, with each media engine: the
// picture is encrypted on the device under its profile key, which reaches other devices only
// inside encrypted messages. A contact (and the owner's other device) opens it without any
// message about the avatar itself; a user who never got a message from the device gets the bytes
// the server serves but cannot open them; nothing on the server's disks holds the picture.

const BUCKET = "switchboard-avatars-e2e";

/** Random bytes with a recognisable marker at a few places, to show no store holds it. */
function pictureWith(size: number, marker: string): Buffer {
  const data = randomBytes(size);
  for (const at of [0, Math.floor(size / 2), size - marker.length]) data.write(marker, at, "latin1");
  return data;
}

for (const backend of mediaBackends(BUCKET)) {
  describe(`profile avatars, ${backend.name} (SDK against a server process)`, { skip: backend.skip }, () => {
    const suite = sdkMediaSuite(backend, "sb-avatars-");

    it("a contact and the owner's other device open it with the key their messages brought; others cannot; nothing on the server holds the picture", async () => {
      const alice1 = await suite.devices.register("alice");
      const alice2 = await suite.devices.link(alice1, "alice2");
      const bob = await suite.devices.register("bob");
      const carol = await suite.devices.register("carol");
      const boxes = {
        alice1: new Inbox("alice1", alice1),
        alice2: new Inbox("alice2", alice2),
        bob: new Inbox("bob", bob),
      };
      for (const c of [alice1, alice2, bob, carol]) await c.connect();
      const direct = (await alice1.openDirect(bob.userId)).conversationId;
      // Any encrypted message carries the sending device's profile key.
      await alice1.send(direct, "hello");
      await boxes.bob.has("hello");
      await boxes.alice2.has("hello");

      assert.equal(await bob.avatars.of(alice1.userId), undefined, "no avatar yet");
      const marker = `avatar-marker-${randomBytes(6).toString("hex")}`;
      const picture = pictureWith(200_000, marker);
      const set = await alice1.avatars.set(picture);
      assert.equal(set.lengthBytes, picture.length + 28, "the server holds the ciphertext's length");
      assert.ok((await backend.objectIds(suite.server.dataDir)).includes(set.objectId));

      for (const [name, viewer] of [
        ["bob", bob],
        ["alice2", alice2],
        ["alice1", alice1],
      ] as const) {
        const got = await viewer.avatars.of(alice1.userId);
        assert.equal(got?.objectId, set.objectId, name);
        assert.ok(Buffer.from(got!.data).equals(picture), `${name} opens the picture`);
      }
      // Carol may download it (profile: everyone) but never received a key: the bytes stay closed.
      await assert.rejects(
        carol.avatars.of(alice1.userId),
        (err) => err instanceof AttachmentError && err.reason === "authentication",
      );

      // Nothing the server wrote (its store, the media engine, MinIO's drive) holds the picture.
      // The control: a display name is stored in plaintext, and the same scan finds it.
      const control = `name-${randomBytes(6).toString("hex")}`;
      await alice1.setDisplayName(control);
      const found: string[] = [];
      for (const dir of [suite.server.dataDir, ...backend.directories()]) {
        const scan = await scanDirectory(dir, [marker, control]);
        found.push(...scan.findings.map((f) => `${f.marker} in ${f.where}`));
      }
      assert.ok(
        found.some((f) => f.startsWith(control)),
        `the control is found, or the scan proves nothing: ${found.join("; ")}`,
      );
      assert.deepEqual(
        found.filter((f) => f.startsWith(marker)),
        [],
        "no trace of the picture on the server's disks",
      );

      // A new picture needs no message: bob already holds the key. The old object is deleted.
      const second = pictureWith(50_000, marker);
      const replaced = await alice1.avatars.set(second);
      const stored = await backend.objectIds(suite.server.dataDir);
      assert.ok(
        stored.includes(replaced.objectId) && !stored.includes(set.objectId),
        "the old object is gone",
      );
      assert.ok(Buffer.from((await bob.avatars.of(alice1.userId))!.data).equals(second));

      // Set from alice's other device: its own profile key, which bob gets with its first message.
      const third = pictureWith(10_000, marker);
      await alice2.avatars.set(third);
      await assert.rejects(
        bob.avatars.of(alice1.userId),
        (err) => err instanceof AttachmentError && err.reason === "authentication",
      );
      await alice2.send(direct, "from my laptop");
      await boxes.bob.has("from my laptop");
      // Alice's first device gets her second's key the same way, from its copy of that message.
      await boxes.alice1.has("from my laptop");
      assert.ok(Buffer.from((await bob.avatars.of(alice1.userId))!.data).equals(third));

      // Hidden by the profile setting: the same "no avatar" as after a removal.
      await alice1.setPrivacy({ profile: "nobody" });
      assert.equal(await bob.avatars.of(alice1.userId), undefined, "hidden from bob");
      assert.ok(Buffer.from((await alice1.avatars.of(alice1.userId))!.data).equals(third), "not from alice");
      await alice1.setPrivacy({ profile: "everyone" });
      assert.equal(await alice1.avatars.remove(), true);
      assert.equal(await bob.avatars.of(alice1.userId), undefined, "removed");
      assert.equal(await alice1.avatars.remove(), false);
      assert.deepEqual(
        (await backend.objectIds(suite.server.dataDir)).filter((id) =>
          [set, replaced].some((s) => s.objectId === id),
        ),
        [],
      );
    });

    it("an avatar too large is refused on the device, before anything is uploaded", async () => {
      const alice = await suite.devices.register("alice");
      const before = await backend.objectIds(suite.server.dataDir);
      await assert.rejects(alice.avatars.set(new Uint8Array(MAX_AVATAR_BYTES + 1)), (err) => {
        assert.ok(err instanceof ConnectError);
        assert.equal(err.code, Code.InvalidArgument);
        assert.match(err.rawMessage, /at most 1048548 bytes/);
        return true;
      });
      assert.deepEqual(await backend.objectIds(suite.server.dataDir), before);
      // The largest allowed picture goes through (exactly 1 MiB of ciphertext).
      const set = await alice.avatars.set(randomBytes(MAX_AVATAR_BYTES));
      assert.equal(set.lengthBytes, 1024 * 1024);
      assert.equal((await alice.avatars.of(alice.userId))?.data.length, MAX_AVATAR_BYTES);
    });
  });
}
