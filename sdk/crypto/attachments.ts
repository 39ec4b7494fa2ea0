import { createCipheriv, createDecipheriv, createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { createReadStream } from "node:fs";
import { open, rename, stat, unlink } from "node:fs/promises";

// An encrypted attachment is `iv (12 bytes) || AES-256-GCM ciphertext || tag (16 bytes)`, under a
// fresh random 32-byte key per file. The key and the SHA-256 digest of those bytes travel inside the
// end-to-end encrypted message; the server and object store only ever see the encrypted bytes.

const IV_BYTES = 12;
const TAG_BYTES = 16;
const KEY_BYTES = 32;
/** Bytes an encrypted attachment adds to its plaintext. */
export const ATTACHMENT_OVERHEAD = IV_BYTES + TAG_BYTES;

/** What the sender keeps (and puts in the message) about an encrypted attachment. */
export interface AttachmentSecrets {
  /** The AES-256 key, 32 random bytes, used for this file only. */
  key: Uint8Array;
  /** SHA-256 of the encrypted bytes (what is uploaded). */
  digest: Uint8Array;
  /** Length of the encrypted bytes. */
  size: number;
}

/** Why an attachment was refused. */
export type AttachmentFailure = "digest" | "authentication" | "format";

/** An attachment did not verify; nothing of its plaintext was returned or left on disk. */
export class AttachmentError extends Error {
  constructor(
    /** "digest": the downloaded bytes are not the ones the sender uploaded (tampered or corrupted);
     * "authentication": the key does not open them (wrong key, or bytes altered with a matching
     * digest); "format": too short or a bad key. */
    readonly reason: AttachmentFailure,
    message: string,
  ) {
    super(message);
    this.name = "AttachmentError";
  }
}

/** Encrypts a file held in memory with a fresh key. */
export function encryptAttachment(plaintext: Uint8Array): AttachmentSecrets & { ciphertext: Uint8Array } {
  const key = randomBytes(KEY_BYTES);
  const iv = randomBytes(IV_BYTES);
  const cipher = createCipheriv("aes-256-gcm", key, iv);
  const ciphertext = Buffer.concat([iv, cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]);
  return {
    ciphertext,
    key: new Uint8Array(key),
    digest: new Uint8Array(createHash("sha256").update(ciphertext).digest()),
    size: ciphertext.length,
  };
}

/** Verifies the digest, then decrypts and authenticates an attachment held in memory. */
export function decryptAttachment(ciphertext: Uint8Array, key: Uint8Array, digest: Uint8Array): Uint8Array {
  checkKey(key);
  if (ciphertext.length < ATTACHMENT_OVERHEAD) {
    throw new AttachmentError(
      "format",
      `the attachment is ${ciphertext.length} bytes, too short to be encrypted`,
    );
  }
  checkDigest(createHash("sha256").update(ciphertext).digest(), digest);
  const iv = ciphertext.subarray(0, IV_BYTES);
  const tag = ciphertext.subarray(ciphertext.length - TAG_BYTES);
  const decipher = createDecipheriv("aes-256-gcm", key, iv);
  decipher.setAuthTag(tag);
  const body = decipher.update(ciphertext.subarray(IV_BYTES, ciphertext.length - TAG_BYTES));
  try {
    return Buffer.concat([body, decipher.final()]);
  } catch {
    throw authFailure();
  }
}

/**
 * Encrypts a file to another file, streaming (constant memory for any size). The output is
 * written atomically: it exists only once complete.
 */
export async function encryptAttachmentFile(
  inputPath: string,
  outputPath: string,
): Promise<AttachmentSecrets> {
  const key = randomBytes(KEY_BYTES);
  const iv = randomBytes(IV_BYTES);
  const cipher = createCipheriv("aes-256-gcm", key, iv);
  const hash = createHash("sha256");
  const tmp = `${outputPath}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`;
  const out = await open(tmp, "w", 0o600);
  let size = 0;
  const write = async (chunk: Buffer) => {
    if (chunk.length === 0) return;
    hash.update(chunk);
    size += chunk.length;
    await out.write(chunk);
  };
  try {
    await write(iv);
    for await (const chunk of createReadStream(inputPath)) await write(cipher.update(chunk as Buffer));
    await write(cipher.final());
    await write(cipher.getAuthTag());
    await out.sync();
  } catch (err) {
    await out.close();
    await unlink(tmp).catch(() => {});
    throw err;
  }
  await out.close();
  await rename(tmp, outputPath);
  return { key: new Uint8Array(key), digest: new Uint8Array(hash.digest()), size };
}

/**
 * Decrypts an encrypted file to another file, streaming. The digest is checked first (one pass),
 * then the file is decrypted to a temporary file that replaces outputPath only once the GCM tag
 * verified: unauthenticated plaintext never appears at outputPath.
 */
export async function decryptAttachmentFile(
  inputPath: string,
  outputPath: string,
  key: Uint8Array,
  digest: Uint8Array,
): Promise<void> {
  checkKey(key);
  const { size } = await stat(inputPath);
  if (size < ATTACHMENT_OVERHEAD) {
    throw new AttachmentError("format", `the attachment is ${size} bytes, too short to be encrypted`);
  }
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(inputPath)) hash.update(chunk as Buffer);
  checkDigest(hash.digest(), digest);

  const input = await open(inputPath, "r");
  const iv = Buffer.alloc(IV_BYTES);
  const tag = Buffer.alloc(TAG_BYTES);
  try {
    await input.read(iv, 0, IV_BYTES, 0);
    await input.read(tag, 0, TAG_BYTES, size - TAG_BYTES);
  } finally {
    await input.close();
  }
  const decipher = createDecipheriv("aes-256-gcm", key, iv);
  decipher.setAuthTag(tag);
  const tmp = `${outputPath}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`;
  const out = await open(tmp, "w", 0o600);
  let ok = false;
  try {
    if (size > ATTACHMENT_OVERHEAD) {
      const body = createReadStream(inputPath, { start: IV_BYTES, end: size - TAG_BYTES - 1 });
      for await (const chunk of body) await out.write(decipher.update(chunk as Buffer));
    }
    try {
      await out.write(decipher.final());
    } catch {
      throw authFailure();
    }
    await out.sync();
    ok = true;
  } finally {
    await out.close();
    if (!ok) await unlink(tmp).catch(() => {});
  }
  await rename(tmp, outputPath);
}

function checkKey(key: Uint8Array): void {
  if (key.length !== KEY_BYTES) {
    throw new AttachmentError("format", `an attachment key is ${KEY_BYTES} bytes, not ${key.length}`);
  }
}

function checkDigest(actual: Uint8Array, expected: Uint8Array): void {
  if (expected.length !== actual.length || !timingSafeEqual(actual, expected)) {
    throw new AttachmentError(
      "digest",
      "the attachment's digest does not match the one in the message: it was tampered with or corrupted",
    );
  }
}

function authFailure(): AttachmentError {
  return new AttachmentError(
    "authentication",
    "the attachment does not decrypt with this key: wrong key, or the ciphertext was altered",
  );
}
