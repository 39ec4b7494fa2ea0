import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from "node:crypto";
import { ATTACHMENT_OVERHEAD, AttachmentError } from "./attachments.js";

// A profile avatar is encrypted like an attachment (`iv (12 bytes) || AES-256-GCM ciphertext ||
// tag (16 bytes)`), but under a key derived from the uploading device's profile key instead of a
// fresh one: the profile key reaches contacts inside every encrypted content the device sends
// (SealedContent.profile_key), so a new avatar needs no message to become readable. The owner's
// user id is in the derivation, so an avatar served under another user's name does not open.
// GCM's tag authenticates it; there is no digest to carry.

const IV_BYTES = 12;
const TAG_BYTES = 16;
/** Bytes of a profile key. */
export const PROFILE_KEY_BYTES = 32;
/** The largest avatar ciphertext a server takes (MediaService.CreateAvatarUpload), in bytes. */
export const MAX_AVATAR_CIPHERTEXT_BYTES = 1024 * 1024;
/** The largest avatar picture, in bytes: the ciphertext limit less IV and tag. */
export const MAX_AVATAR_BYTES = MAX_AVATAR_CIPHERTEXT_BYTES - ATTACHMENT_OVERHEAD;

/** A new profile key: 32 random bytes. */
export function newProfileKey(): Uint8Array {
  return new Uint8Array(randomBytes(PROFILE_KEY_BYTES));
}

function avatarKey(profileKey: Uint8Array, userId: string): Buffer {
  if (profileKey.length !== PROFILE_KEY_BYTES) {
    throw new AttachmentError(
      "format",
      `a profile key is ${PROFILE_KEY_BYTES} bytes, not ${profileKey.length}`,
    );
  }
  return Buffer.from(hkdfSync("sha256", profileKey, new Uint8Array(), `switchboard avatar v1 ${userId}`, 32));
}

/** Encrypts a user's avatar picture under a profile key. */
export function encryptAvatar(profileKey: Uint8Array, userId: string, picture: Uint8Array): Uint8Array {
  const iv = randomBytes(IV_BYTES);
  const cipher = createCipheriv("aes-256-gcm", avatarKey(profileKey, userId), iv);
  return new Uint8Array(Buffer.concat([iv, cipher.update(picture), cipher.final(), cipher.getAuthTag()]));
}

/**
 * Opens a user's avatar with the first of the candidate profile keys (the keys of that user's
 * devices this device has received) that authenticates it. AttachmentError "authentication" when
 * none does (no key yet from the device that uploaded it, or bytes not the owner's), "format"
 * when too short.
 */
export function decryptAvatar(
  profileKeys: readonly Uint8Array[],
  userId: string,
  ciphertext: Uint8Array,
): Uint8Array {
  if (ciphertext.length < ATTACHMENT_OVERHEAD) {
    throw new AttachmentError(
      "format",
      `the avatar is ${ciphertext.length} bytes, too short to be encrypted`,
    );
  }
  const iv = ciphertext.subarray(0, IV_BYTES);
  const tag = ciphertext.subarray(ciphertext.length - TAG_BYTES);
  const body = ciphertext.subarray(IV_BYTES, ciphertext.length - TAG_BYTES);
  for (const profileKey of profileKeys) {
    const decipher = createDecipheriv("aes-256-gcm", avatarKey(profileKey, userId), iv);
    decipher.setAuthTag(tag);
    const plain = decipher.update(body);
    try {
      return new Uint8Array(Buffer.concat([plain, decipher.final()]));
    } catch {
      // Not this key; try the next.
    }
  }
  throw new AttachmentError(
    "authentication",
    profileKeys.length === 0
      ? `no profile key of ${userId} has reached this device yet (it comes with their encrypted messages)`
      : `none of the ${profileKeys.length} profile keys of ${userId} this device holds opens the avatar ` +
          "(it may come from a device of theirs that has not sent this device anything yet)",
  );
}
