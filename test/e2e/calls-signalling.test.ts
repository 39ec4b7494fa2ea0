import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { type CallFrameSchema, CallMedia, CallSignal } from "../../gen/switchboard/v1/calls_pb.js";
import { bytes, callEvents, callFrame, online, text, waitCall, waitCallError } from "../helpers/calls.js";
import { serverFixture } from "../helpers/fixture.js";

describe("call signalling over the device stream", () => {
  const fx = serverFixture();

  it("rings every callee device with its own ciphertext; the first accept wins and the other device stops ringing; nothing is stored", async () => {
    const alice = await fx.user("alice");
    const bob1 = await fx.user("bob");
    const bob2 = fx.track(await bob1.link("tablet"));
    const { conversation } = await alice.conversations.openDirect({ peerUserId: bob1.userId });
    const logBefore = (await alice.conversations.getHistory({ conversationId: conversation!.conversationId }))
      .entries;
    for (const d of [alice, bob1, bob2]) await online(d);
    const callId = "call-1";

    alice.write(
      callFrame({
        callId,
        peerUserId: bob1.userId,
        signal: CallSignal.OFFER,
        media: CallMedia.VIDEO,
        payloads: [
          { deviceId: bob1.deviceId, ciphertext: bytes("offer for bob1") },
          { deviceId: bob2.deviceId, ciphertext: bytes("offer for bob2") },
        ],
      }),
    );
    const [offer1] = await waitCall(bob1, callId, CallSignal.OFFER);
    const [offer2] = await waitCall(bob2, callId, CallSignal.OFFER);
    assert.equal(text(offer1!.ciphertext), "offer for bob1");
    assert.equal(text(offer2!.ciphertext), "offer for bob2");
    assert.equal(offer1!.media, CallMedia.VIDEO);
    assert.deepEqual([offer1!.fromUserId, offer1!.fromDeviceId], [alice.userId, alice.deviceId]);

    // Both ring; the caller hears it from each.
    for (const b of [bob1, bob2])
      b.write(callFrame({ callId, peerUserId: alice.userId, signal: CallSignal.RINGING }));
    const ringing = await waitCall(alice, callId, CallSignal.RINGING, { count: 2 });
    assert.deepEqual(new Set(ringing.map((e) => e.fromDeviceId)), new Set([bob1.deviceId, bob2.deviceId]));

    // bob2 takes it, with its answer for alice's device.
    bob2.write(
      callFrame({
        callId,
        peerUserId: alice.userId,
        signal: CallSignal.ACCEPT,
        payloads: [{ deviceId: alice.deviceId, ciphertext: bytes("answer from bob2") }],
      }),
    );
    const [accepted] = await waitCall(alice, callId, CallSignal.ACCEPT);
    assert.equal(accepted!.fromDeviceId, bob2.deviceId);
    assert.equal(text(accepted!.ciphertext), "answer from bob2");
    const [elsewhere] = await waitCall(bob1, callId, CallSignal.ANSWERED_ELSEWHERE);
    assert.equal(elsewhere!.fromDeviceId, bob2.deviceId, "names the device that took the call");

    // bob1 accepts too late: it is told again, and the caller never sees that accept.
    bob1.write(callFrame({ callId, peerUserId: alice.userId, signal: CallSignal.ACCEPT }));
    await waitCall(bob1, callId, CallSignal.ANSWERED_ELSEWHERE, { count: 2 });
    assert.deepEqual(
      callEvents(alice, callId, CallSignal.ACCEPT).map((e) => e.fromDeviceId),
      [bob2.deviceId],
    );
    assert.equal(
      callEvents(bob2, callId, CallSignal.ANSWERED_ELSEWHERE).length,
      0,
      "the winner is not told to stop",
    );

    // Candidates both ways, then the caller hangs up: every callee device hears it.
    bob2.write(
      callFrame({
        callId,
        peerUserId: alice.userId,
        signal: CallSignal.ICE_CANDIDATES,
        payloads: [{ deviceId: alice.deviceId, ciphertext: bytes("bob2 candidates") }],
      }),
    );
    const [candidates] = await waitCall(alice, callId, CallSignal.ICE_CANDIDATES);
    assert.equal(text(candidates!.ciphertext), "bob2 candidates");
    alice.write(callFrame({ callId, peerUserId: bob1.userId, signal: CallSignal.HANGUP }));
    await waitCall(bob1, callId, CallSignal.HANGUP);
    await waitCall(bob2, callId, CallSignal.HANGUP);

    // Never stored: the conversation's log is as it was before the call but for the call's own
    // history entry (metadata, appended by the caller's gateway once the call ended, perhaps
    // already), and carries no signalling bytes.
    const history = await alice.conversations.getHistory({ conversationId: conversation!.conversationId });
    assert.deepEqual(
      history.entries.filter((e) => e.body.case !== "call").map((e) => e.seq),
      logBefore.map((e) => e.seq),
    );
    const stored = Buffer.from(
      JSON.stringify(history.entries, (_k, v) => (typeof v === "bigint" ? String(v) : v)),
    );
    assert.equal(stored.includes("offer for bob"), false);
  });

  it("refuses, with precise codes, malformed frames, callers without a direct conversation, oversized ciphertexts and floods", async () => {
    const alice = await fx.user("alice");
    const bob = await fx.user("bob");
    const carol = await fx.user("carol");
    await alice.conversations.openDirect({ peerUserId: bob.userId });
    for (const d of [alice, bob]) await online(d);
    let seen = 0;
    const refused = async (frame: ReturnType<typeof callFrame>, code: Code, message: RegExp) => {
      alice.write(frame);
      const err = await waitCallError(alice, seen++);
      assert.equal(err.code, code, err.message);
      assert.match(err.message, message);
    };
    const call = (value: MessageInitShape<typeof CallFrameSchema>) =>
      callFrame({
        callId: "c",
        peerUserId: bob.userId,
        signal: CallSignal.OFFER,
        media: CallMedia.AUDIO,
        ...value,
      });

    await refused(call({ callId: "" }), Code.InvalidArgument, /call_id: 1 to 64 characters/);
    await refused(call({ peerUserId: "bob" }), Code.InvalidArgument, /peer_user_id: not a valid id/);
    await refused(call({ signal: CallSignal.ANSWERED_ELSEWHERE }), Code.InvalidArgument, /signal: one of/);
    await refused(
      call({ media: CallMedia.UNSPECIFIED }),
      Code.InvalidArgument,
      /media: an offer is AUDIO or VIDEO/,
    );
    await refused(call({ peerUserId: carol.userId }), Code.PermissionDenied, /direct conversation/);
    // An SDP past the limit for one device.
    await refused(
      call({ payloads: [{ deviceId: bob.deviceId, ciphertext: new Uint8Array(16_385) }] }),
      Code.InvalidArgument,
      /is 16385 bytes; at most 16384/,
    );
    // A flood of offers (each hung up, so only the offer budget is in the way).
    let offers = 0;
    for (let i = 0; i < 20; i++) {
      alice.write(call({ callId: `flood-${i}` }));
      alice.write(call({ callId: `flood-${i}`, signal: CallSignal.HANGUP, media: CallMedia.UNSPECIFIED }));
      offers++;
    }
    const flood = await waitCallError(alice, seen++);
    assert.equal(flood.code, Code.ResourceExhausted);
    assert.match(
      flood.message,
      /call offers: at most 10 per minute per device \(burst 5; group call joins count as offers\); retry in \d+ ms/,
    );
    assert.ok(offers > 5);
    // bob got no more than the burst (and what refilled meanwhile), never all twenty.
    await waitCall(bob, "flood-0", CallSignal.OFFER);
    assert.ok(bob.ofCase("call").filter((e) => e.signal === CallSignal.OFFER).length < 20);

    // Bytes: frames of sixteen largest ciphertexts until the byte budget refuses one.
    const big = Array.from({ length: 16 }, (_, i) => ({
      deviceId: `dv_${String(i).padStart(26, "0")}`,
      ciphertext: new Uint8Array(16_384),
    }));
    const before = alice.ofCase("error").length;
    for (let i = 0; i < 6; i++)
      alice.write(
        call({ callId: "c", signal: CallSignal.ICE_CANDIDATES, media: CallMedia.UNSPECIFIED, payloads: big }),
      );
    const bytesRefused = await alice.waitFor(
      () =>
        alice
          .ofCase("error")
          .slice(before)
          .find((e) => /call signalling/.test(e.message)),
      "the byte budget's refusal",
    );
    assert.equal(bytesRefused.code, Code.ResourceExhausted);
    assert.match(
      bytesRefused.message,
      /at most 65536 bytes per second per device \(burst 524416\); retry in \d+ ms/,
    );
    // The stream stays open through all of it.
    assert.equal(alice.streamEnded, false);
  });
});
