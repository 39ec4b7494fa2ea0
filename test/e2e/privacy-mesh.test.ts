import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { PrivacyAudience } from "../../gen/switchboard/v1/accounts_pb.js";
import { outgoingText } from "../helpers/device.js";
import { eventually } from "../helpers/inbox.js";
import { scyllaMeshSkip, scyllaMeshSuite } from "../helpers/scylla-mesh.js";

/**
 * Privacy settings where they must hold: a mesh of separate processes (two gateways, the accounts
 * service, a sequencer, fanout, presence) over NATS and Redis, on the ScyllaDB store. A setting
 * changed through one gateway reaches the other gateway's cache by the PrivacyChanged broadcast
 * on NATS; until it arrives that gateway may act on the copy it had, so the checks below wait
 * for it (with a deadline) instead of assuming it is instant.
 */
const skip = scyllaMeshSkip();

describe("privacy settings in the mesh, on ScyllaDB", { skip }, () => {
  const fx = scyllaMeshSuite("privacy");
  const user = (prefix: string, gateway: number) => fx.user(prefix, gateway);

  it("a setting changed through one gateway holds on the other: display name and read cursor", async () => {
    const alice = await user("ma", 0);
    const bob = await user("mb", 1);
    const { conversation } = await alice.conversations.createGroup({
      title: "t",
      memberUserIds: [bob.userId],
    });
    const group = conversation!.conversationId;
    await bob.accounts.setProfile({ displayName: "Bob Mesh" });
    const sent = await alice.gateway.send({ entry: outgoingText(group, "m-1", "hi") });
    await bob.gateway.ack({ read: [{ conversationId: group, seq: sent.seq }] });
    const bobAsSeen = async () => {
      const { users } = await alice.accounts.lookupUsers({ userIds: [bob.userId] });
      const { members } = await alice.conversations.getConversation({ conversationId: group });
      const m = members.find((x) => x.userId === bob.userId)!;
      return { name: users[0]?.displayName, read: m.readUpTo, unread: m.joinedSeq - 1n };
    };
    // Gateway 0 reads bob's settings and keeps them.
    await eventually(
      async () => {
        const seen = await bobAsSeen();
        return seen.name === "Bob Mesh" && seen.read === sent.seq;
      },
      () => "alice sees bob's name and read cursor",
    );

    await bob.accounts.setPrivacy({ settings: { profile: PrivacyAudience.NOBODY, readReceipts: false } });
    await eventually(
      async () => {
        const seen = await bobAsSeen();
        return seen.name === bob.username && seen.read === seen.unread;
      },
      () => "gateway 0 still shows what bob hid through gateway 1",
    );
    const after = await bobAsSeen();
    assert.equal(after.name, bob.username);
    assert.equal(after.read, after.unread);
  });
});
