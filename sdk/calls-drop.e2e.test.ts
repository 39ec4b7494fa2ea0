import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { eventually } from "../test/helpers/inbox.js";
import { SdkServerSuite } from "../test/helpers/sdk-devices.js";
import type { SwitchboardClient } from "./client.js";
import type { CallEvent } from "./types.js";

const bytes = (text: string) => new TextEncoder().encode(text);

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

/**
 * The SDK when a device drops off mid-call (docs/calls.md, "Devices that drop off"), against a
 * server process: the peer's "ended" says "disconnected", and a group call's participants follow
 * the new host ("hostChanged") with their leave.
 */
describe("calls whose devices drop off, with the SDK", () => {
  const fx = new SdkServerSuite("sb-calls-drop-");

  it("a 1:1 callee whose client closes mid-call: the caller's call ends with reason disconnected", async () => {
    const alice = await fx.devices.register("alice");
    const bob = await fx.devices.register("bob");
    const [a, b] = [alice, bob].map(calls) as [CallEvent[], CallEvent[]];
    for (const c of [alice, bob]) await c.connect();
    await alice.openDirect(bob.userId);
    await eventually(
      () => alice.connected && bob.connected,
      () => "both connected",
    );
    const callId = await alice.calls.start(bob.userId, { video: false, offer: bytes("v=0 offer") });
    await event(b, (e) => e.kind === "incoming" && e.callId === callId, "the offer");
    await bob.calls.accept(callId, alice.userId, alice.deviceId, bytes("v=0 answer"));
    await event(a, (e) => e.kind === "connected", "connected");

    await bob.close();
    const ended = await event(a, (e) => e.kind === "ended" && e.callId === callId, "the end of the call");
    assert.equal(ended.reason, "disconnected");
    assert.equal(ended.peerDeviceId, bob.deviceId);
  });

  it("a group call's host whose client closes: the others hear hostChanged and leave through the new host", async () => {
    const alice = await fx.devices.register("alice");
    const bob = await fx.devices.register("bob");
    const carol = await fx.devices.register("carol");
    const all = [alice, bob, carol];
    const [, b, c] = all.map(calls) as [CallEvent[], CallEvent[], CallEvent[]];
    for (const d of all) await d.connect();
    const group = await alice.createGroup("handoff", [bob.userId, carol.userId]);
    await eventually(
      () => all.every((d) => d.connected),
      () => "every device connected",
    );
    const callId = alice.calls.startGroup(group.conversationId, { video: false });
    await event(b, (e) => e.kind === "groupIncoming" && e.callId === callId, "the ring on bob");
    await event(c, (e) => e.kind === "groupIncoming" && e.callId === callId, "the ring on carol");
    bob.calls.join(callId);
    await event(b, (e) => e.kind === "joined", "bob in");
    carol.calls.join(callId);
    await event(c, (e) => e.kind === "joined", "carol in");

    await alice.close();
    for (const seen of [b, c]) {
      const changed = await event(seen, (e) => e.kind === "hostChanged", "the new host");
      assert.equal(changed.peerDeviceId, bob.deviceId, "the first in after the host");
      await event(
        seen,
        (e) => e.kind === "participantLeft" && e.peerDeviceId === alice.deviceId,
        "the host let out",
      );
    }
    // carol's leave goes to bob's device now (it would reach no one at alice's).
    carol.calls.leave(callId);
    await event(b, (e) => e.kind === "participantLeft" && e.peerDeviceId === carol.deviceId, "carol left");
    bob.calls.leave(callId);
    await eventually(
      async () =>
        (await bob.getHistory(group.conversationId)).entries.some(
          (e) => e.call?.callId === callId && e.call.group && e.call.participants.length === 3,
        ),
      () => "the group call's final entry",
    );
  });
});
