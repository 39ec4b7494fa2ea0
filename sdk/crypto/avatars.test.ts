import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { test } from "node:test";
import { AttachmentError } from "./attachments.js";
import { decryptAvatar, encryptAvatar, MAX_AVATAR_BYTES, newProfileKey } from "./avatars.js";

const ALICE = "u_alice0000000000000000000000";
const MALLORY = "u_mallory00000000000000000000";

function refused(fn: () => unknown, reason: string): void {
  assert.throws(fn, (err) => err instanceof AttachmentError && err.reason === reason);
}

test("an avatar opens with the profile key it was made with, found among others", () => {
  const key = newProfileKey();
  const picture = randomBytes(5_000);
  const sealed = encryptAvatar(key, ALICE, picture);
  assert.equal(sealed.length, picture.length + 28, "IV and tag only, like an attachment");
  assert.equal(Buffer.from(sealed).includes(picture.subarray(0, 32)), false, "no plaintext in it");
  assert.ok(Buffer.from(decryptAvatar([key], ALICE, sealed)).equals(picture));
  // A viewer holds the keys of every device of the owner and tries each.
  assert.ok(
    Buffer.from(decryptAvatar([newProfileKey(), newProfileKey(), key], ALICE, sealed)).equals(picture),
  );
  assert.notDeepEqual(encryptAvatar(key, ALICE, picture), sealed, "a fresh IV each time");
  assert.equal(MAX_AVATAR_BYTES, 1024 * 1024 - 28);
});

test("another user's name, another key, altered bytes or too few bytes are refused", () => {
  const key = newProfileKey();
  const sealed = encryptAvatar(key, ALICE, randomBytes(100));
  // Served under another user's id (a server swapping avatars): the derivation differs.
  refused(() => decryptAvatar([key], MALLORY, sealed), "authentication");
  refused(() => decryptAvatar([newProfileKey()], ALICE, sealed), "authentication");
  refused(() => decryptAvatar([], ALICE, sealed), "authentication");
  const altered = Buffer.from(sealed);
  altered[40] = altered[40]! ^ 1;
  refused(() => decryptAvatar([key], ALICE, altered), "authentication");
  refused(() => decryptAvatar([key], ALICE, sealed.subarray(0, 27)), "format");
  refused(() => encryptAvatar(new Uint8Array(31), ALICE, sealed), "format");
});
