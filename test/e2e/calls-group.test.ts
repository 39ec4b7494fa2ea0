import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import {
  type CallFrameSchema,
  CallMedia,
  CallOutcome,
  CallSignal,
} from "../../gen/switchboard/v1/calls_pb.js";
import {
  bytes,
  callEntry,
  callEvents,
  callFrame,
  online,
  text,
  toHost,
  waitCall,
  waitCallError,
} from "../helpers/calls.js";
import type { TestDevice } from "../helpers/device.js";
import { serverFixture } from "../helpers/fixture.js";

/**
 * Group calls against a server process (docs/calls.md, "Group calls"): the ring reaches every
 * member's devices, JOIN and LEAVE go through the host's gateway and are announced to the
 * devices in the call, pairwise signalling reaches one device, the 33rd device is turned away,
 * and the call's entry reaches every member's devices.
 */

describe("group calls", () => {
  // Thirty-four users register from one address for the cap test.
  const fx = serverFixture({
    SWITCHBOARD_REGISTRATIONS_PER_ADDRESS_PER_HOUR: "1000",
    SWITCHBOARD_REGISTRATIONS_PER_HOUR: "1000",
  });

  it("rings every member's devices, announces joins and leaves to the participants, relays pairwise signalling, and logs the call on every member's devices", async () => {
    const alice = await fx.user("alice");
    const bob1 = await fx.user("bob");
    const bob2 = fx.track(await bob1.link("tablet"));
    const carol = await fx.user("carol");
    const dave = await fx.user("dave");
    const eve = await fx.user("eve");
    const { conversation } = await alice.conversations.createGroup({
      title: "call",
      memberUserIds: [bob1.userId, carol.userId, dave.userId],
    });
    const conversationId = conversation!.conversationId;
    for (const d of [alice, bob1, bob2, carol, eve]) await online(d);
    const callId = "group-1";

    alice.write(callFrame({ callId, conversationId, signal: CallSignal.OFFER, media: CallMedia.VIDEO }));
    const rings = await Promise.all([bob1, bob2, carol].map((d) => waitCall(d, callId, CallSignal.OFFER)));
    for (const [ring] of rings) {
      assert.equal(ring.conversationId, conversationId);
      assert.equal(ring.hostDeviceId, alice.deviceId);
      assert.equal(ring.fromUserId, alice.userId);
      assert.equal(ring.media, CallMedia.VIDEO);
      assert.deepEqual(
        ring.participants.map((p) => p.deviceId),
        [alice.deviceId],
      );
      assert.equal(ring.sfuUrl, "", "no SFU configured: a mesh");
    }
    assert.equal(callEvents(eve, callId, CallSignal.OFFER).length, 0, "not a member: not rung");
    assert.equal(callEvents(alice, callId, CallSignal.OFFER).length, 0, "the host is not rung");

    // bob joins from his phone: he is told who is there, alice is told he joined, his tablet stops ringing.
    toHost(bob1, alice, callId, conversationId, CallSignal.JOIN);
    const [bobIn] = await waitCall(bob1, callId, CallSignal.JOINED);
    assert.deepEqual(
      bobIn.participants.map((p) => p.deviceId),
      [alice.deviceId],
    );
    const [bobJoin] = await waitCall(alice, callId, CallSignal.JOIN, { from: bob1 });
    assert.equal(bobJoin.fromUserId, bob1.userId);
    assert.equal(bobJoin.hostDeviceId, "", "an announcement, not a request to the host");
    await waitCall(bob2, callId, CallSignal.ANSWERED_ELSEWHERE);

    // The mesh: bob's offer reaches alice's device alone, her answer reaches his.
    bob1.write(
      callFrame({
        callId,
        conversationId,
        peerUserId: alice.userId,
        signal: CallSignal.OFFER,
        payloads: [{ deviceId: alice.deviceId, ciphertext: bytes("bob's offer to alice") }],
      }),
    );
    const [offer] = await waitCall(alice, callId, CallSignal.OFFER, { from: bob1 });
    assert.equal(text(offer.ciphertext), "bob's offer to alice");
    alice.write(
      callFrame({
        callId,
        conversationId,
        peerUserId: bob1.userId,
        signal: CallSignal.ANSWER,
        payloads: [{ deviceId: bob1.deviceId, ciphertext: bytes("alice's answer") }],
      }),
    );
    assert.equal(
      text((await waitCall(bob1, callId, CallSignal.ANSWER, { from: alice }))[0].ciphertext),
      "alice's answer",
    );
    assert.equal(callEvents(bob2, callId, CallSignal.ANSWER).length, 0);

    // carol joins: she is told of alice and bob; they are told of her.
    toHost(carol, alice, callId, conversationId, CallSignal.JOIN);
    const [carolIn] = await waitCall(carol, callId, CallSignal.JOINED);
    assert.deepEqual(
      carolIn.participants.map((p) => p.deviceId).sort(),
      [alice.deviceId, bob1.deviceId].sort(),
    );
    await waitCall(alice, callId, CallSignal.JOIN, { from: carol });
    await waitCall(bob1, callId, CallSignal.JOIN, { from: carol });

    // Not a member: refused, for joining and for signalling a participant.
    toHost(eve, alice, callId, conversationId, CallSignal.JOIN);
    const refused = await waitCallError(eve);
    assert.equal(refused.code, Code.PermissionDenied);

    // bob leaves, then the host; the call goes on with carol until she leaves too.
    toHost(bob1, alice, callId, conversationId, CallSignal.LEAVE);
    await waitCall(alice, callId, CallSignal.LEAVE, { from: bob1 });
    await waitCall(carol, callId, CallSignal.LEAVE, { from: bob1 });
    toHost(alice, alice, callId, conversationId, CallSignal.LEAVE);
    await waitCall(carol, callId, CallSignal.LEAVE, { from: alice });
    assert.equal(callEvents(carol, callId, CallSignal.HANGUP).length, 0, "the call goes on without its host");
    toHost(carol, alice, callId, conversationId, CallSignal.LEAVE);

    const seen = await Promise.all(
      [alice, bob1, bob2, carol].map(async (d) => (await callEntry(d, callId)).call),
    );
    for (const s of seen) assert.deepEqual(s, seen[0], "the same entry on every member's device");
    const call = seen[0]!;
    assert.equal(call.group, true);
    assert.equal(call.callerUserId, alice.userId);
    assert.equal(call.calleeUserId, "");
    assert.equal(call.media, CallMedia.VIDEO);
    assert.equal(call.outcome, CallOutcome.ANSWERED);
    assert.equal(call.answeredDeviceId, bob1.deviceId);
    assert.equal(call.peakParticipants, 3);
    assert.deepEqual(
      call.participants.map((p) => [p.userId, p.deviceId]),
      [
        [alice.userId, alice.deviceId],
        [bob1.userId, bob1.deviceId],
        [carol.userId, carol.deviceId],
      ],
    );
    for (const p of call.participants) assert.ok(p.leftAtMs >= p.joinedAtMs && p.joinedAtMs > 0n);
    assert.ok(call.endedAtMs >= call.answeredAtMs && call.answeredAtMs >= call.startedAtMs);
    assert.equal(call.durationMs, BigInt(call.endedAtMs - call.answeredAtMs));
    // Ringing ended with the call: the tablet that never joined was told.
    await waitCall(bob2, callId, CallSignal.HANGUP);

    // dave was offline throughout: the entry waits in the group's log.
    const { entries } = await dave.conversations.getHistory({ conversationId });
    const logged = entries.filter((e) => e.body.case === "call");
    assert.equal(logged.length, 2, "two entries per call (started, ended), and no signalling stored");
    assert.ok(logged[0]!.body.case === "call");
    assert.equal(logged[0]!.body.value.outcome, CallOutcome.ONGOING, "the call started");
    assert.equal(logged[0]!.senderDeviceId, alice.deviceId, "sent as the host device");
    assert.deepEqual(logged[1]!.body.value, call);

    // The call is over: a late join is told so by the host's gateway.
    await online(dave);
    toHost(dave, alice, callId, conversationId, CallSignal.JOIN);
    await waitCall(dave, callId, CallSignal.HANGUP, { from: alice });
  });

  it("lets 32 devices in, turns the 33rd away with FULL, and lets it in once one leaves", async () => {
    const host = await fx.user("host");
    const others: TestDevice[] = [];
    for (let i = 0; i < 32; i++) others.push(await fx.user(`member${i}`));
    const { conversation } = await host.conversations.createGroup({
      title: "big call",
      memberUserIds: others.map((d) => d.userId),
    });
    const conversationId = conversation!.conversationId;
    for (const d of [host, ...others]) await online(d);
    const callId = "group-full";
    host.write(callFrame({ callId, conversationId, signal: CallSignal.OFFER, media: CallMedia.AUDIO }));
    await Promise.all(others.map((d) => waitCall(d, callId, CallSignal.OFFER)));

    // One at a time, so who is the 33rd is not up to the race.
    for (const d of others.slice(0, 31)) {
      toHost(d, host, callId, conversationId, CallSignal.JOIN);
      await waitCall(d, callId, CallSignal.JOINED);
    }
    const last = others[31]!;
    toHost(last, host, callId, conversationId, CallSignal.JOIN);
    const [full] = await waitCall(last, callId, CallSignal.FULL);
    assert.equal(full.fromUserId, "", "from the server");
    assert.equal(callEvents(last, callId, CallSignal.JOINED).length, 0);
    const joinedAtHost = callEvents(host, callId, CallSignal.JOIN).map((e) => e.fromDeviceId);
    assert.equal(joinedAtHost.length, 31);
    assert.ok(!joinedAtHost.includes(last.deviceId), "nobody was told of the refused device");

    // A participant leaves: the 33rd gets in and sees the 31 others.
    toHost(others[0]!, host, callId, conversationId, CallSignal.LEAVE);
    await waitCall(host, callId, CallSignal.LEAVE, { from: others[0]! });
    toHost(last, host, callId, conversationId, CallSignal.JOIN);
    const [admitted] = await waitCall(last, callId, CallSignal.JOINED);
    assert.equal(admitted.participants.length, 31);

    for (const d of [host, ...others.slice(1)]) toHost(d, host, callId, conversationId, CallSignal.LEAVE);
    const { call } = await callEntry(others[0]!, callId);
    assert.equal(call.peakParticipants, 32);
    assert.equal(call.participants.length, 33, "every device that joined");
  });

  it("refuses malformed group frames with precise codes", async () => {
    const alice = await fx.user("malformed");
    const bob = await fx.user("peer");
    const { conversation } = await alice.conversations.createGroup({
      title: "g",
      memberUserIds: [bob.userId],
    });
    const conversationId = conversation!.conversationId;
    await online(alice);
    const bad: MessageInitShape<typeof CallFrameSchema>[] = [
      // A start with payloads.
      {
        callId: "m1",
        conversationId,
        signal: CallSignal.OFFER,
        media: CallMedia.AUDIO,
        payloads: [{ deviceId: bob.deviceId, ciphertext: bytes("x") }],
      },
      // A start without media.
      { callId: "m2", conversationId, signal: CallSignal.OFFER },
      // JOIN without the host device.
      { callId: "m3", conversationId, peerUserId: bob.userId, signal: CallSignal.JOIN },
      // Pairwise signalling for two devices at once.
      {
        callId: "m4",
        conversationId,
        peerUserId: bob.userId,
        signal: CallSignal.ANSWER,
        payloads: [
          { deviceId: bob.deviceId, ciphertext: bytes("x") },
          { deviceId: alice.deviceId, ciphertext: bytes("y") },
        ],
      },
      // A signal groups do not have.
      { callId: "m5", conversationId, peerUserId: bob.userId, signal: CallSignal.ACCEPT },
      // Not a group.
      { callId: "m6", conversationId: "d_notagroup", signal: CallSignal.OFFER, media: CallMedia.AUDIO },
      // A host in a 1:1 call.
      { callId: "m6b", peerUserId: bob.userId, hostDeviceId: bob.deviceId, signal: CallSignal.HANGUP },
    ];
    for (const [i, f] of bad.entries()) {
      alice.write(callFrame(f));
      const err = await waitCallError(alice, i);
      assert.equal(err.code, Code.InvalidArgument, `frame ${i}: ${err.message}`);
    }
    // A group the device is not in.
    const { conversation: other } = await bob.conversations.createGroup({ title: "h", memberUserIds: [] });
    alice.write(
      callFrame({
        callId: "m7",
        conversationId: other!.conversationId,
        signal: CallSignal.OFFER,
        media: CallMedia.AUDIO,
      }),
    );
    assert.equal((await waitCallError(alice, bad.length)).code, Code.PermissionDenied);
    // A join for a call whose host device holds no stream.
    toHost(alice, bob, "m8", conversationId, CallSignal.JOIN);
    assert.equal((await waitCallError(alice, bad.length + 1)).code, Code.NotFound);
  });

  it("lets out a participant whose stream is gone, announcing it, and ends and logs a call everyone dropped off", async () => {
    const host = await fx.user("drophost");
    const bob = await fx.user("dropbob");
    const carol = await fx.user("dropcarol");
    const { conversation } = await host.conversations.createGroup({
      title: "g",
      memberUserIds: [bob.userId, carol.userId],
    });
    const conversationId = conversation!.conversationId;
    for (const d of [host, bob, carol]) await online(d);
    const callId = "dropped";
    host.write(callFrame({ callId, conversationId, signal: CallSignal.OFFER, media: CallMedia.AUDIO }));
    for (const d of [bob, carol]) {
      await waitCall(d, callId, CallSignal.OFFER);
      toHost(d, host, callId, conversationId, CallSignal.JOIN);
      await waitCall(d, callId, CallSignal.JOINED);
    }
    // carol's phone loses signal: no LEAVE. The host's gateway notices her route is gone.
    await carol.drop();
    const [left] = await waitCall(host, callId, CallSignal.LEAVE, { from: carol, timeoutMs: 40_000 });
    assert.equal(left.fromUserId, carol.userId);
    await waitCall(bob, callId, CallSignal.LEAVE, { from: carol });
    // The host leaves and bob drops too: nobody is left, so the call ends and is logged.
    toHost(host, host, callId, conversationId, CallSignal.LEAVE);
    await bob.drop();
    const { call } = await callEntry(host, callId, { timeoutMs: 40_000 });
    assert.equal(call.peakParticipants, 3);
    assert.ok(call.participants.every((p) => p.leftAtMs > 0n));
  });

  it("a member offline when the call started finds it going in the log, with its host, and joins", async () => {
    const host = await fx.user("onghost");
    const bob = await fx.user("ongbob");
    const dave = await fx.user("ongdave");
    const { conversation } = await host.conversations.createGroup({
      title: "g",
      memberUserIds: [bob.userId, dave.userId],
    });
    const conversationId = conversation!.conversationId;
    for (const d of [host, bob]) await online(d);
    const callId = "ongoing";
    host.write(callFrame({ callId, conversationId, signal: CallSignal.OFFER, media: CallMedia.VIDEO }));
    await waitCall(bob, callId, CallSignal.OFFER);
    toHost(bob, host, callId, conversationId, CallSignal.JOIN);
    await waitCall(bob, callId, CallSignal.JOINED);

    // dave comes online (woken by the call push, or just later): the log says the call is going.
    await online(dave);
    const started = await dave.waitFor(
      () =>
        dave
          .entries(conversationId)
          .find((e) => e.body.case === "call" && e.body.value.outcome === CallOutcome.ONGOING),
      "the entry of the call going",
    );
    assert.ok(started.body.case === "call");
    assert.equal(started.body.value.callId, callId);
    assert.equal(started.body.value.group, true);
    assert.equal(started.body.value.media, CallMedia.VIDEO);
    assert.equal(started.body.value.endedAtMs, 0n);
    assert.equal(started.senderDeviceId, host.deviceId, "the host, to join by");
    dave.write(
      callFrame({
        callId,
        conversationId,
        peerUserId: started.senderUserId,
        hostDeviceId: started.senderDeviceId,
        signal: CallSignal.JOIN,
      }),
    );
    const [joined] = await waitCall(dave, callId, CallSignal.JOINED);
    assert.deepEqual(joined.participants.map((p) => p.deviceId).sort(), [host.deviceId, bob.deviceId].sort());
    await waitCall(bob, callId, CallSignal.JOIN, { from: dave });
    for (const d of [dave, bob, host]) toHost(d, host, callId, conversationId, CallSignal.LEAVE);
    const { call: ended } = await callEntry(dave, callId);
    assert.equal(ended.peakParticipants, 3);
  });

  it("counts joins as offers, so a device cannot make the host's gateway announce joins without end", async () => {
    const host = await fx.user("joinhost");
    const member = await fx.user("joiner");
    const { conversation } = await host.conversations.createGroup({
      title: "g",
      memberUserIds: [member.userId],
    });
    const conversationId = conversation!.conversationId;
    for (const d of [host, member]) await online(d);
    const callId = "toggle";
    host.write(callFrame({ callId, conversationId, signal: CallSignal.OFFER, media: CallMedia.AUDIO }));
    await waitCall(member, callId, CallSignal.OFFER);
    // Join and leave over and over: the burst of five joins goes through, the sixth is refused.
    for (let i = 0; i < 6; i++) {
      toHost(member, host, callId, conversationId, CallSignal.JOIN);
      toHost(member, host, callId, conversationId, CallSignal.LEAVE);
    }
    const refused = await waitCallError(member);
    assert.equal(refused.code, Code.ResourceExhausted);
    assert.match(refused.message, /group call joins count as offers/);
  });
});
