import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { CallMedia, CallOutcome, CallSignal } from "../../gen/switchboard/v1/calls_pb.js";
import { callCollapseKey } from "../../services/notification/notifier.js";
import { callEntry, callFrame, online } from "../helpers/calls.js";
import { WebPushFixture } from "../helpers/webpush.js";

describe("calls to offline callees: a call push through a Web Push service, and a missed-call entry", () => {
  const fx = new WebPushFixture();
  before(() => fx.start());
  after(() => fx.stop());

  async function setup() {
    const pair = await fx.pair("ca", "cb");
    await online(pair.alice);
    return pair;
  }

  it("rings an offline callee with a high-urgency push collapsed per call, supersedes it when the call ends, and leaves a missed call in the log", async () => {
    const { alice, bob, sub, id } = await setup();
    const callId = "offline-ring-1";
    alice.write(
      callFrame({ callId, peerUserId: bob.userId, signal: CallSignal.OFFER, media: CallMedia.VIDEO }),
    );
    const ring = await fx.push.waitForPush(
      (p) => p.id === sub.id && (p.payload as { k?: string }).k === "call",
      10_000,
    );
    assert.deepEqual(
      ring.payload,
      { k: "call", i: callId, c: id },
      "content-free: the call and the conversation",
    );
    assert.equal(ring.urgency, "high");
    assert.equal(ring.topic, callCollapseKey(callId), "collapsed per call");
    assert.ok(ring.ttl > 0 && ring.ttl <= 120, "kept only about as long as a call rings");

    // The caller gives up: the push is superseded under the same topic, so a ringing device stops.
    alice.write(callFrame({ callId, peerUserId: bob.userId, signal: CallSignal.HANGUP }));
    const ended = await fx.push.waitForPush(
      (p) => p.id === sub.id && (p.payload as { k?: string }).k === "call_ended",
      10_000,
    );
    assert.deepEqual(ended.payload, { k: "call_ended", i: callId, c: id });
    assert.equal(ended.topic, ring.topic);

    // bob connects later: the missed call is waiting in the log; the ringing was never stored.
    await online(bob);
    const { call: missed } = await callEntry(bob, callId, { conversationId: id, anyOutcome: true });
    assert.equal(missed.outcome, CallOutcome.MISSED);
    assert.equal(missed.media, CallMedia.VIDEO);
    assert.equal(bob.ofCase("call").length, 0);
  });

  it("does not push to a callee device that holds a stream", async () => {
    const { alice, bob, sub } = await setup();
    await online(bob);
    const callId = "online-ring-1";
    alice.write(
      callFrame({ callId, peerUserId: bob.userId, signal: CallSignal.OFFER, media: CallMedia.AUDIO }),
    );
    await bob.waitFor(() => bob.ofCase("call").find((e) => e.callId === callId), "the live offer");
    alice.write(callFrame({ callId, peerUserId: bob.userId, signal: CallSignal.HANGUP }));
    // The call's log entry is written after the hangup; the push would have left before it.
    await callEntry(alice, callId, { anyOutcome: true });
    assert.equal(
      fx.push.pushes.filter((p) => p.id === sub.id && (p.payload as { i?: string }).i === callId).length,
      0,
    );
  });
});
