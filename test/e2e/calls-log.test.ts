import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { CallMedia, CallOutcome, CallSignal } from "../../gen/switchboard/v1/calls_pb.js";
import { callEntry, callFrame, online, waitCall } from "../helpers/calls.js";
import { serverFixture } from "../helpers/fixture.js";

// A 1:1 call has one entry, written when it ends: the first entry of a call is the one to check
// (anyOutcome), so an early ONGOING entry would fail these tests rather than be waited past.

describe("call history as log entries", () => {
  const fx = serverFixture();

  it("an answered call becomes one entry that every device of both users receives", async () => {
    const alice = await fx.user("alice");
    const alice2 = fx.track(await alice.link("laptop"));
    const bob1 = await fx.user("bob");
    const bob2 = fx.track(await bob1.link("tablet"));
    const { conversation } = await alice.conversations.openDirect({ peerUserId: bob1.userId });
    for (const d of [alice, alice2, bob1, bob2]) await online(d);
    const callId = "answered-1";

    alice.write(
      callFrame({ callId, peerUserId: bob1.userId, signal: CallSignal.OFFER, media: CallMedia.AUDIO }),
    );
    await waitCall(bob2, callId, CallSignal.OFFER);
    bob2.write(callFrame({ callId, peerUserId: alice.userId, signal: CallSignal.ACCEPT }));
    await waitCall(alice, callId, CallSignal.ACCEPT);
    alice.write(callFrame({ callId, peerUserId: bob1.userId, signal: CallSignal.HANGUP }));

    const seen = await Promise.all(
      [alice, alice2, bob1, bob2].map((d) => callEntry(d, callId, { anyOutcome: true })),
    );
    const first = seen[0]!;
    for (const s of seen) assert.deepEqual(s, first, "the same entry on every device");
    assert.equal(first.sender, alice.deviceId, "written as the caller's device");
    const call = first.call;
    assert.equal(call.outcome, CallOutcome.ANSWERED);
    assert.equal(call.media, CallMedia.AUDIO);
    assert.deepEqual([call.callerUserId, call.calleeUserId], [alice.userId, bob1.userId]);
    assert.equal(call.answeredDeviceId, bob2.deviceId);
    assert.ok(
      call.startedAtMs > 0n && call.answeredAtMs >= call.startedAtMs && call.endedAtMs >= call.answeredAtMs,
    );
    assert.equal(call.durationMs, BigInt(call.endedAtMs - call.answeredAtMs));
    // It is in the log, for history and for devices that come later.
    const history = await bob1.conversations.getHistory({ conversationId: conversation!.conversationId });
    assert.equal(history.entries.filter((e) => e.body.case === "call").length, 1);
  });

  it("a declined call is logged as declined", async () => {
    const alice = await fx.user("alice");
    const bob = await fx.user("bob");
    await alice.conversations.openDirect({ peerUserId: bob.userId });
    for (const d of [alice, bob]) await online(d);
    const callId = "declined-1";
    alice.write(
      callFrame({ callId, peerUserId: bob.userId, signal: CallSignal.OFFER, media: CallMedia.VIDEO }),
    );
    await waitCall(bob, callId, CallSignal.OFFER);
    bob.write(callFrame({ callId, peerUserId: alice.userId, signal: CallSignal.DECLINE }));
    await waitCall(alice, callId, CallSignal.DECLINE);
    const { call } = await callEntry(bob, callId, { anyOutcome: true });
    assert.equal(call.outcome, CallOutcome.DECLINED);
    assert.equal(call.media, CallMedia.VIDEO);
    assert.equal(call.durationMs, 0n);
    assert.equal(call.answeredDeviceId, "");
  });

  it("a call to an offline callee is a missed call waiting in the log when the callee comes online", async () => {
    const alice = await fx.user("alice");
    const bob = await fx.user("bob");
    const { conversation } = await alice.conversations.openDirect({ peerUserId: bob.userId });
    await online(alice);
    const callId = "missed-1";
    alice.write(
      callFrame({ callId, peerUserId: bob.userId, signal: CallSignal.OFFER, media: CallMedia.AUDIO }),
    );
    alice.write(callFrame({ callId, peerUserId: bob.userId, signal: CallSignal.HANGUP }));
    const onCaller = await callEntry(alice, callId, { anyOutcome: true });
    assert.equal(onCaller.call.outcome, CallOutcome.MISSED);

    // bob was never online for the call; his first stream brings the entry from the log.
    await online(bob);
    const onCallee = await callEntry(bob, callId, { anyOutcome: true });
    assert.deepEqual(onCallee, onCaller);
    assert.equal(onCallee.call.answeredAtMs, 0n);
    assert.equal(bob.ofCase("call").length, 0, "the ringing itself was never stored");
    const history = await bob.conversations.getHistory({ conversationId: conversation!.conversationId });
    assert.equal(history.entries.filter((e) => e.body.case === "call").length, 1);
  });
});
