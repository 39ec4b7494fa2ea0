import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import {
  AttachmentError,
  decryptAttachment,
  decryptAttachmentFile,
  encryptAttachment,
  encryptAttachmentFile,
} from "./attachments.js";

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), "sb-attach-"));
});
after(() => rm(dir, { recursive: true, force: true }));

test("in memory: round trip; tampered bytes and a wrong key refused clearly", () => {
  const file = randomBytes(10_000);
  const enc = encryptAttachment(file);
  assert.equal(enc.key.length, 32);
  assert.equal(enc.digest.length, 32);
  assert.equal(enc.size, file.length + 28);
  assert.equal(Buffer.from(enc.ciphertext).includes(file.subarray(0, 32)), false);
  assert.deepEqual(Buffer.from(decryptAttachment(enc.ciphertext, enc.key, enc.digest)), file);
  assert.notDeepEqual(encryptAttachment(file).key, enc.key, "a fresh key per file");

  const tampered = new Uint8Array(enc.ciphertext);
  tampered[100] = (tampered[100] as number) ^ 1;
  assert.throws(
    () => decryptAttachment(tampered, enc.key, enc.digest),
    (err: unknown) =>
      err instanceof AttachmentError && err.reason === "digest" && /tampered/.test(err.message),
  );
  // A tampering that also replaced the digest still fails the GCM tag.
  const digestOfTampered = createHash("sha256").update(tampered).digest();
  assert.throws(
    () => decryptAttachment(tampered, enc.key, digestOfTampered),
    (err: unknown) => err instanceof AttachmentError && err.reason === "authentication",
  );
  assert.throws(
    () => decryptAttachment(enc.ciphertext, randomBytes(32), enc.digest),
    (err: unknown) =>
      err instanceof AttachmentError && err.reason === "authentication" && /wrong key/.test(err.message),
  );
  assert.throws(() => decryptAttachment(enc.ciphertext, randomBytes(16), enc.digest), { reason: "format" });
  assert.throws(() => decryptAttachment(new Uint8Array(5), enc.key, enc.digest), { reason: "format" });
  const empty = encryptAttachment(new Uint8Array(0));
  assert.equal(decryptAttachment(empty.ciphertext, empty.key, empty.digest).length, 0);
});

test("streaming files: round trip, same format as in memory, nothing left behind on failure", async () => {
  const plain = join(dir, "photo.bin");
  const data = randomBytes(3 * 1024 * 1024 + 17);
  await writeFile(plain, data);
  const enc = join(dir, "photo.enc");
  const secrets = await encryptAttachmentFile(plain, enc);
  const encrypted = await readFile(enc);
  assert.equal(secrets.size, encrypted.length);
  assert.deepEqual(Buffer.from(decryptAttachment(encrypted, secrets.key, secrets.digest)), data);
  const out = join(dir, "photo.out");
  await decryptAttachmentFile(enc, out, secrets.key, secrets.digest);
  assert.deepEqual(await readFile(out), data);

  const bad = join(dir, "photo.bad");
  const flipped = Buffer.from(encrypted);
  flipped[2_000_000] = (flipped[2_000_000] as number) ^ 1;
  await writeFile(bad, flipped);
  const out2 = join(dir, "photo.out2");
  await assert.rejects(decryptAttachmentFile(bad, out2, secrets.key, secrets.digest), { reason: "digest" });
  await assert.rejects(decryptAttachmentFile(enc, out2, randomBytes(32), secrets.digest), {
    name: "AttachmentError",
    reason: "authentication",
  });
  const names = await readdir(dir);
  assert.equal(names.includes("photo.out2"), false);
  assert.equal(
    names.some((n) => n.includes(".tmp-")),
    false,
    "no unauthenticated plaintext left on disk",
  );
});
