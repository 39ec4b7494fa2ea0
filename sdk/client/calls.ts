import { randomBytes } from "node:crypto";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  type CallEventFrame,
  CallFrameSchema,
  CallMedia,
  type CallParticipant,
  CallPayloadSchema,
  CallSignal,
  CallEndReason as EndReason,
} from "../../gen/switchboard/v1/calls_pb.js";
import type { CallEndReason, CallEvent, CallParticipantRef } from "../types.js";
import type { ClientContext } from "./context.js";
import type { StreamLoop } from "./stream.js";

/** Binds a call payload to its call, so no ciphertext of a message or another call passes for it. */
const DOMAIN = "switchboard-call-v1";

/** Group calls this device knows (rung, started, joined), remembered at most; the oldest go first. */
const KNOWN_GROUP_CALLS = 64;

/** What a device needs to take part in a group call: the group, and the host to join and leave by. */
export interface GroupCallRef {
  conversationId: string;
  hostUserId: string;
  hostDeviceId: string;
}

/**
 * Call signalling (docs/calls.md): frames on the stream, with the SDP and candidates end-to-end
 * encrypted for each device of the peer with the pairwise sessions messages use. The media
 * itself is the app's WebRTC stack's; this part carries what it needs to set it up.
 */
export class Calls {
  private readonly groups = new Map<string, GroupCallRef>();
  /** The group calls this device is in (a subset of groups). */
  private readonly joined = new Set<string>();

  constructor(
    private readonly ctx: ClientContext,
    private readonly stream: StreamLoop,
  ) {
    // After a reconnect the host's gateway may have let this device out (its stream was gone
    // when it looked): asking again is answered with joined, or with ended if the call is over.
    ctx.events.on("connected", () => {
      for (const callId of this.joined) {
        try {
          this.join(callId);
        } catch (err) {
          ctx.events.reportError(err, Code.Unavailable);
        }
      }
    });
  }

  /**
   * Starts a group call in a group conversation: every other member's devices ring
   * ("groupIncoming", with conversationId). This device is its host and its first participant. Returns the call id.
   */
  startGroup(conversationId: string, options: { video: boolean }): string {
    const callId = `c${randomBytes(16).toString("base64url")}`;
    this.write({
      callId,
      conversationId,
      signal: CallSignal.OFFER,
      media: options.video ? CallMedia.VIDEO : CallMedia.AUDIO,
    });
    this.remember(callId, {
      conversationId,
      hostUserId: this.ctx.profile.credentials.userId,
      hostDeviceId: this.ctx.deviceId,
    });
    return callId;
  }

  /**
   * Joins a group call this device was rung for (or started), or one described by `ref` (learned
   * from a call push and the app's own state). A "joined" event lists the devices already there
   * (the app sends each an offer: offerPeer), or a "full" event says the call has 32.
   */
  join(callId: string, ref?: GroupCallRef): void {
    const group = ref ?? this.group(callId);
    if (ref !== undefined) this.remember(callId, ref);
    this.write({
      callId,
      conversationId: group.conversationId,
      peerUserId: group.hostUserId,
      hostDeviceId: group.hostDeviceId,
      signal: CallSignal.JOIN,
    });
  }

  /** Leaves a group call; the call goes on for the others until the last one leaves. */
  leave(callId: string): void {
    const group = this.group(callId);
    this.joined.delete(callId);
    this.write({
      callId,
      conversationId: group.conversationId,
      peerUserId: group.hostUserId,
      hostDeviceId: group.hostDeviceId,
      signal: CallSignal.LEAVE,
    });
  }

  /** A group call's SDP offer for one participant's device (a mesh connection to it). */
  offerPeer(callId: string, userId: string, deviceId: string, offer: Uint8Array): Promise<void> {
    this.group(callId);
    return this.toDevice(callId, userId, deviceId, CallSignal.OFFER, offer);
  }

  /** A group call's SDP answer to one participant's offer. */
  answerPeer(callId: string, userId: string, deviceId: string, answer: Uint8Array): Promise<void> {
    this.group(callId);
    return this.toDevice(callId, userId, deviceId, CallSignal.ANSWER, answer);
  }

  private group(callId: string): GroupCallRef {
    const group = this.groups.get(callId);
    if (group === undefined)
      throw new ConnectError(`call ${callId}: not a group call this device knows`, Code.FailedPrecondition);
    return group;
  }

  private remember(callId: string, ref: GroupCallRef): void {
    this.groups.delete(callId);
    this.groups.set(callId, ref);
    for (const k of this.groups.keys()) {
      if (this.groups.size <= KNOWN_GROUP_CALLS) break;
      this.groups.delete(k);
      this.joined.delete(k);
    }
  }

  /**
   * Starts a call: the SDP offer goes to every device of peerUserId, each with its own
   * ciphertext, and they all ring. Returns the call id; "call" events follow.
   */
  async start(peerUserId: string, options: { video: boolean; offer: Uint8Array }): Promise<string> {
    const callId = `c${randomBytes(16).toString("base64url")}`;
    await this.offer(peerUserId, options.video, options.offer, callId);
    return callId;
  }

  /** TURN relays and short-lived credentials for them, as RTCPeerConnection's iceServers take them. */
  async iceServers(): Promise<{ urls: string[]; username: string; credential: string }[]> {
    const { iceServers } = await this.ctx.conn.calls.getTurnCredentials({});
    return iceServers.map((s) => ({ urls: [...s.urls], username: s.username, credential: s.credential }));
  }

  /**
   * Offers a ringing call again to one device of the callee: one that says it rings without
   * having had the offer (woken by a call push while offline; docs/calls.md).
   */
  offerTo(
    callId: string,
    calleeUserId: string,
    deviceId: string,
    options: { video: boolean; offer: Uint8Array },
  ): Promise<void> {
    return this.toDevice(callId, calleeUserId, deviceId, CallSignal.OFFER, options.offer, options.video);
  }

  /** This device rings (tell the caller). */
  ringing(callId: string, callerUserId: string): void {
    this.signal(callId, callerUserId, CallSignal.RINGING);
  }

  /** Takes the call, with the SDP answer for the caller's device. */
  accept(callId: string, callerUserId: string, callerDeviceId: string, answer: Uint8Array): Promise<void> {
    return this.toDevice(callId, callerUserId, callerDeviceId, CallSignal.ACCEPT, answer);
  }

  /** Refuses the call. */
  decline(callId: string, callerUserId: string): void {
    this.signal(callId, callerUserId, CallSignal.DECLINE);
  }

  /** Ends the call (or stops ringing it, for the caller). */
  hangUp(callId: string, peerUserId: string): void {
    this.signal(callId, peerUserId, CallSignal.HANGUP);
  }

  /** ICE candidates for the peer's device in the call. */
  sendCandidates(
    callId: string,
    peerUserId: string,
    peerDeviceId: string,
    candidates: Uint8Array,
  ): Promise<void> {
    return this.toDevice(callId, peerUserId, peerDeviceId, CallSignal.ICE_CANDIDATES, candidates);
  }

  /** Offers a call to every device of peerUserId, each with its own copy of the SDP offer. */
  async offer(peerUserId: string, video: boolean, sdp: Uint8Array, callId: string): Promise<void> {
    const e2ee = this.ctx.requireE2ee();
    const plaintext = bind(callId, sdp);
    const ciphertexts = await e2ee.encrypt(peerUserId, plaintext);
    this.write({
      callId,
      peerUserId,
      signal: CallSignal.OFFER,
      media: video ? CallMedia.VIDEO : CallMedia.AUDIO,
      payloads: ciphertexts.map((c) =>
        create(CallPayloadSchema, { deviceId: c.deviceId, ciphertext: wire(c.type, c.ciphertext) }),
      ),
    });
  }

  /** A signal with a payload for one device of the peer (an answer, candidates, an accept). */
  async toDevice(
    callId: string,
    peerUserId: string,
    peerDeviceId: string,
    signal: CallSignal,
    payload: Uint8Array,
    video = false,
  ): Promise<void> {
    const e2ee = this.ctx.requireE2ee();
    const [c] = await e2ee.cipher.encrypt(bind(callId, payload), [
      { userId: peerUserId, deviceId: peerDeviceId },
    ]);
    if (c === undefined)
      throw new ConnectError(`no session with device ${peerDeviceId}`, Code.FailedPrecondition);
    const payloads = [
      create(CallPayloadSchema, { deviceId: c.deviceId, ciphertext: wire(c.type, c.ciphertext) }),
    ];
    const conversationId = this.groups.get(callId)?.conversationId ?? "";
    // A group call's pairwise offer says no media: the group's ring did.
    const media =
      signal === CallSignal.OFFER && conversationId === ""
        ? video
          ? CallMedia.VIDEO
          : CallMedia.AUDIO
        : CallMedia.UNSPECIFIED;
    this.write({ callId, peerUserId, signal, media, payloads, conversationId });
  }

  /** A signal without payload to every device of the peer (ringing, decline, busy, hangup). */
  signal(callId: string, peerUserId: string, signal: CallSignal): void {
    this.write({ callId, peerUserId, signal });
  }

  /** A call frame from the server: decrypted and turned into a "call" event. */
  async receive(ev: CallEventFrame): Promise<void> {
    let payload: Uint8Array | undefined;
    if (ev.ciphertext.length > 1) {
      try {
        const e2ee = this.ctx.requireE2ee();
        const plain = await e2ee.cipher.decrypt(
          { userId: ev.fromUserId, deviceId: ev.fromDeviceId },
          { type: ev.ciphertext[0]!, ciphertext: ev.ciphertext.subarray(1) },
        );
        payload = unbind(ev.callId, plain);
      } catch (err) {
        this.ctx.events.reportError(err, Code.DataLoss);
        return;
      }
    }
    if (ev.conversationId !== "" && ev.signal === CallSignal.OFFER && payload === undefined)
      this.remember(ev.callId, {
        conversationId: ev.conversationId,
        hostUserId: ev.fromUserId,
        hostDeviceId: ev.hostDeviceId,
      });
    // The host dropped off and the server handed the call on: join and leave go to the new one.
    const known = this.groups.get(ev.callId);
    if (
      ev.signal === CallSignal.HOST_CHANGED &&
      known !== undefined &&
      known.conversationId === ev.conversationId
    )
      this.groups.set(ev.callId, { ...known, hostUserId: ev.fromUserId, hostDeviceId: ev.hostDeviceId });
    const event = ev.conversationId === "" ? toEvent(ev, payload) : toGroupEvent(ev, payload);
    if (event?.kind === "joined" && this.groups.has(ev.callId)) this.joined.add(ev.callId);
    // Over for this device: the call ended, or it was not let in.
    else if (event?.kind === "ended" || event?.kind === "full") this.joined.delete(ev.callId);
    if (event !== undefined) this.ctx.events.emit("call", event);
  }

  private write(init: MessageInitShape<typeof CallFrameSchema>): void {
    const s = this.stream.ready;
    if (s === undefined)
      throw new ConnectError("not connected: call signalling needs the stream", Code.Unavailable);
    this.stream.push(s, { case: "call", value: create(CallFrameSchema, init) });
  }
}

function toEvent(ev: CallEventFrame, payload: Uint8Array | undefined): CallEvent | undefined {
  const base = { callId: ev.callId, peerUserId: ev.fromUserId, peerDeviceId: ev.fromDeviceId };
  const ended = (reason: CallEndReason): CallEvent => ({ ...base, kind: "ended", reason });
  switch (ev.signal) {
    case CallSignal.OFFER:
      return { ...base, kind: "incoming", video: ev.media === CallMedia.VIDEO, payload };
    case CallSignal.RINGING:
      return { ...base, kind: "ringing" };
    case CallSignal.ACCEPT:
      return { ...base, kind: "connected", payload };
    case CallSignal.ANSWER:
      return { ...base, kind: "answer", payload };
    case CallSignal.ICE_CANDIDATES:
      return { ...base, kind: "candidates", payload };
    case CallSignal.DECLINE:
      return ended("declined");
    case CallSignal.BUSY:
      return ended("busy");
    case CallSignal.HANGUP:
      return ended(hangupReason(ev));
    case CallSignal.ANSWERED_ELSEWHERE:
      return ended("answeredElsewhere");
    default:
      return undefined;
  }
}

/** A group call's frame as an event: the ring, joins and leaves, and the mesh's pairwise steps. */
function toGroupEvent(ev: CallEventFrame, payload: Uint8Array | undefined): CallEvent | undefined {
  const base = {
    callId: ev.callId,
    peerUserId: ev.fromUserId,
    peerDeviceId: ev.fromDeviceId,
    conversationId: ev.conversationId,
  };
  const group = {
    participants: ev.participants.map(participant),
    ...(ev.sfuUrl !== "" && { sfuUrl: ev.sfuUrl }),
  };
  switch (ev.signal) {
    case CallSignal.OFFER:
      return payload === undefined
        ? { ...base, ...group, kind: "groupIncoming", video: ev.media === CallMedia.VIDEO }
        : { ...base, kind: "offer", payload };
    case CallSignal.JOINED:
      return { ...base, ...group, kind: "joined", ...(ev.sfuToken !== "" && { sfuToken: ev.sfuToken }) };
    case CallSignal.FULL:
      return { ...base, kind: "full" };
    case CallSignal.JOIN:
      return { ...base, kind: "participantJoined" };
    case CallSignal.LEAVE:
      return { ...base, kind: "participantLeft" };
    case CallSignal.ANSWER:
      return { ...base, kind: "answer", payload };
    case CallSignal.ICE_CANDIDATES:
      return { ...base, kind: "candidates", payload };
    case CallSignal.HANGUP:
      return { ...base, kind: "ended", reason: hangupReason(ev) };
    case CallSignal.HOST_CHANGED:
      return { ...base, kind: "hostChanged" };
    case CallSignal.ANSWERED_ELSEWHERE:
      return { ...base, kind: "ended", reason: "answeredElsewhere" };
    default:
      return undefined;
  }
}

/** A HANGUP's reason: the server's, when it ended the call, else the peer hung up. */
function hangupReason(ev: CallEventFrame): CallEndReason {
  if (ev.endReason === EndReason.DISCONNECTED) return "disconnected";
  if (ev.endReason === EndReason.RING_TIMEOUT) return "rangOut";
  return "hangup";
}

function participant(p: CallParticipant): CallParticipantRef {
  return { userId: p.userId, deviceId: p.deviceId, joinedAtMs: Number(p.joinedAtMs) };
}

/** The plaintext of a call payload: the domain and the call id, then the app's bytes. */
function bind(callId: string, payload: Uint8Array): Uint8Array {
  const head = new TextEncoder().encode(`${DOMAIN}\0${callId}\0`);
  const out = new Uint8Array(head.length + payload.length);
  out.set(head);
  out.set(payload, head.length);
  return out;
}

function unbind(callId: string, plain: Uint8Array): Uint8Array {
  const head = new TextEncoder().encode(`${DOMAIN}\0${callId}\0`);
  if (plain.length < head.length || !head.every((b, i) => plain[i] === b))
    throw new ConnectError(`a call payload that is not for call ${callId}`, Code.DataLoss);
  return plain.subarray(head.length);
}

/** A ciphertext on the wire: its Signal message type, then its bytes. */
function wire(type: number, ciphertext: Uint8Array): Uint8Array {
  const out = new Uint8Array(1 + ciphertext.length);
  out[0] = type;
  out.set(ciphertext, 1);
  return out;
}
