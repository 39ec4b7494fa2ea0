import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { PrivacyAudience } from "../../gen/switchboard/v1/accounts_pb.js";
import { MediaService } from "../../gen/switchboard/v1/media_pb.js";
import type { TestDevice } from "../helpers/device.js";
import { rejectsWith } from "../helpers/expect.js";
import { serverFixture } from "../helpers/fixture.js";

// Profile avatars at the wire, against a server process with the local media engine: objects
// bound to their user, the old one deleted on replacement and removal, and the `profile` privacy
// setting (and blocks) deciding who may download, with a hidden avatar answered exactly as a
// missing one.
// The SDK's encryption of the picture and the profile keys are sdk/avatars.e2e.test.ts's.

const { EVERYONE, CONTACTS, NOBODY } = PrivacyAudience;
const MAX_AVATAR_BYTES = 1024 * 1024;

function media(device: TestDevice) {
  return createClient(MediaService, device.transport);
}

/** Uploads bytes as the device's avatar upload (not yet set); returns the object id. */
async function upload(device: TestDevice, bytes: Uint8Array): Promise<string> {
  const up = await media(device).createAvatarUpload({ lengthBytes: BigInt(bytes.length) });
  const put = await fetch(up.uploadUrl, { method: "PUT", body: bytes });
  assert.equal(put.status, 200, await put.text());
  return up.objectId;
}

/** Uploads and sets an avatar; returns its object id. */
async function setAvatar(device: TestDevice, bytes: Uint8Array): Promise<string> {
  const objectId = await upload(device, bytes);
  const set = await media(device).setAvatar({ objectId });
  assert.equal(set.lengthBytes, BigInt(bytes.length));
  return objectId;
}

/** The bytes a viewer downloads of a user's avatar. */
async function fetchAvatar(viewer: TestDevice, userId: string): Promise<{ objectId: string; bytes: Buffer }> {
  const got = await media(viewer).getAvatar({ userId });
  const res = await fetch(got.downloadUrl);
  assert.equal(res.status, 200);
  const bytes = Buffer.from(await res.arrayBuffer());
  assert.equal(BigInt(bytes.length), got.lengthBytes);
  return { objectId: got.objectId, bytes };
}

/** Everything a refused GetAvatar tells the caller: code, message and details, the owner's id blanked. */
async function refusal(viewer: TestDevice, userId: string): Promise<unknown> {
  try {
    await media(viewer).getAvatar({ userId });
  } catch (err) {
    assert.ok(err instanceof ConnectError, String(err));
    return {
      code: Code[err.code],
      message: err.rawMessage.replaceAll(userId, "<user>"),
      details: err.details,
      // Everything the server sent back but the time of day.
      metadata: [...err.metadata.entries()]
        .filter(([name]) => name !== "date")
        .map(([name, value]) => [name, value.replaceAll(userId, "<user>")]),
    };
  }
  assert.fail(`the avatar of ${userId} was served`);
}

describe("profile avatars through a running server (local media engine)", () => {
  const fx = serverFixture();
  const objectsDir = () => join(fx.server.dataDir, "media", "objects");
  const stored = async () => new Set(await readdir(objectsDir()).catch(() => [] as string[]));

  it("set, served, replaced and removed: each replaced object is deleted, and none is reachable as an attachment", async () => {
    const alice = await fx.user("alice");
    const bob = await fx.user("bob");
    const { conversation } = await alice.conversations.openDirect({ peerUserId: bob.userId });
    const direct = conversation!.conversationId;

    await rejectsWith(media(bob).getAvatar({ userId: alice.userId }), Code.NotFound);
    const first = randomBytes(40_000);
    const firstId = await setAvatar(alice, first);
    assert.ok((await stored()).has(firstId), "the object is stored");
    const seen = await fetchAvatar(bob, alice.userId);
    assert.equal(seen.objectId, firstId);
    assert.ok(seen.bytes.equals(first), "bob gets the bytes alice uploaded");
    assert.ok((await fetchAvatar(alice, alice.userId)).bytes.equals(first), "alice gets her own");

    // Bound to alice, never to a conversation: no member of any conversation reaches it that way.
    await rejectsWith(
      media(bob).createDownload({ objectId: firstId, conversationId: direct }),
      Code.NotFound,
    );
    await rejectsWith(media(bob).claimUpload({ objectId: firstId, conversationId: direct }), Code.NotFound);

    const second = randomBytes(1_000);
    const secondId = await setAvatar(alice, second);
    const afterReplace = await stored();
    assert.ok(afterReplace.has(secondId), "the new object is stored");
    assert.ok(!afterReplace.has(firstId), "the replaced object is deleted");
    assert.ok((await fetchAvatar(bob, alice.userId)).bytes.equals(second), "bob gets the new one");
    // Setting the same object again changes nothing and deletes nothing.
    await media(alice).setAvatar({ objectId: secondId });
    assert.ok((await stored()).has(secondId));

    const removed = await media(alice).removeAvatar({});
    assert.equal(removed.removed, true);
    assert.ok(!(await stored()).has(secondId), "the removed avatar's object is deleted");
    await rejectsWith(media(bob).getAvatar({ userId: alice.userId }), Code.NotFound);
    await rejectsWith(media(alice).getAvatar({ userId: alice.userId }), Code.NotFound);
    assert.equal((await media(alice).removeAvatar({})).removed, false, "nothing left to remove");
  });

  it("only the uploader's own uploaded avatar object can be set; sizes are bounded with precise codes", async () => {
    const alice = await fx.user("alice");
    const bob = await fx.user("bob");
    const { conversation } = await alice.conversations.openDirect({ peerUserId: bob.userId });
    const direct = conversation!.conversationId;

    await rejectsWith(
      media(alice).createAvatarUpload({ lengthBytes: 0n }),
      Code.InvalidArgument,
      /at least 1/,
    );
    await rejectsWith(
      media(alice).createAvatarUpload({ lengthBytes: BigInt(MAX_AVATAR_BYTES + 1) }),
      Code.InvalidArgument,
      /length_bytes: 1048577 exceeds the maximum avatar size of 1048576 bytes/,
    );
    // Exactly the maximum is taken.
    const largest = await setAvatar(alice, randomBytes(MAX_AVATAR_BYTES));
    assert.equal((await fetchAvatar(bob, alice.userId)).objectId, largest);

    // Another user's avatar upload, an attachment upload, an unknown id: not an avatar of bob's.
    const alicesUpload = await upload(alice, randomBytes(10));
    await rejectsWith(media(bob).setAvatar({ objectId: alicesUpload }), Code.NotFound);
    const attachment = await media(bob).createUpload({ conversationId: direct, lengthBytes: 10n });
    await fetch(attachment.uploadUrl, { method: "PUT", body: randomBytes(10) });
    await rejectsWith(media(bob).setAvatar({ objectId: attachment.objectId }), Code.NotFound);
    await rejectsWith(media(bob).setAvatar({ objectId: `m_${"0".repeat(26)}` }), Code.NotFound);
    await rejectsWith(media(bob).setAvatar({ objectId: "../etc/passwd" }), Code.InvalidArgument);
    // Reserved but not uploaded: nothing to make an avatar of.
    const empty = await media(bob).createAvatarUpload({ lengthBytes: 10n });
    await rejectsWith(
      media(bob).setAvatar({ objectId: empty.objectId }),
      Code.FailedPrecondition,
      /not been uploaded/,
    );
    await rejectsWith(media(alice).getAvatar({ userId: bob.userId }), Code.NotFound);
    // Alice's avatar is still the largest one.
    assert.equal((await fetchAvatar(bob, alice.userId)).objectId, largest);
  });

  it("the profile setting decides who may download, and a hidden avatar is answered exactly as none", async () => {
    const alice = await fx.user("alice");
    const bob = await fx.user("bob"); // a direct conversation: a contact
    const carol = await fx.user("carol"); // shares only a group with alice
    const dave = await fx.user("dave"); // shares nothing
    const erin = await fx.user("erin"); // never sets an avatar
    await alice.conversations.openDirect({ peerUserId: bob.userId });
    await alice.conversations.createGroup({ title: "group", memberUserIds: [carol.userId] });
    const avatar = randomBytes(5_000);
    await setAvatar(alice, avatar);
    const setProfile = (device: TestDevice, profile: PrivacyAudience) =>
      device.accounts.setPrivacy({ settings: { profile } });

    // Everyone (the default): every signed-in user.
    for (const viewer of [bob, carol, dave])
      assert.ok((await fetchAvatar(viewer, alice.userId)).bytes.equals(avatar));

    await setProfile(alice, CONTACTS);
    assert.ok((await fetchAvatar(bob, alice.userId)).bytes.equals(avatar), "a direct contact sees it");
    assert.ok((await fetchAvatar(alice, alice.userId)).bytes.equals(avatar), "the owner always does");
    const hiddenFromCarol = await refusal(carol, alice.userId);
    const hiddenFromDave = await refusal(dave, alice.userId);
    const noneOfErin = await refusal(carol, erin.userId);
    const unknown = await refusal(carol, `u_${"0".repeat(26)}`);
    assert.equal((hiddenFromCarol as { code: string }).code, "NotFound");
    assert.deepEqual(hiddenFromCarol, noneOfErin, "hidden reads exactly as a user without an avatar");
    assert.deepEqual(hiddenFromDave, noneOfErin);
    assert.deepEqual(unknown, noneOfErin, "and as a user who does not exist");

    await setProfile(alice, NOBODY);
    assert.deepEqual(await refusal(bob, alice.userId), noneOfErin, "nobody: not even a contact");
    assert.ok((await fetchAvatar(alice, alice.userId)).bytes.equals(avatar), "the owner still sees hers");

    // The same answer after she really has none: hidden and absent cannot be told apart.
    await setProfile(alice, CONTACTS);
    await media(alice).removeAvatar({});
    assert.deepEqual(await refusal(carol, alice.userId), hiddenFromCarol);
    assert.deepEqual(await refusal(bob, alice.userId), hiddenFromCarol);

    await setProfile(alice, EVERYONE);
    const again = await setAvatar(alice, avatar);
    assert.equal(
      (await fetchAvatar(dave, alice.userId)).objectId,
      again,
      "everyone again: a stranger sees it",
    );
    // A user alice blocked does not, whatever the setting, and cannot tell that from none.
    await alice.accounts.blockUser({ userId: dave.userId });
    assert.deepEqual(await refusal(dave, alice.userId), noneOfErin, "blocked: hidden as if none");
    assert.ok((await fetchAvatar(carol, alice.userId)).bytes.equals(avatar), "others still see it");
    await alice.accounts.unblockUser({ userId: dave.userId });
    assert.equal((await fetchAvatar(dave, alice.userId)).objectId, again, "unblocked: shown again");
  });
});
