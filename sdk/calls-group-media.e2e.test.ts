import assert from "node:assert/strict";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { RTCPeerConnection, type RTCRtpTransceiver, RtpHeader, RtpPacket } from "werift";
import { type Coturn, coturnMissing, startCoturn } from "../services/mesh/coturn.js";
import { eventually } from "../test/helpers/inbox.js";
import { TestDevices } from "../test/helpers/sdk-devices.js";
import { removeDir, type ServerProcess, startServerProcess } from "../test/helpers/server.js";
import type { SwitchboardClient } from "./client.js";

const SECRET = "group-media-secret-shared-with-coturn";
const text = (b: Uint8Array | undefined) => new TextDecoder().decode(b);
const bytes = (s: string) => new TextEncoder().encode(s);

/** Sets a description and waits for every candidate to be in the local SDP (no trickling here). */
async function gathered(pc: RTCPeerConnection): Promise<string> {
  if (pc.iceGatheringState !== "complete")
    await pc.iceGatheringStateChange.watch((state) => state === "complete", 20_000);
  return pc.localDescription!.sdp;
}

/**
 * One device of a mesh group call: on JOINED it offers a relay-only peer connection to every
 * device already in (and sends audio on it); an offer from a later joiner it answers. It keeps
 * what it heard, by the device that sent it.
 */
class MeshDevice {
  readonly heard = new Map<string, number>();
  readonly peers = new Map<string, RTCPeerConnection>();
  readonly senders = new Map<string, RTCRtpTransceiver>();

  constructor(readonly client: SwitchboardClient) {
    client.on("call", async (e) => {
      if (e.kind === "joined") {
        for (const p of e.participants ?? []) {
          const pc = await this.peer(p.deviceId);
          this.senders.set(p.deviceId, pc.addTransceiver("audio", { direction: "sendrecv" }));
          await pc.setLocalDescription(await pc.createOffer());
          await client.calls.offerPeer(e.callId, p.userId, p.deviceId, bytes(await gathered(pc)));
        }
      } else if (e.kind === "offer") {
        const pc = await this.peer(e.peerDeviceId);
        await pc.setRemoteDescription({ type: "offer", sdp: text(e.payload) });
        await pc.setLocalDescription(await pc.createAnswer());
        await client.calls.answerPeer(e.callId, e.peerUserId, e.peerDeviceId, bytes(await gathered(pc)));
      } else if (e.kind === "answer") {
        await this.peers.get(e.peerDeviceId)?.setRemoteDescription({ type: "answer", sdp: text(e.payload) });
      }
    });
  }

  private async peer(deviceId: string): Promise<RTCPeerConnection> {
    const pc = new RTCPeerConnection({
      iceServers: await this.client.calls.iceServers(),
      iceTransportPolicy: "relay",
    });
    pc.onTrack.subscribe((track) =>
      track.onReceiveRtp.subscribe((rtp) => {
        const from = rtp.payload.toString().split(" ")[1]!;
        this.heard.set(from, (this.heard.get(from) ?? 0) + 1);
      }),
    );
    this.peers.set(deviceId, pc);
    return pc;
  }

  /** One audio packet to every device it offered a connection to. */
  async speak(seq: number): Promise<void> {
    for (const t of this.senders.values()) {
      const header = new RtpHeader({
        payloadType: 111,
        sequenceNumber: seq,
        timestamp: seq * 960,
        ssrc: 4242,
      });
      await t.sender.sendRtp(new RtpPacket(header, Buffer.from(`from ${this.client.deviceId} ${seq}`)));
    }
  }

  async close(): Promise<void> {
    await Promise.all([...this.peers.values()].map((p) => p.close().catch(() => {})));
  }
}

describe("a group call's audio in a mesh of three through a TURN relay (werift, the SDK's signalling, a real coturn)", {
  skip: coturnMissing(),
}, () => {
  let relay: Coturn;
  let server: ServerProcess;
  let devices: TestDevices;
  let base: string;
  const mesh: MeshDevice[] = [];

  before(async () => {
    relay = await startCoturn(SECRET);
    server = await startServerProcess({
      env: { SWITCHBOARD_TURN_URLS: relay.url, SWITCHBOARD_TURN_SECRET: SECRET },
    });
    base = await mkdtemp(join(tmpdir(), "sb-calls-group-media-"));
    devices = new TestDevices(base, () => server.url);
  });
  after(async () => {
    await Promise.all(mesh.map((m) => m.close()));
    await devices?.close();
    await server?.stop();
    if (server) await removeDir(server.dataDir);
    await relay?.stop();
    if (base) await removeDir(base);
  });

  it("three SDK devices join, connect pairwise over relayed candidates only, and each hears the devices that joined after it", async () => {
    const [alice, bob, carol] = [
      await devices.register("alice"),
      await devices.register("bob"),
      await devices.register("carol"),
    ];
    for (const c of [alice, bob, carol]) await c.connect();
    const group = await alice.createGroup("media", [bob.userId, carol.userId]);
    await eventually(
      () => [alice, bob, carol].every((c) => c.connected),
      () => "connected",
    );
    const [a, b, c] = [alice, bob, carol].map((d) => new MeshDevice(d)) as [
      MeshDevice,
      MeshDevice,
      MeshDevice,
    ];
    mesh.push(a, b, c);

    const rung = Promise.all([bob, carol].map((d) => d.waitFor("call", (e) => e.kind === "groupIncoming")));
    const callId = alice.calls.startGroup(group.conversationId, { video: false });
    await rung;
    bob.calls.join(callId);
    await eventually(
      () => a.peers.get(bob.deviceId)?.connectionState === "connected",
      () => `alice and bob not connected (${a.peers.get(bob.deviceId)?.connectionState})`,
      30_000,
    );
    carol.calls.join(callId);
    await eventually(
      () => [a, b].every((m) => m.peers.get(carol.deviceId)?.connectionState === "connected"),
      () => "carol not connected to both",
      30_000,
    );

    // Every connection is relayed: the answers' candidates are all "relay".
    for (const m of [b, c])
      for (const pc of m.peers.values())
        for (const line of pc
          .remoteDescription!.sdp.split("\r\n")
          .filter((l) => l.startsWith("a=candidate:")))
          assert.ok(line.includes(" typ relay"), line);

    let seq = 1;
    await eventually(
      async () => {
        for (const m of [b, c]) await m.speak(seq);
        seq++;
        return (
          (a.heard.get(bob.deviceId) ?? 0) > 0 &&
          (a.heard.get(carol.deviceId) ?? 0) > 0 &&
          (b.heard.get(carol.deviceId) ?? 0) > 0
        );
      },
      () => `heard: alice ${[...a.heard.keys()]}, bob ${[...b.heard.keys()]}`,
      30_000,
      () => new Promise((r) => setTimeout(r, 20)),
    );

    for (const d of [carol, bob, alice]) d.calls.leave(callId);
    await eventually(
      async () =>
        (await carol.getHistory(group.conversationId)).entries.some(
          (e) => e.kind === "call" && e.call?.callId === callId && e.call.peakParticipants === 3,
        ),
      () => "the call's entry",
    );
  });
});
