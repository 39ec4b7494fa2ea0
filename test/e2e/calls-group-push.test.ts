import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { CallMedia, CallOutcome, CallSignal } from "../../gen/switchboard/v1/calls_pb.js";
import { verifySfuToken } from "../../services/gateway/calls/sfu.js";
import { callCollapseKey } from "../../services/notification/notifier.js";
import { callEntry, callFrame, online, toHost, waitCall } from "../helpers/calls.js";
import { TestDevice, uniqueName } from "../helpers/device.js";
import { WebPushFixture } from "../helpers/webpush.js";

/**
 * A group call against a server process configured with an SFU and a Web Push service: the SFU's
 * address rides on the ring and on JOINED, an offline member is rung by a call push that is
 * superseded when the call ends, and finds the call's entry when it comes online.
 */

const SFU = "wss://sfu.switchboard.example/rooms";
const SFU_SECRET = "the-secret-shared-with-the-sfu";

describe("group calls: the SFU from configuration, and call pushes to offline members", () => {
  const fx = new WebPushFixture();
  before(() => fx.start({ SWITCHBOARD_CALL_SFU_URL: SFU, SWITCHBOARD_CALL_SFU_SECRET: SFU_SECRET }));
  after(() => fx.stop());

  it("hands devices the SFU, rings an offline member by push, supersedes it when the call ends, and logs the call for it", async () => {
    const { alice, bob, sub } = await fx.pair("gpa", "gpb");
    const carol = await TestDevice.register(fx.server.url, uniqueName("gpc"));
    fx.devices.push(carol);
    const { conversation } = await alice.conversations.createGroup({
      title: "sfu call",
      memberUserIds: [bob.userId, carol.userId],
    });
    const conversationId = conversation!.conversationId;
    for (const d of [alice, carol]) await online(d);
    const callId = "group-push-1";

    alice.write(callFrame({ callId, conversationId, signal: CallSignal.OFFER, media: CallMedia.AUDIO }));
    const [ring] = await waitCall(carol, callId, CallSignal.OFFER);
    assert.equal(ring.sfuUrl, SFU, "the ring names the SFU");

    const pushed = await fx.push.waitForPush(
      (p) => p.id === sub.id && (p.payload as { k?: string }).k === "call",
      10_000,
    );
    assert.deepEqual(pushed.payload, { k: "call", i: callId, c: conversationId }, "content-free");
    assert.equal(pushed.urgency, "high");
    assert.equal(pushed.topic, callCollapseKey(callId));

    toHost(carol, alice, callId, conversationId, CallSignal.JOIN);
    const [joined] = await waitCall(carol, callId, CallSignal.JOINED);
    assert.equal(joined.sfuUrl, SFU, "JOINED names the SFU too");
    // With it, an admission the SFU can check with the shared secret alone.
    const admission = verifySfuToken(SFU_SECRET, joined.sfuToken, Date.now());
    assert.deepEqual(admission && { c: admission.c, g: admission.g, u: admission.u, d: admission.d }, {
      c: callId,
      g: conversationId,
      u: carol.userId,
      d: carol.deviceId,
    });
    assert.equal(verifySfuToken("not-the-secret-shared-with-it", joined.sfuToken, Date.now()), undefined);
    assert.equal(ring.sfuToken, "", "the ring admits nobody");
    toHost(carol, alice, callId, conversationId, CallSignal.LEAVE);
    toHost(alice, alice, callId, conversationId, CallSignal.LEAVE);

    // The call is over: bob's push is superseded under the same topic, so his device stops ringing.
    const ended = await fx.push.waitForPush(
      (p) => p.id === sub.id && (p.payload as { k?: string }).k === "call_ended",
      10_000,
    );
    assert.deepEqual(ended.payload, { k: "call_ended", i: callId, c: conversationId });
    assert.equal(ended.topic, pushed.topic);

    await online(bob);
    const { call } = await callEntry(bob, callId, { conversationId });
    assert.equal(call.group, true);
    assert.equal(call.outcome, CallOutcome.ANSWERED);
    assert.deepEqual(
      call.participants.map((p) => p.userId),
      [alice.userId, carol.userId],
    );
  });
});
