import assert from "node:assert/strict";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { RTCPeerConnection, RtpHeader, RtpPacket } from "werift";
import { type Coturn, coturnMissing, startCoturn } from "../services/mesh/coturn.js";
import { eventually } from "../test/helpers/inbox.js";
import { TestDevices } from "../test/helpers/sdk-devices.js";
import { removeDir, type ServerProcess, startServerProcess } from "../test/helpers/server.js";
import type { SwitchboardClient } from "./client.js";
import type { CallEvent } from "./types.js";

const SECRET = "media-test-secret-shared-with-coturn";
const text = (b: Uint8Array | undefined) => new TextDecoder().decode(b);
const bytes = (s: string) => new TextEncoder().encode(s);

/** A WebRTC peer (werift) that may only use TURN relays: its ICE candidates are all "relay". */
async function relayOnlyPeer(client: SwitchboardClient): Promise<RTCPeerConnection> {
  return new RTCPeerConnection({ iceServers: await client.calls.iceServers(), iceTransportPolicy: "relay" });
}

/** Sets a description and waits for every candidate to be in the local SDP (no trickling here). */
async function gathered(pc: RTCPeerConnection): Promise<string> {
  if (pc.iceGatheringState !== "complete")
    await pc.iceGatheringStateChange.watch((state) => state === "complete", 20_000);
  return pc.localDescription!.sdp;
}

describe("a call's audio through a TURN relay (werift, the SDK's signalling, a real coturn)", {
  skip: coturnMissing(),
}, () => {
  let relay: Coturn;
  let server: ServerProcess;
  let devices: TestDevices;
  let base: string;
  const peers: RTCPeerConnection[] = [];

  before(async () => {
    relay = await startCoturn(SECRET);
    server = await startServerProcess({
      env: { SWITCHBOARD_TURN_URLS: relay.url, SWITCHBOARD_TURN_SECRET: SECRET },
    });
    base = await mkdtemp(join(tmpdir(), "sb-calls-media-"));
    devices = new TestDevices(base, () => server.url);
  });
  after(async () => {
    await Promise.all(peers.map((p) => p.close().catch(() => {})));
    await devices?.close();
    await server?.stop();
    if (server) await removeDir(server.dataDir);
    await relay?.stop();
    if (base) await removeDir(base);
  });

  it("two SDK devices set up a call, exchange audio packets over relayed candidates only, and hang up", async () => {
    const alice = await devices.register("alice");
    const bob = await devices.register("bob");
    for (const c of [alice, bob]) await c.connect();
    await alice.openDirect(bob.userId);
    await eventually(
      () => alice.connected && bob.connected,
      () => "both connected",
    );

    // bob answers whatever rings, with his own relay-only peer.
    const bobPeer = await relayOnlyPeer(bob);
    peers.push(bobPeer);
    const heard: string[] = [];
    bobPeer.onTrack.subscribe((track) => {
      track.onReceiveRtp.subscribe((rtp) => heard.push(rtp.payload.toString()));
    });
    const bobEvents: CallEvent[] = [];
    bob.on("call", async (e) => {
      bobEvents.push(e);
      if (e.kind !== "incoming") return;
      bob.calls.ringing(e.callId, e.peerUserId);
      await bobPeer.setRemoteDescription({ type: "offer", sdp: text(e.payload) });
      await bobPeer.setLocalDescription(await bobPeer.createAnswer());
      await bob.calls.accept(e.callId, e.peerUserId, e.peerDeviceId, bytes(await gathered(bobPeer)));
    });

    const alicePeer = await relayOnlyPeer(alice);
    peers.push(alicePeer);
    const transceiver = alicePeer.addTransceiver("audio", { direction: "sendrecv" });
    await alicePeer.setLocalDescription(await alicePeer.createOffer());
    const offer = await gathered(alicePeer);
    const candidates = offer.split("\r\n").filter((l) => l.startsWith("a=candidate:"));
    assert.ok(candidates.length > 0, "the relay gave candidates");
    assert.ok(
      candidates.every((l) => l.includes(" typ relay")),
      `only relayed candidates: ${candidates.join(" | ")}`,
    );
    const connected = alice.waitFor("call", (e) => e.kind === "connected");
    const callId = await alice.calls.start(bob.userId, { video: false, offer: bytes(offer) });
    const answer = await connected;
    assert.equal(answer.callId, callId);
    assert.ok(text(answer.payload).includes(" typ relay"), "bob's answer has relayed candidates");
    await alicePeer.setRemoteDescription({ type: "answer", sdp: text(answer.payload) });

    // Audio packets (a tone's frames, as far as the test cares) until bob has heard some.
    let seq = 1;
    await eventually(
      async () => {
        const header = new RtpHeader({
          payloadType: 111,
          sequenceNumber: seq,
          timestamp: seq * 960,
          ssrc: 1234,
        });
        seq++;
        await transceiver.sender.sendRtp(new RtpPacket(header, Buffer.from(`tone frame ${seq}`)));
        return heard.some((h) => h.startsWith("tone frame "));
      },
      () => `bob heard nothing (alice ${alicePeer.connectionState}, bob ${bobPeer.connectionState})`,
      30_000,
      () => new Promise((r) => setTimeout(r, 20)),
    );
    assert.equal(alicePeer.connectionState, "connected");

    alice.calls.hangUp(callId, bob.userId);
    await eventually(
      () => bobEvents.some((e) => e.kind === "ended" && e.reason === "hangup"),
      () => "bob heard the hang-up",
    );
  });
});
