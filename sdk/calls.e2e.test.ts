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
    () => `no ${what}; got ${seen.map((e) => e.kind).join(", ")}`,
  );
  return seen.find(match)!;
}

describe("call signalling with the SDK (end-to-end encrypted, against a server process)", () => {
  const fx = new SdkServerSuite("sb-calls-");

  it("rings both callee devices with the decrypted offer; one takes it; answer and candidates arrive decrypted; the other stops ringing; hang-up ends it", async () => {
    const alice = await fx.devices.register("alice");
    const bob1 = await fx.devices.register("bob");
    const bob2 = await fx.devices.link(bob1, "bob2");
    const [a, b1, b2] = [alice, bob1, bob2].map(calls) as [CallEvent[], CallEvent[], CallEvent[]];
    for (const c of [alice, bob1, bob2]) await c.connect();
    await alice.openDirect(bob1.userId);
    await eventually(
      () => [alice, bob1, bob2].every((c) => c.connected),
      () => "every device connected",
    );

    const callId = await alice.calls.start(bob1.userId, { video: true, offer: bytes("v=0 the offer") });
    const incoming1 = await event(b1, (e) => e.kind === "incoming" && e.callId === callId, "offer on bob1");
    const incoming2 = await event(b2, (e) => e.kind === "incoming" && e.callId === callId, "offer on bob2");
    for (const e of [incoming1, incoming2]) {
      assert.equal(text(e.payload), "v=0 the offer", "decrypted for each device");
      assert.equal(e.video, true);
      assert.deepEqual([e.peerUserId, e.peerDeviceId], [alice.userId, alice.deviceId]);
    }

    bob1.calls.ringing(callId, alice.userId);
    bob2.calls.ringing(callId, alice.userId);
    await eventually(
      () => a.filter((e) => e.kind === "ringing" && e.callId === callId).length === 2,
      () => "both ringing",
    );

    await bob2.calls.accept(callId, alice.userId, alice.deviceId, bytes("v=0 the answer"));
    const connected = await event(a, (e) => e.kind === "connected", "connected on alice");
    assert.equal(connected.peerDeviceId, bob2.deviceId);
    assert.equal(text(connected.payload), "v=0 the answer");
    const stop = await event(b1, (e) => e.kind === "ended", "bob1 told to stop ringing");
    assert.equal(stop.reason, "answeredElsewhere");
    assert.equal(stop.peerDeviceId, bob2.deviceId);

    await alice.calls.sendCandidates(callId, bob1.userId, bob2.deviceId, bytes("candidate:1 udp"));
    await bob2.calls.sendCandidates(callId, alice.userId, alice.deviceId, bytes("candidate:2 relay"));
    assert.equal(
      text((await event(b2, (e) => e.kind === "candidates", "candidates on bob2")).payload),
      "candidate:1 udp",
    );
    assert.equal(
      text((await event(a, (e) => e.kind === "candidates", "candidates on alice")).payload),
      "candidate:2 relay",
    );

    alice.calls.hangUp(callId, bob1.userId);
    const ended = await event(b2, (e) => e.kind === "ended", "ended on bob2");
    assert.equal(ended.reason, "hangup");
    // And the call is in every device's history.
    await eventually(
      async () => {
        const history = await bob1.getHistory((await bob1.openDirect(alice.userId)).conversationId);
        return history.entries.some((e) => e.kind === "call" && e.call?.callId === callId);
      },
      () => "the call entry in bob's history",
    );
  });

  it("a callee device that comes online while the call rings says it rings, and the caller offers it the call", async () => {
    const alice = await fx.devices.register("alice");
    const bob1 = await fx.devices.register("bob");
    const bob2 = await fx.devices.link(bob1, "bob2");
    const [a, b2] = [alice, bob2].map(calls) as [CallEvent[], CallEvent[]];
    for (const c of [alice, bob1]) await c.connect();
    await alice.openDirect(bob1.userId);
    await eventually(
      () => alice.connected && bob1.connected,
      () => "connected",
    );
    const callId = await alice.calls.start(bob1.userId, { video: false, offer: bytes("v=0 offer") });
    // bob2 was offline (a call push would wake it); it connects and says it rings, without an offer.
    await bob2.connect();
    await eventually(
      () => bob2.connected,
      () => "bob2 connected",
    );
    bob2.calls.ringing(callId, alice.userId);
    const ringing = await event(
      a,
      (e) => e.kind === "ringing" && e.peerDeviceId === bob2.deviceId,
      "bob2 ringing",
    );
    await alice.calls.offerTo(callId, bob1.userId, ringing.peerDeviceId, {
      video: false,
      offer: bytes("v=0 offer again"),
    });
    const incoming = await event(
      b2,
      (e) => e.kind === "incoming" && e.callId === callId,
      "the offer on bob2",
    );
    assert.equal(text(incoming.payload), "v=0 offer again");
    assert.equal(incoming.video, false);
    alice.calls.hangUp(callId, bob1.userId);
    await event(b2, (e) => e.kind === "ended", "ended on bob2");
  });
});
