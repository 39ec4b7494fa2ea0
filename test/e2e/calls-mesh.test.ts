import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { CallMedia, CallOutcome, CallSignal } from "../../gen/switchboard/v1/calls_pb.js";
import { meshPrerequisites } from "../helpers/backends.js";
import { callEvents, callFrame, online, toHost, waitCall } from "../helpers/calls.js";
import { TestDevice, uniqueName } from "../helpers/device.js";
import { twoGatewayMesh } from "../helpers/mesh-calls.js";

/**
 * Calls across gateways in the distributed topology (every service its own OS process, over a
 * real nats-server and redis-server): call frames go gateway to gateway on the delivery channel,
 * the accept race is decided by the caller's gateway, and the call's entry is appended through
 * the sequencer process.
 */

const { skip } = meshPrerequisites();

describe("calls across gateways in the mesh", { skip }, () => {
  const calls = twoGatewayMesh("calls-mesh");

  it("the caller on one gateway, two callee devices on the other: both ring, the first accept wins, the loser stops, the entry reaches everyone", async () => {
    const [g0, g1] = calls.gateways;
    const alice = await TestDevice.register(g0, uniqueName("ma"));
    const bob1 = await TestDevice.register(g1, uniqueName("mb"));
    const bob2 = await bob1.link("tablet");
    calls.track(alice, bob1, bob2);
    const { conversation } = await alice.conversations.openDirect({ peerUserId: bob1.userId });
    for (const d of [alice, bob1, bob2]) await online(d);
    const callId = "mesh-call-1";

    alice.write(
      callFrame({ callId, peerUserId: bob1.userId, signal: CallSignal.OFFER, media: CallMedia.AUDIO }),
    );
    await waitCall(bob1, callId, CallSignal.OFFER);
    await waitCall(bob2, callId, CallSignal.OFFER);

    // Both accept; the caller's gateway lets exactly one through and tells the other to stop.
    bob1.write(callFrame({ callId, peerUserId: alice.userId, signal: CallSignal.ACCEPT }));
    bob2.write(callFrame({ callId, peerUserId: alice.userId, signal: CallSignal.ACCEPT }));
    const [accepted] = await waitCall(alice, callId, CallSignal.ACCEPT);
    const winner = accepted!.fromDeviceId;
    const loser = winner === bob1.deviceId ? bob2 : bob1;
    const [stop] = await waitCall(loser, callId, CallSignal.ANSWERED_ELSEWHERE);
    assert.equal(stop!.fromDeviceId, winner);
    assert.equal(callEvents(alice, callId, CallSignal.ACCEPT).length, 1, "one accept reached the caller");

    alice.write(callFrame({ callId, peerUserId: bob1.userId, signal: CallSignal.HANGUP }));
    for (const d of [alice, bob1, bob2]) {
      const entry = await d.waitFor(
        () => d.entries(conversation!.conversationId).find((e) => e.body.case === "call"),
        `the call entry on ${d.deviceId}`,
        20_000,
      );
      assert.ok(entry.body.case === "call");
      assert.equal(entry.body.value.outcome, CallOutcome.ANSWERED);
      assert.equal(entry.body.value.answeredDeviceId, winner);
    }
  });
  it("a group call with its host on one gateway: joins from both gateways are decided there and announced across, pairwise signalling crosses, the entry reaches every member", async () => {
    const [g0, g1] = calls.gateways;
    const host = await TestDevice.register(g0, uniqueName("gh"));
    const near = await TestDevice.register(g0, uniqueName("gn"));
    const far1 = await TestDevice.register(g1, uniqueName("gf"));
    const far2 = await far1.link("tablet");
    calls.track(host, near, far1, far2);
    const { conversation } = await host.conversations.createGroup({
      title: "mesh call",
      memberUserIds: [near.userId, far1.userId],
    });
    const conversationId = conversation!.conversationId;
    for (const d of [host, near, far1, far2]) await online(d);
    const callId = "mesh-group-1";

    host.write(callFrame({ callId, conversationId, signal: CallSignal.OFFER, media: CallMedia.AUDIO }));
    for (const d of [near, far1, far2]) await waitCall(d, callId, CallSignal.OFFER);

    // Joins from both gateways at once: the host's gateway lets both in and tells everyone.
    toHost(near, host, callId, conversationId, CallSignal.JOIN);
    toHost(far1, host, callId, conversationId, CallSignal.JOIN);
    const [nearIn] = await waitCall(near, callId, CallSignal.JOINED);
    const [farIn] = await waitCall(far1, callId, CallSignal.JOINED);
    // Whoever came second saw the other already there.
    assert.equal(nearIn!.participants.length + farIn!.participants.length, 3);
    await waitCall(host, callId, CallSignal.JOIN, { count: 2 });
    const [stop] = await waitCall(far2, callId, CallSignal.ANSWERED_ELSEWHERE);
    assert.equal(stop!.fromDeviceId, far1.deviceId);
    const first = nearIn!.participants.length === 1 ? near : far1;
    const second = first === near ? far1 : near;
    await waitCall(first, callId, CallSignal.JOIN);
    assert.equal(callEvents(first, callId, CallSignal.JOIN)[0]!.fromDeviceId, second.deviceId);

    // Pairwise across the gateways.
    far1.write(
      callFrame({
        callId,
        conversationId,
        peerUserId: near.userId,
        signal: CallSignal.OFFER,
        payloads: [{ deviceId: near.deviceId, ciphertext: new TextEncoder().encode("far to near") }],
      }),
    );
    const [ring, offer] = await waitCall(near, callId, CallSignal.OFFER, { count: 2 });
    assert.equal(ring!.ciphertext.length, 0, "the ring first, then the offer");
    assert.equal(new TextDecoder().decode(offer!.ciphertext), "far to near");

    for (const d of [far1, near, host]) toHost(d, host, callId, conversationId, CallSignal.LEAVE);
    for (const d of [host, near, far1, far2]) {
      const entry = await d.waitFor(
        () =>
          d
            .entries(conversationId)
            .find((e) => e.body.case === "call" && e.body.value.outcome !== CallOutcome.ONGOING),
        `the group call entry on ${d.deviceId}`,
        20_000,
      );
      assert.ok(entry.body.case === "call");
      assert.equal(entry.body.value.group, true);
      assert.equal(entry.body.value.peakParticipants, 3);
      assert.deepEqual(
        entry.body.value.participants.map((p) => p.deviceId).sort(),
        [host.deviceId, near.deviceId, far1.deviceId].sort(),
      );
    }
  });
});
