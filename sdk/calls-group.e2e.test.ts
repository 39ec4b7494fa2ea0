import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { eventually } from "../test/helpers/inbox.js";
import { SdkServerSuite } from "../test/helpers/sdk-devices.js";
import type { SwitchboardClient } from "./client.js";
import type { CallEvent } from "./types.js";

const bytes = (text: string) => new TextEncoder().encode(text);
const text = (b: Uint8Array | undefined) => new TextDecoder().decode(b);

/** Every "call" event of a client, in order. */
function calls(client: SwitchboardClient): CallEvent[] {
  const seen: CallEvent[] = [];
  client.on("call", (e) => {
    seen.push(e);
  });
  return seen;
}

async function event(seen: CallEvent[], match: (e: CallEvent) => boolean, what: string): Promise<CallEvent> {
  await eventually(
    () => seen.some(match),
    () => `no ${what}; got ${seen.map((e) => `${e.kind}:${e.peerDeviceId}`).join(", ")}`,
  );
  return seen.find(match)!;
}

describe("group calls with the SDK (end-to-end encrypted signalling, against a server process)", () => {
  const fx = new SdkServerSuite("sb-calls-group-");

  it("three devices ring, join, set up a mesh with decrypted offers, answers and candidates, leave, and every member's device has the call's entry", async () => {
    const alice = await fx.devices.register("alice");
    const bob = await fx.devices.register("bob");
    const carol = await fx.devices.register("carol");
    const all = [alice, bob, carol];
    const [a, b, c] = all.map(calls) as [CallEvent[], CallEvent[], CallEvent[]];
    for (const d of all) await d.connect();
    const group = await alice.createGroup("call", [bob.userId, carol.userId]);
    await eventually(
      () => all.every((d) => d.connected),
      () => "every device connected",
    );

    const callId = alice.calls.startGroup(group.conversationId, { video: false });
    for (const seen of [b, c]) {
      const ring = await event(seen, (e) => e.kind === "groupIncoming" && e.callId === callId, "the ring");
      assert.equal(ring.conversationId, group.conversationId);
      assert.deepEqual([ring.peerUserId, ring.peerDeviceId], [alice.userId, alice.deviceId]);
      assert.deepEqual(
        ring.participants?.map((p) => p.deviceId),
        [alice.deviceId],
      );
      assert.equal(ring.video, false);
      assert.equal(ring.sfuUrl, undefined, "a mesh");
    }

    // bob joins and connects to alice: his offer, her answer, candidates both ways, decrypted.
    bob.calls.join(callId);
    const bobIn = await event(b, (e) => e.kind === "joined", "bob in");
    assert.deepEqual(
      bobIn.participants?.map((p) => p.deviceId),
      [alice.deviceId],
    );
    await event(a, (e) => e.kind === "participantJoined" && e.peerDeviceId === bob.deviceId, "bob joined");
    await bob.calls.offerPeer(callId, alice.userId, alice.deviceId, bytes("v=0 bob to alice"));
    const offer = await event(a, (e) => e.kind === "offer" && e.peerDeviceId === bob.deviceId, "bob's offer");
    assert.equal(text(offer.payload), "v=0 bob to alice");
    await alice.calls.answerPeer(callId, bob.userId, bob.deviceId, bytes("v=0 alice answers bob"));
    assert.equal(
      text((await event(b, (e) => e.kind === "answer", "alice's answer")).payload),
      "v=0 alice answers bob",
    );
    await alice.calls.sendCandidates(callId, bob.userId, bob.deviceId, bytes("candidate:a"));
    assert.equal(text((await event(b, (e) => e.kind === "candidates", "candidates")).payload), "candidate:a");

    // carol joins: she meets both, and offers each.
    carol.calls.join(callId);
    const carolIn = await event(c, (e) => e.kind === "joined", "carol in");
    const there = carolIn.participants ?? [];
    assert.deepEqual(there.map((p) => p.deviceId).sort(), [alice.deviceId, bob.deviceId].sort());
    for (const p of there)
      await carol.calls.offerPeer(callId, p.userId, p.deviceId, bytes(`v=0 carol to ${p.deviceId}`));
    for (const [seen, d] of [
      [a, alice],
      [b, bob],
    ] as const) {
      await event(
        seen,
        (e) => e.kind === "participantJoined" && e.peerDeviceId === carol.deviceId,
        "carol joined",
      );
      const o = await event(
        seen,
        (e) => e.kind === "offer" && e.peerDeviceId === carol.deviceId,
        "carol's offer",
      );
      assert.equal(text(o.payload), `v=0 carol to ${d.deviceId}`, "each device decrypts its own");
      await d.calls.answerPeer(
        callId,
        carol.userId,
        carol.deviceId,
        bytes(`v=0 ${d.deviceId} answers carol`),
      );
    }
    await eventually(
      () => c.filter((e) => e.kind === "answer").length === 2,
      () => "carol has both answers",
    );
    assert.deepEqual(
      c
        .filter((e) => e.kind === "answer")
        .map((e) => text(e.payload))
        .sort(),
      [`v=0 ${alice.deviceId} answers carol`, `v=0 ${bob.deviceId} answers carol`].sort(),
    );

    // bob's stream drops and comes back: the SDK asks to join again, and is told it is in (the
    // host's gateway had not let him out, so nobody hears of a new join).
    const joinedBefore = b.filter((e) => e.kind === "joined").length;
    bob.reconnect();
    await eventually(
      () => b.filter((e) => e.kind === "joined").length === joinedBefore + 1,
      () => "bob joined again after reconnecting",
    );
    assert.equal(
      a.filter((e) => e.kind === "participantJoined" && e.peerDeviceId === bob.deviceId).length,
      1,
      "still one join of bob's for alice",
    );

    // Leaving: the others hear of it; the last one out ends the call, logged in the group.
    alice.calls.leave(callId);
    await event(b, (e) => e.kind === "participantLeft" && e.peerDeviceId === alice.deviceId, "alice left");
    await event(c, (e) => e.kind === "participantLeft" && e.peerDeviceId === alice.deviceId, "alice left");
    bob.calls.leave(callId);
    carol.calls.leave(callId);
    for (const d of all)
      await eventually(
        async () => {
          const history = await d.getHistory(group.conversationId);
          return history.entries.some(
            (e) => e.call?.callId === callId && e.call.group && e.call.participants.length === 3,
          );
        },
        () => `the group call's entry on ${d.deviceId}`,
      );
  });
});
