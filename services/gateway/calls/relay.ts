/**
 * Call signalling (docs/calls.md): a device's call frames go live to the devices of its peer,
 * through the gateways holding their streams (looked up in the route store, handed over on the
 * delivery channel), and are never stored. The server sees who calls whom and when; SDP and
 * candidates are ciphertext for one device each.
 *
 * "The first accept wins" is decided by the gateway holding the caller's stream: every accept
 * goes to the caller's device, so they all pass through that one process, which lets the first
 * through and answers every other callee device with ANSWERED_ELSEWHERE (they stop ringing).
 */

import { create } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import {
  type Delivery,
  DeliveryBatchSchema,
  DeliverySchema,
} from "../../../gen/switchboard/internal/v1/events_pb.js";
import {
  type CallEventFrame,
  CallEventFrameSchema,
  type CallFrame,
  CallMedia,
  CallOutcome,
  CallSignal,
} from "../../../gen/switchboard/v1/calls_pb.js";
import { InvalidInputError, LimitError, PermissionError } from "../../common/errors.js";
import { directConversationId } from "../../common/ids.js";
import { TokenBucket } from "../../common/rate-limit/token-bucket.js";
import { requireId } from "../../common/validate.js";
import { frame, inBand } from "../session/frames.js";
import { GroupCallRelay } from "./group.js";
import { CALL_FRAME_OVERHEAD_BYTES, CALL_LIMITS } from "./limits.js";
import { appendCallLog } from "./log.js";
import { type CallerCall, CallerCalls } from "./state.js";
import type { CallReceiver, CallRelayDeps, CallStream } from "./types.js";

export type { CallReceiver, CallRelayDeps, CallStream };

const CALL_ID = /^[A-Za-z0-9_-]{1,64}$/;

/** One per gateway: checks, bounds and relays call frames, and arbitrates accepts of its callers' calls. */
export class CallRelay {
  private readonly offers = new Map<string, TokenBucket>();
  private readonly bytes = new Map<string, { tokens: number; at: number }>();
  private readonly pairs = new Map<string, number>();
  private readonly calls: CallerCalls;
  private readonly groups: GroupCallRelay;

  constructor(private readonly deps: CallRelayDeps) {
    this.calls = new CallerCalls(deps.now, (call) => void this.rangOut(call));
    this.groups = new GroupCallRelay(deps);
  }

  /** Forgets every call (the gateway is stopping); their log entries are not written. */
  stop(): void {
    this.calls.clear();
    this.groups.stop();
  }

  /** A call frame from a device's stream: checked, bounded, relayed; refusals answered in band. */
  receive(stream: CallStream, f: CallFrame): void {
    if (f.conversationId !== "") {
      this.receiveGroup(stream, f);
      return;
    }
    // An offer again for a ringing call (to a device woken by push, say) is no new call.
    const newCall = f.signal === CallSignal.OFFER && this.calls.get(stream.deviceId, f.callId) === undefined;
    try {
      this.check(stream, f);
      this.charge(stream.deviceId, f, newCall);
      if (f.signal === CallSignal.OFFER)
        this.calls.open({
          callId: f.callId,
          callerUserId: stream.userId,
          callerDeviceId: stream.deviceId,
          peerUserId: f.peerUserId,
          media: f.media,
        });
    } catch (err) {
      this.refuse(stream, err);
      return;
    }
    if (f.signal === CallSignal.HANGUP) {
      // The caller hangs up: answered, or missed if it still rang.
      const ended = this.calls.close(stream.deviceId, f.callId);
      if (ended !== undefined)
        void this.writeLog(ended, ended.acceptedBy === undefined ? CallOutcome.MISSED : CallOutcome.ANSWERED);
    }
    this.relay(stream, f, newCall).catch((err: unknown) => {
      if (newCall) this.calls.close(stream.deviceId, f.callId);
      this.refuse(stream, err);
    });
  }

  /** A group call's frame (group.ts): checked and bounded here, relayed there. */
  private receiveGroup(stream: CallStream, f: CallFrame): void {
    try {
      if (!CALL_ID.test(f.callId))
        throw new InvalidInputError("call_id: 1 to 64 characters of [A-Za-z0-9_-] required");
      this.groups.check(stream, f);
      this.checkPayloads(stream, f);
      // A join is announced to every participant: it spends an offer, so toggling is bounded.
      this.charge(stream.deviceId, f, this.groups.starts(stream, f) || f.signal === CallSignal.JOIN);
    } catch (err) {
      this.refuse(stream, err);
      return;
    }
    this.groups.relay(stream, f).catch((err: unknown) => this.refuse(stream, err));
  }

  /**
   * A call event for a local stream (from the delivery channel). Accepts and what follows them
   * are arbitrated here when this stream's device is the caller.
   */
  deliver(receiver: CallReceiver, ev: CallEventFrame): void {
    // A group call's JOIN or LEAVE for a host device here is the gateway's to decide on.
    if (ev.conversationId !== "" && this.groups.intercept(receiver, ev)) return;
    if (ev.conversationId !== "") {
      receiver.deliverEvent({ case: "call", value: ev });
      return;
    }
    const call = this.calls.get(receiver.deviceId, ev.callId);
    if (call !== undefined && call.peerUserId === ev.fromUserId) {
      switch (ev.signal) {
        case CallSignal.ACCEPT: {
          const first = call.acceptedBy === undefined;
          if (!first && call.acceptedBy !== ev.fromDeviceId) {
            // Too late: tell that device, and keep it from the caller.
            void this.answeredElsewhere(ev.callId, call.peerUserId, call.acceptedBy!, [ev.fromDeviceId]);
            return;
          }
          if (first) {
            this.calls.accept(receiver.deviceId, ev.callId, ev.fromDeviceId);
            // The devices woken by push stop ringing too.
            this.withdrawPush(call);
            void this.answeredElsewhere(ev.callId, call.peerUserId, ev.fromDeviceId, undefined);
          }
          break;
        }
        case CallSignal.ANSWER:
        case CallSignal.ICE_CANDIDATES:
          // A device that lost the race has nothing to say to the caller any more.
          if (call.acceptedBy !== undefined && call.acceptedBy !== ev.fromDeviceId) return;
          break;
        case CallSignal.DECLINE:
        case CallSignal.BUSY:
          if (call.acceptedBy !== undefined) return;
          this.calls.close(receiver.deviceId, ev.callId);
          void this.writeLog(call, ev.signal === CallSignal.BUSY ? CallOutcome.BUSY : CallOutcome.DECLINED);
          break;
        case CallSignal.HANGUP:
          // Before an accept, one callee device hanging up is that device ignoring the call.
          if (call.acceptedBy === ev.fromDeviceId) {
            this.calls.close(receiver.deviceId, ev.callId);
            void this.writeLog(call, CallOutcome.ANSWERED);
          } else if (call.acceptedBy !== undefined) return;
          break;
        default:
          break;
      }
    }
    receiver.deliverEvent({ case: "call", value: ev });
  }

  private check(stream: CallStream, f: CallFrame): void {
    if (!CALL_ID.test(f.callId))
      throw new InvalidInputError("call_id: 1 to 64 characters of [A-Za-z0-9_-] required");
    requireId("peer_user_id", f.peerUserId, "u");
    if (f.peerUserId === stream.userId)
      throw new InvalidInputError("peer_user_id: a call needs another user");
    if (
      f.signal === CallSignal.UNSPECIFIED ||
      f.signal >= CallSignal.ANSWERED_ELSEWHERE ||
      CallSignal[f.signal] === undefined
    )
      throw new InvalidInputError(
        "signal: one of OFFER, ANSWER, ICE_CANDIDATES, RINGING, ACCEPT, DECLINE, BUSY, HANGUP",
      );
    if (f.hostDeviceId !== "") throw new InvalidInputError("host_device_id: only in group calls");
    if (f.signal === CallSignal.OFFER && f.media !== CallMedia.AUDIO && f.media !== CallMedia.VIDEO)
      throw new InvalidInputError("media: an offer is AUDIO or VIDEO");
    this.checkPayloads(stream, f);
  }

  /** At most CALL_LIMITS.payloadsPerFrame ciphertexts, each for a distinct device and within its size. */
  private checkPayloads(stream: CallStream, f: CallFrame): void {
    if (f.payloads.length > CALL_LIMITS.payloadsPerFrame)
      throw new InvalidInputError(
        `payloads: at most ${CALL_LIMITS.payloadsPerFrame} per frame, got ${f.payloads.length}`,
      );
    const seen = new Set<string>();
    for (const p of f.payloads) {
      requireId("payloads.device_id", p.deviceId, "dv");
      if (seen.has(p.deviceId)) throw new InvalidInputError(`payloads: device ${p.deviceId} appears twice`);
      seen.add(p.deviceId);
      if (p.ciphertext.length === 0)
        throw new InvalidInputError(`payloads: the ciphertext for ${p.deviceId} is empty`);
      if (p.ciphertext.length > CALL_LIMITS.payloadBytes) {
        this.deps.refused("call_payload_too_large", "call frame refused: a ciphertext passes its limit", {
          deviceId: stream.deviceId,
          bytes: p.ciphertext.length,
        });
        throw new InvalidInputError(
          `payloads: the ciphertext for ${p.deviceId} is ${p.ciphertext.length} bytes; at most ${CALL_LIMITS.payloadBytes}`,
        );
      }
    }
  }

  /** Takes the frame from the device's budgets: offers by count, every frame by bytes. */
  private charge(deviceId: string, f: CallFrame, newCall: boolean): void {
    const now = this.deps.now();
    if (newCall) {
      let bucket = this.offers.get(deviceId);
      if (bucket === undefined) {
        bucket = new TokenBucket(CALL_LIMITS.offersPerMinute / 60, CALL_LIMITS.offerBurst, now);
        remember(this.offers, deviceId, bucket);
      }
      const wait = bucket.take(now);
      if (wait > 0) {
        this.deps.refused("call_offer_rate", "call offer refused: the device's offer budget is spent", {
          deviceId,
        });
        throw new LimitError(
          `call offers: at most ${CALL_LIMITS.offersPerMinute} per minute per device (burst ${CALL_LIMITS.offerBurst}; group call joins count as offers); retry in ${wait} ms`,
          { retryAfterMs: wait },
        );
      }
    }
    const cost = CALL_FRAME_OVERHEAD_BYTES + f.payloads.reduce((n, p) => n + p.ciphertext.length, 0);
    const budget = this.bytes.get(deviceId) ?? { tokens: CALL_LIMITS.byteBurst, at: now };
    budget.tokens = Math.min(
      CALL_LIMITS.byteBurst,
      budget.tokens + (Math.max(0, now - budget.at) * CALL_LIMITS.bytesPerSecond) / 1000,
    );
    budget.at = now;
    remember(this.bytes, deviceId, budget);
    if (budget.tokens < cost) {
      const wait = Math.ceil(((cost - budget.tokens) * 1000) / CALL_LIMITS.bytesPerSecond);
      this.deps.refused(
        "call_byte_rate",
        "call frame refused: the device's signalling byte budget is spent",
        {
          deviceId,
          bytes: cost,
        },
      );
      throw new LimitError(
        `call signalling: at most ${CALL_LIMITS.bytesPerSecond} bytes per second per device (burst ${CALL_LIMITS.byteBurst}); retry in ${wait} ms`,
        { retryAfterMs: wait },
      );
    }
    budget.tokens -= cost;
  }

  /** Refuses a frame in band; the stream goes on. */
  private refuse(stream: CallStream, err: unknown): void {
    if (stream.isClosed) return;
    const e = inBand(err);
    stream.answer(frame({ case: "error", value: { frame: "call", code: e.code, message: e.rawMessage } }));
  }

  /** Checks the pair shares a direct conversation, then hands the frame to the peer's devices. */
  private async relay(stream: CallStream, f: CallFrame, newCall: boolean): Promise<void> {
    await this.requirePair(stream.userId, f.peerUserId);
    // Every frame, not only offers: a block in the middle of a call ends what the blocked user can send.
    await this.requireNotBlocked(stream.userId, f.peerUserId);
    const event = {
      callId: f.callId,
      fromUserId: stream.userId,
      fromDeviceId: stream.deviceId,
      signal: f.signal,
      media: f.signal === CallSignal.OFFER ? f.media : CallMedia.UNSPECIFIED,
    };
    const only =
      f.payloads.length > 0 ? new Map(f.payloads.map((p) => [p.deviceId, p.ciphertext])) : undefined;
    const reached = await this.send(
      f.peerUserId,
      only === undefined ? undefined : [...only.keys()],
      (deviceId) =>
        create(CallEventFrameSchema, {
          ...event,
          ciphertext: only?.get(deviceId) ?? new Uint8Array(),
          serverTimeMs: BigInt(this.deps.now()),
        }),
    );
    // The call rings where it reached; a push that cannot be queued is logged, not refused.
    if (newCall)
      await this.wakeOffline(stream, f, reached).catch((err: unknown) =>
        this.deps.log.warn({ err, callId: f.callId }, "could not ring the callee's devices without a stream"),
      );
  }

  /** Rings the callee's devices that hold no stream with a VoIP push, remembered to withdraw it. */
  private async wakeOffline(stream: CallStream, f: CallFrame, reached: Set<string>): Promise<void> {
    if (this.deps.notifyCall === undefined) return;
    const call = this.calls.get(stream.deviceId, f.callId);
    const offline = (await this.deps.userDevices(f.peerUserId)).filter((d) => !reached.has(d)).slice(0, 16);
    if (offline.length === 0 || call === undefined) return;
    call.pushed = offline;
    await this.deps.notifyCall({
      userId: f.peerUserId,
      deviceIds: offline,
      callId: f.callId,
      conversationId: directConversationId(stream.userId, f.peerUserId),
      ended: false,
    });
  }

  /** Withdraws (or supersedes) the wake-ups of a call that stopped ringing. */
  private withdrawPush(call: CallerCall): void {
    if (call.pushed.length === 0 || this.deps.notifyCall === undefined) return;
    const deviceIds = call.pushed;
    call.pushed = [];
    this.deps
      .notifyCall({
        userId: call.peerUserId,
        deviceIds,
        callId: call.callId,
        conversationId: directConversationId(call.callerUserId, call.peerUserId),
        ended: true,
      })
      .catch((err: unknown) =>
        this.deps.log.warn({ err, callId: call.callId }, "could not withdraw a call's push"),
      );
  }

  /** A call nobody took in time: logged as missed; the callee's devices and the caller's stop ringing. */
  private async rangOut(call: CallerCall): Promise<void> {
    await this.writeLog(call, CallOutcome.MISSED);
    const hangup = (fromUserId: string, fromDeviceId: string) => () =>
      create(CallEventFrameSchema, {
        callId: call.callId,
        fromUserId,
        fromDeviceId,
        signal: CallSignal.HANGUP,
        serverTimeMs: BigInt(this.deps.now()),
      });
    try {
      await this.send(call.peerUserId, undefined, hangup(call.callerUserId, call.callerDeviceId));
      await this.send(call.callerUserId, [call.callerDeviceId], hangup(call.peerUserId, ""));
    } catch (err) {
      this.deps.log.warn({ err, callId: call.callId }, "could not stop a call that rang out");
    }
  }

  /** Withdraws the call's push and appends its entry (log.ts). */
  private async writeLog(call: CallerCall, outcome: CallOutcome): Promise<void> {
    this.withdrawPush(call);
    await appendCallLog(this.deps.sequencer, this.deps.log, call, outcome, this.deps.now());
  }

  /** Tells the callee's devices (all but the winner, or only those listed) that another device took the call. */
  private async answeredElsewhere(
    callId: string,
    calleeUserId: string,
    winnerDeviceId: string,
    only: string[] | undefined,
  ): Promise<void> {
    try {
      await this.send(calleeUserId, only, (deviceId) =>
        deviceId === winnerDeviceId
          ? undefined
          : create(CallEventFrameSchema, {
              callId,
              fromUserId: "",
              fromDeviceId: winnerDeviceId,
              signal: CallSignal.ANSWERED_ELSEWHERE,
              serverTimeMs: BigInt(this.deps.now()),
            }),
      );
    } catch (err) {
      this.deps.log.warn(
        { err, callId },
        "could not tell the callee's other devices that the call was answered",
      );
    }
  }

  /**
   * Delivers an event to each online device of userId (only the listed ones, when given) through
   * the gateways holding their streams. Returns the devices it was handed to.
   */
  private async send(
    userId: string,
    only: string[] | undefined,
    eventFor: (deviceId: string) => CallEventFrame | undefined,
  ): Promise<Set<string>> {
    const { routes } = await this.deps.presence.lookupRoutes({ userIds: [userId] });
    const byGateway = new Map<string, Delivery[]>();
    const devices = new Set<string>();
    for (const r of routes) {
      if (r.userId !== userId || devices.has(r.deviceId)) continue;
      if (only !== undefined && !only.includes(r.deviceId)) continue;
      const ev = eventFor(r.deviceId);
      if (ev === undefined) continue;
      devices.add(r.deviceId);
      const list = byGateway.get(r.gatewayId) ?? [];
      list.push(create(DeliverySchema, { deviceIds: [r.deviceId], payload: { case: "call", value: ev } }));
      byGateway.set(r.gatewayId, list);
    }
    await Promise.all(
      [...byGateway].map(([gatewayId, deliveries]) =>
        this.deps.delivery.deliver(gatewayId, create(DeliveryBatchSchema, { deliveries })),
      ),
    );
    return devices;
  }

  /** PERMISSION_DENIED unless the two users are the members of their direct conversation. */
  private async requirePair(a: string, b: string): Promise<void> {
    const key = a < b ? `${a}\n${b}` : `${b}\n${a}`;
    const now = this.deps.now();
    if ((this.pairs.get(key) ?? 0) > now) return;
    let members: string[] = [];
    try {
      members = (await this.deps.sequencer.getMembers({ conversationId: directConversationId(a, b) }))
        .userIds;
    } catch (err) {
      // No such conversation yet: the pair is refused below.
      if (inBand(err).code !== Code.NotFound) throw err;
    }
    if (!members.includes(a) || !members.includes(b))
      throw new PermissionError(
        "calls are between the two members of a direct conversation (ConversationService.OpenDirect first)",
      );
    remember(this.pairs, key, now + CALL_LIMITS.pairCheckMs);
  }

  /** A callee who blocked the caller is not rung; said as a direct send to them is refused. */
  private async requireNotBlocked(caller: string, callee: string): Promise<void> {
    if (await this.deps.blockedBy(callee, caller))
      throw new PermissionError("call not accepted: the recipient does not accept calls from you");
  }
}

/** Sets a key in a map kept within CALL_LIMITS.remembered by dropping its oldest keys. */
function remember<V>(map: Map<string, V>, key: string, value: V): void {
  map.delete(key);
  map.set(key, value);
  for (const k of map.keys()) {
    if (map.size <= CALL_LIMITS.remembered) return;
    map.delete(k);
  }
}
