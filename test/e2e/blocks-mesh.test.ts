import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { PrivacyRefusalSchema } from "../../gen/switchboard/v1/accounts_pb.js";
import { outgoingText, TestDevice, uniqueName } from "../helpers/device.js";
import { eventually } from "../helpers/inbox.js";
import { scyllaMeshSkip, scyllaMeshSuite } from "../helpers/scylla-mesh.js";

/**
 * Blocks where they must hold: a mesh of separate processes (two gateways, the accounts service,
 * a sequencer, fanout, presence) over NATS and Redis, on the ScyllaDB store. A block made through
 * one gateway reaches the other gateway's cache by the BlocksChanged broadcast on NATS; until it
 * arrives that gateway may act on the list it had, so the checks below wait for it (with a
 * deadline) instead of assuming it is instant.
 */
const skip = scyllaMeshSkip();

/** Whether a direct send is refused as a block refuses it; an accepted one is delivered. */
async function refused(device: TestDevice, conversationId: string): Promise<boolean> {
  try {
    await device.gateway.send({ entry: outgoingText(conversationId, uniqueName("m"), "probe") });
    return false;
  } catch (err) {
    const e = ConnectError.from(err);
    if (e.code === Code.PermissionDenied && /^message not accepted/.test(e.rawMessage)) return true;
    throw err;
  }
}

describe("blocks in the mesh, on ScyllaDB", { skip }, () => {
  const fx = scyllaMeshSuite("blocks");
  const user = (prefix: string, gateway: number) => fx.user(prefix, gateway);

  it("a block made through one gateway holds on the other; unblocking lifts it there too", async () => {
    const alice = await user("ma", 0);
    const bob = await user("mb", 1);
    const { conversation } = await alice.conversations.openDirect({ peerUserId: bob.userId });
    const id = conversation!.conversationId;
    // Gateway 0 reads bob's (empty) list and keeps it.
    assert.equal(await refused(alice, id), false);

    await bob.accounts.blockUser({ userId: alice.userId });
    await eventually(
      () => refused(alice, id),
      () => "gateway 0 still admits alice's sends after bob blocked her on gateway 1",
    );
    // Bob's second device, on the other gateway, lists the block.
    const { code } = await bob.accounts.createLinkCode({});
    const bootstrap = new TestDevice(fx.mesh.gatewayUrls[0]!, "", "", "", bob.username);
    const linked = await bootstrap.accounts.linkDevice({ code, deviceName: "laptop" });
    bootstrap.sessions.abort();
    const bob2 = new TestDevice(
      fx.mesh.gatewayUrls[0]!,
      bob.userId,
      linked.credential!.deviceId,
      linked.credential!.deviceSecret,
      bob.username,
    );
    fx.track(bob2);
    await bob2.login();
    assert.deepEqual(
      (await bob2.accounts.listBlockedUsers({})).blocked.map((b) => b.userId),
      [alice.userId],
    );
    // A group add through gateway 0 is refused as bob's settings would refuse it.
    await assert.rejects(
      alice.conversations.createGroup({ title: "t", memberUserIds: [bob.userId] }),
      (err: unknown) => {
        const e = ConnectError.from(err);
        assert.equal(e.code, Code.PermissionDenied);
        assert.deepEqual(
          e.findDetails(PrivacyRefusalSchema).map((d) => d.userIds),
          [[bob.userId]],
        );
        return true;
      },
    );

    await bob2.accounts.unblockUser({ userId: alice.userId });
    await eventually(
      async () => !(await refused(alice, id)),
      () => "gateway 0 still refuses alice's sends after bob unblocked her",
    );
    const created = await alice.conversations.createGroup({ title: "t", memberUserIds: [bob.userId] });
    assert.match(created.conversation?.conversationId ?? "", /^g_/);
  });
});
