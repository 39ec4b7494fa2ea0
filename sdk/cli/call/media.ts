import {
  type RTCIceServer,
  RTCPeerConnection,
  type RTCRtpTransceiver,
  RtpHeader,
  RtpPacket,
  usePCMU,
} from "werift";
import { type AudioSource, FRAME_SAMPLES, Heard, PCMU_PAYLOAD_TYPE } from "./audio.js";

/** How long ICE gathering (the relay allocations) may take. */
const GATHER_TIMEOUT_MS = 20_000;
const FRAME_MS = 20;

/** The path media took: the local candidate of the nominated pair. */
export interface MediaPath {
  /** "relay" (through TURN), "srflx", "host" or "prflx". */
  type: string;
  /** Its transport ("udp", "tcp"). */
  protocol?: string;
}

/**
 * One side of a CLI call's media (werift, pure TypeScript WebRTC): one audio transceiver
 * sending PCMU from an AudioSource every 20 ms and counting what comes back. ICE candidates are
 * gathered completely into the SDP (no trickling), so one offer and one answer set it up.
 */
export class CallMedia {
  readonly heard = new Heard();
  /**
   * Resolves when the connection fails or closes: the peer went away without a hang-up (werift
   * declares ICE failed after 30 s without consent, RFC 7675), or close() was called.
   */
  readonly lost: Promise<void>;
  private readonly pc: RTCPeerConnection;
  private readonly transceiver: RTCRtpTransceiver;
  private pump: NodeJS.Timeout | undefined;
  private sent = 0;

  constructor(
    iceServers: RTCIceServer[],
    relayOnly: boolean,
    private readonly source: AudioSource,
  ) {
    this.pc = new RTCPeerConnection({
      iceServers,
      iceTransportPolicy: relayOnly ? "relay" : "all",
      // The only codec the CLI can encode; offered alone so both sides pick it.
      codecs: { audio: [usePCMU()], video: [] },
    });
    // Added before any remote offer, so an answerer's offer m-line takes it and it can send too.
    this.transceiver = this.pc.addTransceiver("audio", { direction: "sendrecv" });
    this.lost = new Promise((resolve) => {
      this.pc.connectionStateChange.subscribe((state) => {
        if (state === "failed" || state === "closed") resolve();
      });
    });
    this.pc.onTrack.subscribe((track) => {
      track.onReceiveRtp.subscribe((rtp) => {
        if (rtp.header.payloadType === PCMU_PAYLOAD_TYPE)
          this.heard.add(rtp.payload, rtp.header.sequenceNumber);
      });
    });
  }

  /** The SDP offer, with every candidate in it. */
  async offer(): Promise<string> {
    await this.pc.setLocalDescription(await this.pc.createOffer());
    return this.gathered();
  }

  /** The SDP answer to the peer's offer, with every candidate in it. */
  async answer(offer: string): Promise<string> {
    await this.pc.setRemoteDescription({ type: "offer", sdp: offer });
    await this.pc.setLocalDescription(await this.pc.createAnswer());
    return this.gathered();
  }

  /** The peer's SDP answer to our offer. */
  async accepted(answer: string): Promise<void> {
    await this.pc.setRemoteDescription({ type: "answer", sdp: answer });
  }

  /** Resolves when ICE and DTLS are up; rejects when they fail or after timeoutMs. */
  async connected(timeoutMs: number): Promise<void> {
    if (this.pc.connectionState === "connected") return;
    const [state] = await this.pc.connectionStateChange
      .watch((s) => s === "connected" || s === "failed" || s === "closed", timeoutMs)
      .catch(() => [this.pc.connectionState] as const);
    if (state !== "connected") {
      throw new Error(
        `the media connection did not come up (${state}, ICE ${this.pc.iceConnectionState}); are the relays reachable?`,
      );
    }
  }

  /** Starts sending the source, one frame per 20 ms of wall-clock time. */
  startSending(): void {
    if (this.pump !== undefined) return;
    const start = Date.now();
    const send = () => {
      // Catch up by the clock, not by timer ticks, which drift under load.
      const due = Math.floor((Date.now() - start) / FRAME_MS) + 1;
      for (; this.sent < due; this.sent++) {
        const header = new RtpHeader({
          payloadType: PCMU_PAYLOAD_TYPE,
          sequenceNumber: this.sent % 0x10000,
          timestamp: (this.sent * FRAME_SAMPLES) % 0x1_0000_0000,
          marker: this.sent === 0,
        });
        this.transceiver.sender
          .sendRtp(new RtpPacket(header, Buffer.from(this.source.next())))
          .catch(() => {});
      }
    };
    send();
    this.pump = setInterval(send, FRAME_MS);
  }

  /** Packets sent so far. */
  get packetsSent(): number {
    return this.sent;
  }

  /**
   * The round-trip time to the peer in milliseconds, from RTCP: our sender reports, the peer's
   * receiver reports back with the delay since our last report (RFC 3550 6.4.1). Undefined until
   * the first such exchange (RTCP goes every 0.5 to 1.5 s).
   */
  async roundTripMs(): Promise<number | undefined> {
    const stats = await this.transceiver.sender.getStats();
    for (const s of stats.values()) {
      const rtt = (s as { type: string; roundTripTime?: number }).roundTripTime;
      if (s.type === "remote-inbound-rtp" && rtt !== undefined) return rtt * 1000;
    }
    return undefined;
  }

  /** The local candidate of the nominated pair: whether the media goes through a relay. */
  async path(): Promise<MediaPath | undefined> {
    const stats = [...(await this.pc.getStats()).values()] as unknown as Array<Record<string, unknown>>;
    const pair = stats.find((s) => s.type === "candidate-pair" && s.nominated === true);
    const local = stats.find((s) => s.type === "local-candidate" && s.id === pair?.localCandidateId);
    if (local === undefined) return undefined;
    return {
      type: String(local.candidateType),
      ...(typeof local.protocol === "string" && { protocol: local.protocol }),
    };
  }

  async close(): Promise<void> {
    if (this.pump !== undefined) clearInterval(this.pump);
    this.pump = undefined;
    await this.pc.close().catch(() => {});
  }

  private async gathered(): Promise<string> {
    if (this.pc.iceGatheringState !== "complete") {
      await this.pc.iceGatheringStateChange
        .watch((state) => state === "complete", GATHER_TIMEOUT_MS)
        .catch(() => {
          throw new Error(`gathering ICE candidates took over ${GATHER_TIMEOUT_MS / 1000} s`);
        });
    }
    const sdp = this.pc.localDescription?.sdp;
    if (sdp === undefined) throw new Error("no local description");
    return sdp;
  }
}
