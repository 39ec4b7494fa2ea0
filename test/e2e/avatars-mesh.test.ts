import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { Code, createClient } from "@connectrpc/connect";
import { PrivacyAudience } from "../../gen/switchboard/v1/accounts_pb.js";
import { MediaService } from "../../gen/switchboard/v1/media_pb.js";
import { rejectsWith } from "../helpers/expect.js";
import { scyllaMeshSkip, scyllaMeshSuite } from "../helpers/scylla-mesh.js";

/**
 * Avatars where the pieces are apart: a mesh of separate processes on ScyllaDB, where the
 * gateways forward MediaService to the process that runs media (with accounts, so no gateway of
 * its own: it authenticates against the directory and asks the sequencer process whether two
 * users have a direct conversation). The avatar record is in ScyllaDB's user_avatars.
 */
const skip = scyllaMeshSkip();

describe("avatars in the mesh, on ScyllaDB", { skip }, () => {
  const fx = scyllaMeshSuite("avatars");
  const user = (prefix: string, gateway: number) => fx.user(prefix, gateway);

  it("set through one gateway, fetched through the other, hidden by the profile setting, replaced and removed", async () => {
    const alice = await user("aa", 0);
    const bob = await user("ab", 1);
    const carol = await user("ac", 1);
    await alice.conversations.openDirect({ peerUserId: bob.userId });
    const aliceMedia = createClient(MediaService, alice.transport);
    const bobMedia = createClient(MediaService, bob.transport);
    const carolMedia = createClient(MediaService, carol.transport);

    const set = async (bytes: Buffer) => {
      const up = await aliceMedia.createAvatarUpload({ lengthBytes: BigInt(bytes.length) });
      const put = await fetch(up.uploadUrl, { method: "PUT", body: bytes });
      assert.equal(put.status, 200, await put.text());
      await aliceMedia.setAvatar({ objectId: up.objectId });
      return up.objectId;
    };
    const first = randomBytes(20_000);
    const firstId = await set(first);
    const seen = await bobMedia.getAvatar({ userId: alice.userId });
    assert.equal(seen.objectId, firstId);
    const firstUrl = seen.downloadUrl;
    const got = Buffer.from(await (await fetch(firstUrl)).arrayBuffer());
    assert.ok(got.equals(first), "bob, on the other gateway, gets alice's bytes");

    // Contacts only: bob has a direct conversation with alice (asked of the sequencer process),
    // carol has none.
    await alice.accounts.setPrivacy({ settings: { profile: PrivacyAudience.CONTACTS } });
    assert.equal((await bobMedia.getAvatar({ userId: alice.userId })).objectId, firstId);
    await rejectsWith(carolMedia.getAvatar({ userId: alice.userId }), Code.NotFound, /has no avatar/);

    // Replaced: the old object is gone, even behind a URL handed out before.
    const second = randomBytes(500);
    const secondId = await set(second);
    assert.notEqual((await fetch(firstUrl)).status, 200, "the replaced object is deleted");
    const now = await bobMedia.getAvatar({ userId: alice.userId });
    assert.equal(now.objectId, secondId);
    assert.ok(Buffer.from(await (await fetch(now.downloadUrl)).arrayBuffer()).equals(second));

    assert.equal((await aliceMedia.removeAvatar({})).removed, true);
    assert.notEqual((await fetch(now.downloadUrl)).status, 200, "the removed object is deleted");
    await rejectsWith(bobMedia.getAvatar({ userId: alice.userId }), Code.NotFound, /has no avatar/);
  });
});
