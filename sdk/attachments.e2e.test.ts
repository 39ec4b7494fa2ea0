import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { before, describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import type { AttachmentPointer } from "../gen/switchboard/v1/content_pb.js";
import { eventually, Inbox } from "../test/helpers/inbox.js";
import { mediaBackends, sdkMediaSuite } from "../test/helpers/media-backends.js";
import type { SwitchboardClient } from "./client.js";
import { AttachmentError } from "./crypto/attachments.js";

// Encrypted attachments end to end: SDK clients against a real server process, once with the local
// directory engine (HMAC-signed URLs served by the media service) and once with the MinIO engine
// pointed at a real MinIO server the test starts (test/helpers/minio.ts), which checks the
// presigned URLs' signatures itself. The files are 1-3 MB, so each backend takes seconds.

/** The media service's limit for these servers: 3 MiB of ciphertext. */
const MAX_BYTES = 3 * 1024 * 1024;
/** What encryption adds to a file: a 12-byte IV and a 16-byte GCM tag. */
const OVERHEAD = 28;
const BUCKET = "switchboard-media-e2e";

/** Random bytes with a recognisable marker at a few places, to show the store never holds it. */
function fileWith(size: number, marker: string): Buffer {
  const data = randomBytes(size);
  for (const at of [0, Math.floor(size / 2), size - marker.length]) data.write(marker, at, "latin1");
  return data;
}

function samePointer(got: AttachmentPointer, sent: AttachmentPointer, who: string): void {
  assert.equal(got.objectId, sent.objectId, `${who}: object id`);
  assert.ok(Buffer.from(got.key).equals(Buffer.from(sent.key)), `${who}: key`);
  assert.ok(Buffer.from(got.digest).equals(Buffer.from(sent.digest)), `${who}: digest`);
  assert.equal(got.sizeBytes, sent.sizeBytes, `${who}: size`);
  assert.equal(got.ciphertextBytes, sent.ciphertextBytes, `${who}: ciphertext size`);
  assert.equal(got.fileName, sent.fileName, `${who}: file name`);
  assert.equal(got.contentType, sent.contentType, `${who}: content type`);
}

/** Asserts a refusal by the media service: a ConnectError with this code and message. */
async function refusedWith(promise: Promise<unknown>, code: Code, pattern: RegExp): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof ConnectError, `expected a ConnectError, got ${String(err)}`);
    assert.equal(err.code, code, `expected ${Code[code]}, got ${Code[err.code]}: ${err.rawMessage}`);
    assert.match(err.rawMessage, pattern);
    return true;
  });
}

for (const backend of mediaBackends(BUCKET)) {
  describe(`end-to-end encrypted attachments, ${backend.name} (SDK against a server process)`, {
    skip: backend.skip,
  }, () => {
    const suite = sdkMediaSuite(backend, "sb-attachments-", {
      SWITCHBOARD_MEDIA_MAX_BYTES: String(MAX_BYTES),
    });
    let n = 0;

    before(async () => {
      const server = suite.server;
      // The log is on stderr and the listening line on stdout: the log line may come a moment later.
      await eventually(
        () => server.logs.some((l) => l.includes("media service started") && l.includes(`"engine":"`)),
        () => "the media service started",
        10_000,
      );
      assert.ok(
        server.logs.some((l) => l.includes(`"engine":"${backend.engine}"`)),
        `the server runs the ${backend.engine} engine: ${server.logs.join("\n")}`,
      );
    });

    const register = (name: string) => suite.devices.register(name);
    const link = (first: SwitchboardClient, name: string) => suite.devices.link(first, name);

    /** A fresh empty directory for one device's downloads. */
    async function downloads(name: string): Promise<string> {
      const dir = join(suite.base, `downloads-${name}-${n++}`);
      await mkdir(dir);
      return dir;
    }

    /** The stored ciphertext: the file's length plus the overhead, with no trace of the plaintext. */
    async function checkStored(objectId: string, plaintext: Buffer, marker: string): Promise<void> {
      const stored = await backend.readObject(suite.server.dataDir, objectId);
      assert.equal(stored.length, plaintext.length + OVERHEAD, "the store holds the ciphertext's length");
      assert.ok(!stored.includes(marker), "the stored object contains the file's marker");
      assert.ok(!stored.includes(plaintext.subarray(1000, 1064)), "the stored object contains plaintext");
    }

    it("1:1: both of bob's devices and alice's other device decrypt the same bytes; a non-member gets no URL", async () => {
      const alice1 = await register("alice");
      const bob1 = await register("bob");
      const eve = await register("eve");
      const alice2 = await link(alice1, "alice2");
      const bob2 = await link(bob1, "bob2");
      const boxes = { alice2: new Inbox("alice2", alice2), bob1: new Inbox("bob1", bob1) };
      const bob2Box = new Inbox("bob2", bob2);
      for (const c of [alice1, alice2, bob1, bob2, eve]) await c.connect();
      const id = (await alice1.openDirect(bob1.userId)).conversationId;

      const marker = `direct-file-marker-${randomBytes(6).toString("hex")}`;
      const data = fileWith(2_000_000, marker);
      const sent = await alice1.sendAttachment(
        id,
        { data, fileName: "report.bin", contentType: "application/octet-stream" },
        { caption: "the report" },
      );
      assert.ok(sent.seq > 0n);
      assert.equal(sent.attachment.sizeBytes, BigInt(data.length));
      assert.equal(sent.attachment.ciphertextBytes, BigInt(data.length + OVERHEAD));
      await checkStored(sent.attachment.objectId, data, marker);

      for (const box of [boxes.alice2, boxes.bob1, bob2Box]) {
        const entry = await box.entry(id, sent.seq);
        assert.equal(entry.kind, "message", box.name);
        assert.equal(new TextDecoder().decode(entry.payload), "the report", `${box.name}: caption`);
        assert.equal(entry.attachments.length, 1, `${box.name}: one attachment`);
        const pointer = entry.attachments[0]!;
        samePointer(pointer, sent.attachment, box.name);
        const dir = await downloads(box.name);
        const path = join(dir, pointer.fileName);
        await box.client.downloadAttachment(id, pointer, { path });
        assert.ok((await readFile(path)).equals(data), `${box.name}: the written file is the file`);
        assert.deepEqual(await readdir(dir), [pointer.fileName], `${box.name}: nothing else written`);
        assert.deepEqual(box.failures, [], `${box.name}: no decryption failure`);
      }
      // The sender can fetch its own upload again too.
      const own = await alice1.downloadAttachment(id, sent.attachment);
      assert.ok(Buffer.from(own).equals(data));

      // eve holds the pointer (key and all) but is not in the conversation: no URL for her.
      await refusedWith(
        eve.downloadAttachment(id, sent.attachment),
        Code.PermissionDenied,
        new RegExp(`not a member of conversation ${id}`),
      );
      // Nor through a conversation she is in: the object is bound to alice and bob's.
      const eveAndAlice = (await eve.openDirect(alice1.userId)).conversationId;
      await refusedWith(
        eve.downloadAttachment(eveAndAlice, sent.attachment),
        Code.NotFound,
        new RegExp(`object ${sent.attachment.objectId} not found in conversation ${eveAndAlice}`),
      );
    });

    it("group of three: every other member device decrypts; a non-member and a removed member get no URL", async () => {
      const alice = await register("galice");
      const bob1 = await register("gbob");
      const carol = await register("gcarol");
      const eve = await register("geve");
      const bob2 = await link(bob1, "gbob2");
      const boxes = [new Inbox("bob1", bob1), new Inbox("bob2", bob2), new Inbox("carol", carol)];
      for (const c of [alice, bob1, bob2, carol, eve]) await c.connect();
      const id = (await alice.createGroup("files", [bob1.userId, carol.userId])).conversationId;

      const marker = `group-file-marker-${randomBytes(6).toString("hex")}`;
      const data = fileWith(1_500_000, marker);
      // From a file: encrypted and uploaded streaming, through a temporary file of ciphertext.
      const source = join(await downloads("source"), "plans-source.pdf");
      await writeFile(source, data);
      const sent = await alice.sendAttachment(id, {
        path: source,
        fileName: "plans.pdf",
        contentType: "application/pdf",
      });
      assert.equal(sent.attachment.sizeBytes, BigInt(data.length));
      await checkStored(sent.attachment.objectId, data, marker);
      for (const box of boxes) {
        const entry = await box.entry(id, sent.seq);
        assert.equal(entry.attachments.length, 1, `${box.name}: one attachment`);
        const pointer = entry.attachments[0]!;
        samePointer(pointer, sent.attachment, box.name);
        assert.equal(entry.payload?.length, 0, `${box.name}: no caption`);
        const dir = await downloads(box.name);
        const path = join(dir, "plans.pdf");
        await box.client.downloadAttachment(id, pointer, { path });
        assert.ok((await readFile(path)).equals(data), `${box.name}: the file decrypts to the same bytes`);
        assert.deepEqual(box.failures, [], `${box.name}: no decryption failure`);
      }
      // A member replies with a file of their own, which the others read as well.
      const reply = fileWith(1_000_000, marker);
      const back = await carol.sendAttachment(id, { data: reply, fileName: "notes.txt" });
      for (const box of boxes.slice(0, 2)) {
        const pointer = (await box.entry(id, back.seq)).attachments[0]!;
        const bytes = await box.client.downloadAttachment(id, pointer);
        assert.ok(Buffer.from(bytes).equals(reply), `${box.name}: carol's file`);
      }

      await refusedWith(
        eve.downloadAttachment(id, sent.attachment),
        Code.PermissionDenied,
        new RegExp(`not a member of conversation ${id}`),
      );
      // Membership is checked at each request: carol, removed, loses access to what she could read.
      const removal = await alice.removeMembers(id, [carol.userId]);
      assert.ok(removal !== undefined);
      await refusedWith(
        carol.downloadAttachment(id, sent.attachment),
        Code.PermissionDenied,
        new RegExp(`not a member of conversation ${id}`),
      );
      await refusedWith(
        carol.sendAttachment(id, { data: randomBytes(1000) }),
        Code.PermissionDenied,
        /not a member of conversation/,
      );
    });

    it("an object altered in storage is refused with a digest error and nothing is written", async () => {
      const alice = await register("talice");
      const bob = await register("tbob");
      const box = new Inbox("bob", bob);
      await alice.connect();
      await bob.connect();
      const id = (await alice.openDirect(bob.userId)).conversationId;
      const data = randomBytes(1_000_000);
      const sent = await alice.sendAttachment(id, { data, fileName: "photo.jpg", contentType: "image/jpeg" });
      const pointer = (await box.entry(id, sent.seq)).attachments[0]!;

      // One bit flipped in the middle of the stored ciphertext, behind the media service's back.
      const original = await backend.readObject(suite.server.dataDir, sent.attachment.objectId);
      const tampered = Buffer.from(original);
      const at = Math.floor(tampered.length / 2);
      tampered[at] = (tampered[at] ?? 0) ^ 0x01;
      await backend.writeObject(suite.server.dataDir, sent.attachment.objectId, tampered);

      const dir = await downloads("tampered");
      const path = join(dir, "photo.jpg");
      await assert.rejects(bob.downloadAttachment(id, pointer, { path }), (err: unknown) => {
        assert.ok(err instanceof AttachmentError, `expected an AttachmentError, got ${String(err)}`);
        assert.equal(err.reason, "digest");
        assert.match(err.message, /digest does not match/);
        return true;
      });
      assert.deepEqual(await readdir(dir), [], "no output file, not even a temporary one");
      // Also without a path: the error, never the bytes.
      await assert.rejects(
        bob.downloadAttachment(id, pointer),
        (err: unknown) => err instanceof AttachmentError && err.reason === "digest",
      );

      // Put back, the same object downloads and decrypts: the flipped bit was the only problem.
      await backend.writeObject(suite.server.dataDir, sent.attachment.objectId, original);
      await bob.downloadAttachment(id, pointer, { path });
      assert.ok((await readFile(path)).equals(data));
    });

    it("a file over the configured maximum is refused before upload, and nothing is stored or sent", async () => {
      const alice = await register("malice");
      const bob = await register("mbob");
      const box = new Inbox("bob", bob);
      await alice.connect();
      await bob.connect();
      const id = (await alice.openDirect(bob.userId)).conversationId;
      const history = async () =>
        (await alice.api.conversations.getHistory({ conversationId: id, afterSeq: 0n, limit: 0 })).entries
          .length;
      const entriesBefore = await history();
      const objectsBefore = (await backend.objectIds(suite.server.dataDir)).sort();

      // One byte too many once encrypted: the limit counts what is stored, the ciphertext.
      const over = randomBytes(MAX_BYTES - OVERHEAD + 1);
      const tooLong = new RegExp(
        `length_bytes: ${MAX_BYTES + 1} exceeds the maximum attachment size of ${MAX_BYTES} bytes \\(3 MiB\\)`,
      );
      await refusedWith(
        alice.sendAttachment(id, { data: over, fileName: "big.bin" }),
        Code.InvalidArgument,
        tooLong,
      );
      // The same from a file: refused once its ciphertext's length is known, before any upload.
      const overFile = join(await downloads("over"), "big.bin");
      await writeFile(overFile, over);
      await refusedWith(alice.sendAttachment(id, { path: overFile }), Code.InvalidArgument, tooLong);
      await refusedWith(
        alice.uploadAttachment(id, { data: randomBytes(MAX_BYTES) }),
        Code.InvalidArgument,
        /exceeds the maximum attachment size/,
      );
      assert.equal(await history(), entriesBefore, "no message was sent");
      assert.deepEqual(
        (await backend.objectIds(suite.server.dataDir)).sort(),
        objectsBefore,
        "nothing stored",
      );

      // Exactly at the limit is accepted, and arrives whole.
      const atLimit = randomBytes(MAX_BYTES - OVERHEAD);
      const sent = await alice.sendAttachment(id, { data: atLimit, fileName: "exact.bin" });
      const pointer = (await box.entry(id, sent.seq)).attachments[0]!;
      assert.ok(Buffer.from(await bob.downloadAttachment(id, pointer)).equals(atLimit));
    });
  });
}
