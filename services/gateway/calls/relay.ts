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
import { type CallHandoff, CallHandoffRole } from "../../../gen/switchboard/internal/v1/events_pb.js";
import {
  CallEndReason,
  type CallEventFrame,
  CallEventFrameSchema,
  type CallFrame,
  CallMedia,
  CallOutcome,
  CallSignal,
} from "../../../gen/switchboard/v1/calls_pb.js";
import { InvalidInputError, PermissionError } from "../../common/errors.js";
import { directConversationId } from "../../common/ids.js";
import { frame, inBand } from "../session/frames.js";
import { CALL_ID, CallBudgets, remember } from "./budgets.js";
import { deliverCall, gatewaysOf, handOff } from "./delivery.js";
import { CalleeCalls, DropWatch, RingWatch } from "./drops.js";
import { GroupCallRelay } from "./group.js";
import { calleeHandoff, callerFromHandoff, callerHandoff } from "./handoff.js";
import { CALL_LIMITS } from "./limits.js";
import { appendCallLog } from "./log.js";
import { type CallerCall, CallerCalls } from "./state.js";
import type { CallReceiver, CallRelayDeps, CallStream } from "./types.js";

export type { CallReceiver, CallRelayDeps, CallStream };

/** One per gateway: checks, bounds and relays call frames, and arbitrates accepts of its callers' calls. */
export class CallRelay {
  private readonly budgets: CallBudgets;
  private readonly pairs = new Map<string, number>();
  private readonly calls: CallerCalls;
  private readonly groups: GroupCallRelay;
  /** Answered calls of the devices here as callee (drops.ts). */
  private readonly callees: CalleeCalls;
  private readonly drops: DropWatch;
  /** 1:1 calls ringing on devices here, ended here if the caller's gateway never does (drops.ts). */
  private readonly rings: RingWatch<CallReceiver>;
  /** First accepts that came while a ringing call was on its way here (handed off), by device and call. */
  private readonly unarbitrated = new Map<string, { deviceId: string; at: number }>();

  constructor(private readonly deps: CallRelayDeps) {
    this.calls = new CallerCalls(deps.now, (call) => void this.rangOut(call));
    this.groups = new GroupCallRelay(deps);
    this.budgets = new CallBudgets(deps);
    this.callees = new CalleeCalls(deps.now);
    this.rings = new RingWatch((receiver, callId, fromUserId, fromDeviceId) =>
      receiver.deliverEvent({
        case: "call",
        value: this.hangupEvent(callId, fromUserId, fromDeviceId, CallEndReason.RING_TIMEOUT),
      }),
    );
    this.drops = new DropWatch(deps.now, (userId, deviceId, at) =>
      this.gone(userId, deviceId, at).catch((err: unknown) =>
        deps.log.warn({ err, deviceId }, "could not end or hand on the calls of a device that dropped off"),
      ),
    );
  }

  /** Forgets every call (the gateway is stopping); their log entries are not written. */
  stop(): void {
    this.calls.clear();
    this.groups.stop();
    this.callees.clear();
    this.drops.stop();
    this.rings.stop();
  }

  /**
   * A stream of the device closed here: if it was its last and the device is in a call, its
   * grace starts (drops.ts); when the grace is over, gone() ends or hands on its calls.
   */
  streamClosed(userId: string, deviceId: string): void {
    if (this.deps.hasStream(deviceId)) return;
    if (
      this.calls.ofDevice(deviceId).length > 0 ||
      this.callees.has(deviceId) ||
      this.groups.hostedBy(deviceId).length > 0
    )
      this.drops.closed(userId, deviceId);
  }

  /**
   * A call handed here (Delivery.call_handoff) for a device that holds, or held, a stream on
   * this gateway: kept as if it had started here. A device that is not here (gone again) gets
   * its grace at once.
   */
  adopt(h: CallHandoff, deviceId: string): void {
    const userId = h.role === CallHandoffRole.CALLER ? h.callerUserId : h.hostUserId;
    try {
      if (h.role === CallHandoffRole.CALLER) {
        const call = callerFromHandoff(h);
        this.calls.adopt(call);
        // An accept that came meanwhile passed unarbitrated: it is the winner now.
        const key = `${call.callerDeviceId}\n${call.callId}`;
        const early = this.unarbitrated.get(key);
        this.unarbitrated.delete(key);
        if (call.acceptedBy === undefined && early !== undefined) {
          this.calls.accept(call.callerDeviceId, call.callId, early.deviceId);
          this.withdrawPush(call);
          void this.answeredElsewhere(call.callId, call.peerUserId, early.deviceId, undefined);
        }
      } else if (h.role === CallHandoffRole.CALLEE)
        this.callees.add(deviceId, {
          callId: h.callId,
          callerUserId: h.peerUserId,
          acceptedAt: Number(h.answeredAtMs),
        });
      else if (h.role === CallHandoffRole.HOST) this.groups.adopt(h);
    } catch (err) {
      this.deps.log.warn({ err, callId: h.callId }, "could not take a call handed to this gateway");
      return;
    }
    this.deps.log.info(
      { callId: h.callId, deviceId, role: CallHandoffRole[h.role] },
      "took a call handed over by another gateway",
    );
    this.streamClosed(userId, deviceId);
  }

  /**
   * The device's grace is over and it has no stream here. Back on another gateway: its calls are
   * handed there. Gone: its calls end for it (the other side is told HANGUP, DISCONNECTED), and
   * a group call it hosts is handed to another device in it (group.ts).
   */
  private async gone(userId: string, deviceId: string, droppedAt: number): Promise<void> {
    if (this.deps.hasStream(deviceId)) {
      this.deps.log.info({ deviceId }, "a device in a call came back within its grace");
      return;
    }
    const elsewhere = (await gatewaysOf(this.deps, [userId], this.deps.gatewayId)).get(deviceId);
    for (const call of this.calls.ofDevice(deviceId)) {
      this.calls.close(deviceId, call.callId);
      if (elsewhere !== undefined && (await this.handOff(elsewhere, deviceId, callerHandoff(call)))) continue;
      void this.writeLog(
        call,
        call.acceptedBy === undefined ? CallOutcome.MISSED : CallOutcome.ANSWERED,
        droppedAt,
      );
      await this.send(call.peerUserId, undefined, () =>
        this.hangupEvent(call.callId, userId, deviceId, CallEndReason.DISCONNECTED),
      );
    }
    for (const c of this.callees.take(deviceId)) {
      if (
        elsewhere !== undefined &&
        (await this.handOff(elsewhere, deviceId, calleeHandoff(c, userId, deviceId)))
      )
        continue;
      // To the caller's device(s): the caller's gateway ends and logs the call (deliver below).
      await this.send(c.callerUserId, undefined, () =>
        this.hangupEvent(c.callId, userId, deviceId, CallEndReason.DISCONNECTED),
      );
    }
    for (const call of this.groups.hostedBy(deviceId)) await this.groups.hostGone(call, elsewhere, droppedAt);
  }

  /** Hands a call on (delivery.ts); false, logged, if it could not be sent: the caller ends it. */
  private async handOff(gatewayId: string, deviceId: string, h: CallHandoff): Promise<boolean> {
    try {
      await handOff(this.deps, gatewayId, deviceId, h);
      return true;
    } catch (err) {
      this.deps.log.warn(
        { err, callId: h.callId },
        "could not hand a call to the device's new gateway: it ends",
      );
      return false;
    }
  }

  private hangupEvent(callId: string, fromUserId: string, fromDeviceId: string, endReason: CallEndReason) {
    return create(CallEventFrameSchema, {
      callId,
      fromUserId,
      fromDeviceId,
      signal: CallSignal.HANGUP,
      endReason,
      serverTimeMs: BigInt(this.deps.now()),
    });
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
      this.budgets.checkDirect(stream, f);
      this.budgets.charge(stream.deviceId, f, newCall);
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
    // This device answered the ring (or ignores it): it is no longer ringing for the server.
    if (f.signal !== CallSignal.RINGING && f.signal !== CallSignal.OFFER)
      this.rings.over(stream.deviceId, f.callId);
    if (f.signal === CallSignal.ACCEPT)
      this.callees.add(stream.deviceId, {
        callId: f.callId,
        callerUserId: f.peerUserId,
        acceptedAt: this.deps.now(),
      });
    else if (f.signal === CallSignal.HANGUP || f.signal === CallSignal.DECLINE)
      this.callees.remove(stream.deviceId, f.callId);
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
      this.budgets.checkPayloads(stream, f);
      // A join is announced to every participant: it spends an offer, so toggling is bounded.
      this.budgets.charge(stream.deviceId, f, this.groups.starts(stream, f) || f.signal === CallSignal.JOIN);
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
    // The call is over for a callee device here (hung up, or taken on another device).
    if (ev.signal === CallSignal.HANGUP || ev.signal === CallSignal.ANSWERED_ELSEWHERE) {
      this.callees.remove(receiver.deviceId, ev.callId);
      this.rings.over(receiver.deviceId, ev.callId);
    } else if (ev.signal === CallSignal.OFFER && !this.callees.hasCall(receiver.deviceId, ev.callId))
      // An offer for a call this device took is a renegotiation, not a ring.
      this.rings.ringing(receiver, ev.callId, ev.fromUserId, ev.fromDeviceId);
    const call = this.calls.get(receiver.deviceId, ev.callId);
    if (
      call === undefined &&
      ev.signal === CallSignal.ACCEPT &&
      this.unarbitrated.size < CALL_LIMITS.handoffWaiting
    ) {
      // Maybe a call on its way here from the gateway the caller left: adopt() takes it as the winner.
      const key = `${receiver.deviceId}\n${ev.callId}`;
      if (!this.unarbitrated.has(key))
        this.unarbitrated.set(key, { deviceId: ev.fromDeviceId, at: this.deps.now() });
      setTimeout(
        () => this.unarbitrated.delete(key),
        CALL_LIMITS.dropGraceMs + CALL_LIMITS.handoffWaitMs,
      ).unref();
    }
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
      this.hangupEvent(call.callId, fromUserId, fromDeviceId, CallEndReason.RING_TIMEOUT);
    try {
      await this.send(call.peerUserId, undefined, hangup(call.callerUserId, call.callerDeviceId));
      await this.send(call.callerUserId, [call.callerDeviceId], hangup(call.peerUserId, ""));
    } catch (err) {
      this.deps.log.warn({ err, callId: call.callId }, "could not stop a call that rang out");
    }
  }

  /** Withdraws the call's push and appends its entry (log.ts). */
  private async writeLog(call: CallerCall, outcome: CallOutcome, endedAt = this.deps.now()): Promise<void> {
    this.withdrawPush(call);
    await appendCallLog(this.deps.sequencer, this.deps.log, call, outcome, endedAt);
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
  private send(
    userId: string,
    only: string[] | undefined,
    eventFor: (deviceId: string) => CallEventFrame | undefined,
  ): Promise<Set<string>> {
    return deliverCall(this.deps, [userId], (_u, deviceId) =>
      only !== undefined && !only.includes(deviceId) ? undefined : eventFor(deviceId),
    );
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
