import assert from "node:assert/strict";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { PrivacyAudience } from "../../gen/switchboard/v1/accounts_pb.js";
import { Mesh } from "../../services/mesh/launcher.js";
import { meshPrerequisites } from "../helpers/backends.js";
import { outgoingText, TestDevice, uniqueName } from "../helpers/device.js";
import { eventually } from "../helpers/inbox.js";
import { SCYLLA_SKIP, type ScratchKeyspace, scratchKeyspace } from "../helpers/scylla.js";
import { removeDir } from "../helpers/server.js";

/**
 * Privacy settings where they must hold: a mesh of separate processes (two gateways, the accounts
 * service, a sequencer, fanout, presence) over NATS and Redis, on the ScyllaDB store. A setting
 * changed through one gateway reaches the other gateway's cache by the PrivacyChanged broadcast
 * on NATS; until it arrives that gateway may act on the copy it had, so the checks below wait
 * for it (with a deadline) instead of assuming it is instant.
 */
const { missing, skip: meshSkip } = meshPrerequisites();
const skip = meshSkip || SCYLLA_SKIP;

describe("privacy settings in the mesh, on ScyllaDB", { skip }, () => {
  let dir = "";
  let mesh: Mesh | undefined;
  let keyspace: ScratchKeyspace | undefined;
  const devices: TestDevice[] = [];

  before(async () => {
    if (missing.length > 0) throw new Error(`CI=true and ${missing.join(" and ")} missing`);
    keyspace = await scratchKeyspace("privacy_mesh");
    dir = await mkdtemp(join(tmpdir(), "sb-privacy-mesh-"));
    mesh = await Mesh.start({
      dir,
      gateways: 2,
      sequencers: 1,
      fanouts: 1,
      shards: 4,
      store: "scylla",
      env: {
        SCYLLA_CONTACT_POINTS: process.env.SCYLLA_CONTACT_POINTS ?? "",
        SCYLLA_LOCAL_DC: keyspace.options.localDataCenter,
        SCYLLA_KEYSPACE: keyspace.options.keyspace,
        SCYLLA_REPLICATION_FACTOR: "1",
      },
    });
  });

  after(async () => {
    await Promise.all(devices.map((d) => d.close()));
    await mesh?.stop();
    await keyspace?.drop();
    if (dir !== "") await removeDir(dir);
  });

  const user = async (prefix: string, gateway: number) => {
    const d = await TestDevice.register(mesh!.gatewayUrls[gateway]!, uniqueName(prefix));
    devices.push(d);
    return d;
  };

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
