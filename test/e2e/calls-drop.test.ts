import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { CallEndReason, CallMedia, CallOutcome, CallSignal } from "../../gen/switchboard/v1/calls_pb.js";
import { meshPrerequisites } from "../helpers/backends.js";
import { callEntry, callEvents, callFrame, online, toHost, waitCall } from "../helpers/calls.js";
import { TestDevice, uniqueName } from "../helpers/device.js";
import { twoGatewayMesh } from "../helpers/mesh-calls.js";

/**
 * Devices that drop off mid-call (docs/calls.md, "Devices that drop off"), across two gateway
 * processes of the mesh: a caller or an answered callee whose stream goes and does not come back
 * within the grace has its calls ended for it (the other side told HANGUP with the reason
 * DISCONNECTED, every callee device stopped ringing, the entry written); one that comes back on
 * the other gateway keeps its call (the state is handed there); a group call whose host drops off
 * is handed to a participant on the other gateway, which takes joins and leaves and writes the
 * final entry.
 */

const { skip } = meshPrerequisites();

/** The same device with a fresh connection to a gateway (maybe another one). */
async function reconnect(d: TestDevice, url: string): Promise<TestDevice> {
  const again = new TestDevice(url, d.userId, d.deviceId, d.secret, d.username);
  await again.login();
  await online(again);
  return again;
}

describe("calls whose devices drop off, across two gateways", { skip }, () => {
  const calls = twoGatewayMesh("calls-drop", {
    // Every test registers its own users, all from 127.0.0.1.
    env: { SWITCHBOARD_REGISTRATIONS_PER_ADDRESS_PER_HOUR: "100" },
  });
  const { track, logged } = calls;

  /**
   * Alice on the first gateway offers a call to Bob on the second (and, with `tablet`, to the
   * tablet he linked too), once every device is online. Bob's devices come first in `bobs`.
   */
  async function aliceCallsBob(callId: string, media: CallMedia, options: { tablet?: boolean } = {}) {
    const [g0, g1] = calls.gateways;
    const alice = await TestDevice.register(g0, uniqueName("da"));
    const bob = await TestDevice.register(g1, uniqueName("db"));
    const bobs = options.tablet === true ? [bob, await bob.link("tablet")] : [bob];
    track(alice, ...bobs);
    await alice.conversations.openDirect({ peerUserId: bob.userId });
    for (const d of [alice, ...bobs]) await online(d);
    alice.write(callFrame({ callId, peerUserId: bob.userId, signal: CallSignal.OFFER, media }));
    return { g0: g0!, g1: g1!, alice, bob, bobs };
  }

  it("a ringing caller that drops off for good: every callee device stops ringing (DISCONNECTED) and a missed call is logged", async () => {
    const callId = "drop-ringing-caller";
    const { alice, bobs } = await aliceCallsBob(callId, CallMedia.AUDIO, { tablet: true });
    for (const b of bobs) await waitCall(b, callId, CallSignal.OFFER);

    await alice.drop();
    for (const b of bobs) {
      const [hangup] = await waitCall(b, callId, CallSignal.HANGUP);
      assert.equal(hangup!.endReason, CallEndReason.DISCONNECTED);
      assert.equal(hangup!.fromDeviceId, alice.deviceId);
      const { call: entry } = await callEntry(b, callId);
      assert.equal(entry.outcome, CallOutcome.MISSED);
      assert.equal(entry.callerUserId, alice.userId);
    }
  });

  it("an answered callee that drops off for good: the caller is told HANGUP (DISCONNECTED) and the answered call is logged", async () => {
    const callId = "drop-answered-callee";
    const { alice, bobs } = await aliceCallsBob(callId, CallMedia.VIDEO, { tablet: true });
    const [bob1, bob2] = bobs as [TestDevice, TestDevice];
    await waitCall(bob1, callId, CallSignal.OFFER);
    bob1.write(callFrame({ callId, peerUserId: alice.userId, signal: CallSignal.ACCEPT }));
    await waitCall(alice, callId, CallSignal.ACCEPT);
    await waitCall(bob2, callId, CallSignal.ANSWERED_ELSEWHERE);

    await bob1.drop();
    const [hangup] = await waitCall(alice, callId, CallSignal.HANGUP);
    assert.equal(hangup!.endReason, CallEndReason.DISCONNECTED);
    assert.equal(hangup!.fromDeviceId, bob1.deviceId);
    for (const d of [alice, bob2]) {
      const { call: entry } = await callEntry(d, callId);
      assert.equal(entry.outcome, CallOutcome.ANSWERED);
      assert.equal(entry.answeredDeviceId, bob1.deviceId);
      assert.equal(entry.media, CallMedia.VIDEO);
    }
  });

  it("a caller that comes back on the other gateway within the grace keeps its call: accepts are still arbitrated there and the entry written", async () => {
    const callId = "drop-caller-moves";
    const { g1, alice, bobs } = await aliceCallsBob(callId, CallMedia.AUDIO, { tablet: true });
    const [bob1, bob2] = bobs as [TestDevice, TestDevice];
    for (const b of bobs) await waitCall(b, callId, CallSignal.OFFER);

    await alice.drop();
    const [alice2] = track(await reconnect(alice, g1));
    await logged("took a call handed over by another gateway", callId);

    // Both accept: the gateway alice is on now lets one through and stops the other.
    bob1.write(callFrame({ callId, peerUserId: alice.userId, signal: CallSignal.ACCEPT }));
    bob2.write(callFrame({ callId, peerUserId: alice.userId, signal: CallSignal.ACCEPT }));
    const [accepted] = await waitCall(alice2!, callId, CallSignal.ACCEPT);
    const winner = accepted!.fromDeviceId;
    const loser = winner === bob1.deviceId ? bob2 : bob1;
    await waitCall(loser, callId, CallSignal.ANSWERED_ELSEWHERE);
    alice2!.write(callFrame({ callId, peerUserId: bob1.userId, signal: CallSignal.HANGUP }));
    const { call: entry } = await callEntry(alice2!, callId);
    assert.equal(entry.outcome, CallOutcome.ANSWERED);
    assert.equal(entry.answeredDeviceId, winner);
    assert.equal(callEvents(alice2!, callId, CallSignal.ACCEPT).length, 1, "one accept reached the caller");
    for (const b of [bob1, bob2])
      assert.ok(
        !callEvents(b, callId, CallSignal.HANGUP).some((h) => h.endReason === CallEndReason.DISCONNECTED),
        "the call was not ended for the caller",
      );
  });

  it("an answered callee that moves to the other gateway takes its call along: when it then drops off for good, the caller is still told", async () => {
    const callId = "drop-callee-moves";
    const { g0, alice, bob } = await aliceCallsBob(callId, CallMedia.AUDIO);
    await waitCall(bob, callId, CallSignal.OFFER);
    bob.write(callFrame({ callId, peerUserId: alice.userId, signal: CallSignal.ACCEPT }));
    await waitCall(alice, callId, CallSignal.ACCEPT);

    await bob.drop();
    const [bob2] = track(await reconnect(bob, g0));
    await logged("took a call handed over by another gateway", callId);
    assert.equal(callEvents(alice, callId, CallSignal.HANGUP).length, 0, "the call goes on");
    await bob2!.drop();
    const [hangup] = await waitCall(alice, callId, CallSignal.HANGUP);
    assert.equal(hangup!.endReason, CallEndReason.DISCONNECTED);
    assert.equal(hangup!.fromDeviceId, bob.deviceId);
    assert.equal((await callEntry(alice, callId)).call.outcome, CallOutcome.ANSWERED);
  });

  it("a caller that comes back on the same gateway within the grace keeps its call as it was", async () => {
    const callId = "drop-caller-returns";
    const { g0, alice, bob } = await aliceCallsBob(callId, CallMedia.AUDIO);
    await waitCall(bob, callId, CallSignal.OFFER);
    await alice.drop();
    const [alice2] = track(await reconnect(alice, g0));
    await logged(`"deviceId":"${alice.deviceId}"`, "came back within its grace");
    bob.write(callFrame({ callId, peerUserId: alice.userId, signal: CallSignal.ACCEPT }));
    await waitCall(alice2!, callId, CallSignal.ACCEPT);
    alice2!.write(callFrame({ callId, peerUserId: bob.userId, signal: CallSignal.HANGUP }));
    const { call: entry } = await callEntry(bob, callId);
    assert.equal(entry.outcome, CallOutcome.ANSWERED);
    assert.equal(callEvents(bob, callId, CallSignal.HANGUP).filter((h) => h.endReason !== 0).length, 0);
  });

  it("a group call whose host drops off for good is handed to a participant on the other gateway: HOST_CHANGED, joins and leaves there, the final entry", async () => {
    const [g0, g1] = calls.gateways;
    const host = await TestDevice.register(g0, uniqueName("gh"));
    const near = await TestDevice.register(g0, uniqueName("gn"));
    const far1 = await TestDevice.register(g1, uniqueName("gf"));
    const far2 = await far1.link("tablet");
    track(host, near, far1, far2);
    const { conversation } = await host.conversations.createGroup({
      title: "handoff",
      memberUserIds: [near.userId, far1.userId],
    });
    const conversationId = conversation!.conversationId;
    for (const d of [host, near, far1, far2]) await online(d);
    const callId = "drop-group-host";
    host.write(callFrame({ callId, conversationId, signal: CallSignal.OFFER, media: CallMedia.AUDIO }));
    for (const d of [near, far1, far2]) await waitCall(d, callId, CallSignal.OFFER);
    // far1 first, so it is the one the call is handed to (the first in, on the other gateway).
    toHost(far1, host, callId, conversationId, CallSignal.JOIN);
    await waitCall(far1, callId, CallSignal.JOINED);
    toHost(near, host, callId, conversationId, CallSignal.JOIN);
    await waitCall(near, callId, CallSignal.JOINED);

    await host.drop();
    for (const d of [near, far1]) {
      const [changed] = await waitCall(d, callId, CallSignal.HOST_CHANGED);
      assert.equal(changed!.hostDeviceId, far1.deviceId);
      assert.equal(changed!.fromUserId, far1.userId);
      const left = await waitCall(d, callId, CallSignal.LEAVE);
      assert.ok(
        left.some((l) => l.fromDeviceId === host.deviceId),
        "the host is let out",
      );
    }
    // Members who join from the log find the new host: the newest ONGOING entry is sent as it.
    const rehosted = await near.waitFor(
      () =>
        near
          .entries(conversationId)
          .find(
            (e) =>
              e.body.case === "call" &&
              e.body.value.callId === callId &&
              e.body.value.outcome === CallOutcome.ONGOING &&
              e.senderDeviceId === far1.deviceId,
          ),
      "the new host's ONGOING entry",
      30_000,
    );
    assert.ok(rehosted.body.case === "call");
    assert.equal(rehosted.body.value.callerUserId, far1.userId);
    assert.equal(rehosted.senderUserId, far1.userId);
    // Still ringing: far2 is told the new host too, and joins by it.
    const [ringChange] = await waitCall(far2, callId, CallSignal.HOST_CHANGED);
    assert.equal(ringChange!.hostDeviceId, far1.deviceId);
    toHost(far2, far1, callId, conversationId, CallSignal.JOIN);
    const [joined] = await waitCall(far2, callId, CallSignal.JOINED);
    assert.deepEqual(
      joined!.participants.map((p) => p.deviceId).sort(),
      [near.deviceId, far1.deviceId].sort(),
    );
    const [announced] = await waitCall(near, callId, CallSignal.JOIN);
    assert.equal(announced!.fromDeviceId, far2.deviceId, "the new host announces joins");

    for (const d of [far2, near, far1]) toHost(d, far1, callId, conversationId, CallSignal.LEAVE);
    for (const d of [near, far1, far2]) {
      const { call: entry } = await callEntry(d, callId);
      assert.equal(entry.group, true);
      assert.equal(entry.callerUserId, host.userId, "the entry is the starter's");
      assert.equal(entry.outcome, CallOutcome.ANSWERED);
      assert.equal(entry.peakParticipants, 3);
      const byDevice = new Map(entry.participants.map((p) => [p.deviceId, p]));
      assert.deepEqual(
        [...byDevice.keys()].sort(),
        [host.deviceId, near.deviceId, far1.deviceId, far2.deviceId].sort(),
      );
      assert.ok(byDevice.get(host.deviceId)!.leftAtMs > 0n, "the host's leaving is in the history");
    }
  });

  it("a group host that comes back on the other gateway keeps hosting: its own JOIN waits for the call, then joins and leaves go on", async () => {
    const [g0, g1] = calls.gateways;
    const host = await TestDevice.register(g0, uniqueName("gh"));
    const member = await TestDevice.register(g0, uniqueName("gm"));
    track(host, member);
    const { conversation } = await host.conversations.createGroup({
      title: "host moves",
      memberUserIds: [member.userId],
    });
    const conversationId = conversation!.conversationId;
    for (const d of [host, member]) await online(d);
    const callId = "drop-group-host-moves";
    host.write(callFrame({ callId, conversationId, signal: CallSignal.OFFER, media: CallMedia.AUDIO }));
    await waitCall(member, callId, CallSignal.OFFER);
    toHost(member, host, callId, conversationId, CallSignal.JOIN);
    await waitCall(member, callId, CallSignal.JOINED);

    await host.drop();
    const [host2] = track(await reconnect(host, g1));
    // As the SDK does after a reconnect: JOIN again. It is held until the call is handed over.
    toHost(host2!, host, callId, conversationId, CallSignal.JOIN);
    const [again] = await waitCall(host2!, callId, CallSignal.JOINED);
    assert.deepEqual(
      again!.participants.map((p) => p.deviceId),
      [member.deviceId],
    );
    assert.equal(callEvents(host2!, callId, CallSignal.HANGUP).length, 0, "the call went on");
    assert.equal(callEvents(member, callId, CallSignal.HOST_CHANGED).length, 0, "the same host");
    for (const d of [member, host2!]) toHost(d, host, callId, conversationId, CallSignal.LEAVE);
    const { call: entry } = await callEntry(member, callId);
    assert.equal(entry.outcome, CallOutcome.ANSWERED);
    assert.equal(entry.peakParticipants, 2);
  });
});
