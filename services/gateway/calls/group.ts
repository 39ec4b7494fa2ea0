/**
 * Group call signalling (docs/calls.md, "Group calls"). A device starts a call in a group
 * conversation and every other member's devices ring; the starting device is the call's host,
 * and the gateway holding its stream keeps who is in: JOIN and LEAVE go to the host device, are
 * taken here by that gateway (never shown to the host's app as such), and are announced to the
 * devices in the call. The participants set up their media with pairwise, end-to-end encrypted
 * OFFER, ANSWER and ICE_CANDIDATES frames (a mesh), or with the SFU the server names. When the
 * last device leaves, the host's gateway writes the call's log entry.
 */

import { create } from "@bufbuild/protobuf";
import type { CallHandoff } from "../../../gen/switchboard/internal/v1/events_pb.js";
import {
  CallEndReason,
  type CallEventFrame,
  CallEventFrameSchema,
  type CallFrame,
  CallMedia,
  CallSignal,
} from "../../../gen/switchboard/v1/calls_pb.js";
import { InvalidInputError, NotFoundError } from "../../common/errors.js";
import { requireId } from "../../common/validate.js";
import { deliverCall, gatewaysOf, handOff } from "./delivery.js";
import { HeldFrames } from "./drops.js";
import { type GroupCall, GroupCalls, type GroupMember } from "./group-state.js";
import { groupFromHandoff, groupHandoff, participant } from "./handoff.js";
import { CALL_LIMITS } from "./limits.js";
import { appendGroupCallLog } from "./log.js";
import { MemberLists } from "./members.js";
import { issueSfuToken } from "./sfu.js";
import type { CallReceiver, CallRelayDeps, CallStream } from "./types.js";

/** What group calls need of the gateway beyond what 1:1 calls do. */
export interface GroupCallDeps
  extends Pick<
    CallRelayDeps,
    "presence" | "sequencer" | "delivery" | "log" | "now" | "refused" | "notifyCall" | "sfuSecret"
  > {
  /** The SFU devices are told to send media to; undefined: a mesh. */
  sfuUrl: string | undefined;
  /** The active devices of users (the accounts directory), at most 1,024 users. */
  devicesOf(userIds: string[]): Promise<Map<string, string[]>>;
}

export class GroupCallRelay {
  private readonly calls: GroupCalls;
  private readonly members: MemberLists;
  /** Events already taken: one delivery reaches every session of the host device. */
  private readonly taken = new WeakSet<CallEventFrame>();
  /** JOINs and LEAVEs for calls that may be on their way here (handed off), by host device and call. */
  private readonly held: HeldFrames<CallReceiver, CallEventFrame>;

  private readonly sweeper: NodeJS.Timeout;
  private sweeping = false;

  constructor(private readonly deps: GroupCallDeps) {
    this.members = new MemberLists(deps.sequencer, deps.now);
    this.held = new HeldFrames(deps.now, (receiver, ev) =>
      this.host(receiver, ev, true).catch((err: unknown) =>
        this.deps.log.warn({ err, callId: ev.callId }, "could not handle a group call's join or leave"),
      ),
    );
    this.calls = new GroupCalls(
      deps.now,
      (call) => void this.stopRinging(call),
      (call) => void this.end(call),
    );
    this.sweeper = setInterval(() => void this.sweep(), CALL_LIMITS.groupSweepMs);
    this.sweeper.unref();
  }

  stop(): void {
    clearInterval(this.sweeper);
    this.calls.clear();
    this.held.clear();
  }

  /** The calls the device hosts on this gateway. */
  hostedBy(deviceId: string): GroupCall[] {
    return this.calls.hostedBy(deviceId);
  }

  /**
   * The host device's grace is over (relay.ts). Back on another gateway: the call goes there as
   * it is. Gone: it is let out, and the call is handed to the first device still in it that holds
   * a stream, whose gateway tells the participants (and the devices still ringing) HOST_CHANGED;
   * with none, the call ends (HANGUP, DISCONNECTED) and is logged.
   */
  async hostGone(call: GroupCall, elsewhere: string | undefined, droppedAt: number): Promise<void> {
    if (this.calls.get(call.hostDeviceId, call.callId) !== call) return;
    const host = { userId: call.hostUserId, deviceId: call.hostDeviceId };
    let next: { member: Pick<GroupMember, "userId" | "deviceId">; gatewayId: string } | undefined;
    if (elsewhere !== undefined) next = { member: host, gatewayId: elsewhere };
    else {
      if (this.calls.leave(call, host.deviceId, droppedAt)) await this.announce(call, CallSignal.LEAVE, host);
      const inCall = [...call.participants.values()];
      const routed = await gatewaysOf(this.deps, [...new Set(inCall.map((p) => p.userId))]);
      const member = inCall.find((p) => routed.has(p.deviceId));
      if (member !== undefined) next = { member, gatewayId: routed.get(member.deviceId)! };
    }
    if (next === undefined) {
      await this.end(call, CallEndReason.DISCONNECTED);
      return;
    }
    this.calls.close(call);
    try {
      await handOff(this.deps, next.gatewayId, next.member.deviceId, groupHandoff(call, next.member));
    } catch (err) {
      this.deps.log.warn({ err, callId: call.callId }, "could not hand a group call on: it ends");
      await this.end(call, CallEndReason.DISCONNECTED);
    }
  }

  /** Keeps a group call handed to a host device here; a new host is announced (HOST_CHANGED). */
  adopt(h: CallHandoff): void {
    const call = groupFromHandoff(h);
    this.calls.adopt(call);
    this.held.release(call.hostDeviceId, call.callId);
    if (!h.hostChanged) return;
    // Members who join from the log join by the newest ONGOING entry's sender: the new host.
    void appendGroupCallLog(this.deps.sequencer, this.deps.log, call, undefined, true);
    const changed = () =>
      this.event({
        callId: call.callId,
        conversationId: call.conversationId,
        fromUserId: call.hostUserId,
        fromDeviceId: call.hostDeviceId,
        hostDeviceId: call.hostDeviceId,
        signal: CallSignal.HOST_CHANGED,
      });
    // While it rings, the devices still ringing join by the host too.
    const to = call.ringing
      ? this.members.list(call.conversationId).then((members) => this.send([...members], changed))
      : this.sendTo([...call.participants.values()], changed);
    to.catch((err: unknown) =>
      this.deps.log.warn({ err, callId: call.callId }, "could not announce a group call's new host"),
    );
  }

  /**
   * Lets out the participants whose stream is gone (their route expired or was removed), as if
   * they had sent LEAVE, so a device that dropped off does not stay listed, and a call everyone
   * dropped off ends and is logged. The host device too: the call goes on without it.
   */
  private async sweep(): Promise<void> {
    const calls = this.calls.all();
    if (this.sweeping || calls.length === 0) return;
    this.sweeping = true;
    try {
      const users = [...new Set(calls.flatMap((c) => [...c.participants.values()].map((p) => p.userId)))];
      const routed = await gatewaysOf(this.deps, users);
      for (const call of calls) {
        if (this.calls.get(call.hostDeviceId, call.callId) !== call) continue;
        for (const p of [...call.participants.values()]) {
          if (routed.has(p.deviceId) || !this.calls.leave(call, p.deviceId)) continue;
          await this.announce(call, CallSignal.LEAVE, p);
        }
        if (call.participants.size === 0) await this.end(call);
      }
    } catch (err) {
      this.deps.log.warn({ err }, "could not look for group call participants that dropped off");
    } finally {
      this.sweeping = false;
    }
  }

  /** Whether the frame starts a call this device does not host yet (it spends an offer). */
  starts(stream: CallStream, f: CallFrame): boolean {
    return (
      f.signal === CallSignal.OFFER &&
      f.peerUserId === "" &&
      this.calls.get(stream.deviceId, f.callId) === undefined
    );
  }

  /** The shape of a group call frame (its payloads are checked by the relay); INVALID_ARGUMENT. */
  check(stream: CallStream, f: CallFrame): void {
    requireId("conversation_id", f.conversationId, "g");
    if (f.signal === CallSignal.OFFER && f.peerUserId === "") {
      if (f.media !== CallMedia.AUDIO && f.media !== CallMedia.VIDEO)
        throw new InvalidInputError("media: a group call's offer is AUDIO or VIDEO");
      if (f.payloads.length > 0 || f.hostDeviceId !== "")
        throw new InvalidInputError(
          "a group call's start carries no payloads and no host_device_id (it rings every member)",
        );
      return;
    }
    requireId("peer_user_id", f.peerUserId, "u");
    if (f.signal === CallSignal.JOIN || f.signal === CallSignal.LEAVE) {
      requireId("host_device_id", f.hostDeviceId, "dv");
      if (f.payloads.length > 0) throw new InvalidInputError("payloads: JOIN and LEAVE carry none");
      return;
    }
    if (
      f.signal !== CallSignal.OFFER &&
      f.signal !== CallSignal.ANSWER &&
      f.signal !== CallSignal.ICE_CANDIDATES
    )
      throw new InvalidInputError(
        "signal: a group call frame is OFFER, ANSWER, ICE_CANDIDATES, JOIN or LEAVE",
      );
    if (f.hostDeviceId !== "") throw new InvalidInputError("host_device_id: only on JOIN and LEAVE");
    if (f.payloads.length !== 1)
      throw new InvalidInputError(
        "payloads: a group call's OFFER, ANSWER or ICE_CANDIDATES is for one device",
      );
    if (f.payloads[0]!.deviceId === stream.deviceId)
      throw new InvalidInputError("payloads: a device does not signal itself");
  }

  /** Relays a checked frame; refusals are thrown (the relay answers them in band). */
  async relay(stream: CallStream, f: CallFrame): Promise<void> {
    await this.members.require(f.conversationId, stream.userId);
    if (f.signal === CallSignal.OFFER && f.peerUserId === "") {
      if (this.calls.get(stream.deviceId, f.callId) !== undefined) return;
      const call = this.calls.open({
        callId: f.callId,
        conversationId: f.conversationId,
        hostUserId: stream.userId,
        hostDeviceId: stream.deviceId,
        media: f.media,
      });
      // The entry that says the call is going: members offline now (woken by the push, or not)
      // and members added later find it in the log, with the host as its sender, and can join.
      void appendGroupCallLog(this.deps.sequencer, this.deps.log, call, undefined);
      await this.ring(call);
      return;
    }
    await this.members.require(f.conversationId, f.peerUserId);
    const base = {
      callId: f.callId,
      conversationId: f.conversationId,
      fromUserId: stream.userId,
      fromDeviceId: stream.deviceId,
      signal: f.signal,
    };
    if (f.signal === CallSignal.JOIN || f.signal === CallSignal.LEAVE) {
      // To the host device's gateway, which takes it (intercept) rather than showing it.
      const reached = await this.send([f.peerUserId], (_userId, deviceId) =>
        deviceId === f.hostDeviceId ? this.event({ ...base, hostDeviceId: f.hostDeviceId }) : undefined,
      );
      if (reached.size === 0 && f.signal === CallSignal.JOIN)
        throw new NotFoundError(
          `call ${f.callId}: no such group call going (it ended, or its host device is not connected)`,
        );
      return;
    }
    const [payload] = f.payloads;
    await this.send([f.peerUserId], (_userId, deviceId) =>
      deviceId === payload!.deviceId ? this.event({ ...base, ciphertext: payload!.ciphertext }) : undefined,
    );
  }

  /**
   * Takes a JOIN or LEAVE meant for the host device this receiver is (true), so the gateway
   * decides who is in; anything else is for the device (false).
   */
  intercept(receiver: CallReceiver, ev: CallEventFrame): boolean {
    if (ev.conversationId === "" || ev.hostDeviceId !== receiver.deviceId) return false;
    if (ev.signal !== CallSignal.JOIN && ev.signal !== CallSignal.LEAVE) return false;
    if (this.taken.has(ev)) return true;
    this.taken.add(ev);
    this.host(receiver, ev).catch((err: unknown) =>
      this.deps.log.warn({ err, callId: ev.callId }, "could not handle a group call's join or leave"),
    );
    return true;
  }

  private async host(receiver: CallReceiver, ev: CallEventFrame, held = false): Promise<void> {
    const call = this.calls.get(receiver.deviceId, ev.callId);
    const from = { userId: ev.fromUserId, deviceId: ev.fromDeviceId };
    // It may be on its way from the gateway the host device left: held until it comes, or the wait is over.
    if (call === undefined && !held && this.held.hold(receiver, ev)) return;
    if (call === undefined || call.conversationId !== ev.conversationId) {
      // Over (or never here): the device stops ringing.
      if (ev.signal === CallSignal.JOIN)
        await this.sendTo([from], () =>
          this.event({
            callId: ev.callId,
            conversationId: ev.conversationId,
            fromUserId: receiver.userId,
            fromDeviceId: receiver.deviceId,
            signal: CallSignal.HANGUP,
          }),
        );
      return;
    }
    if (ev.signal === CallSignal.LEAVE) {
      if (!this.calls.leave(call, from.deviceId)) return;
      await this.announce(call, CallSignal.LEAVE, from);
      if (call.participants.size === 0) await this.end(call);
      return;
    }
    const joined = this.calls.join(call, from.userId, from.deviceId);
    if (joined === "full") {
      this.deps.refused("group_call_full", "group call join refused: the call has its participants", {
        callId: call.callId,
        deviceId: from.deviceId,
      });
      await this.sendTo([from], () =>
        this.event({ callId: call.callId, conversationId: call.conversationId, signal: CallSignal.FULL }),
      );
      return;
    }
    const others = [...call.participants.values()].filter((p) => p.deviceId !== from.deviceId);
    await this.sendTo([from], () =>
      this.event({
        callId: call.callId,
        conversationId: call.conversationId,
        fromUserId: call.hostUserId,
        fromDeviceId: call.hostDeviceId,
        signal: CallSignal.JOINED,
        participants: others.map(participant),
        sfuUrl: this.deps.sfuUrl ?? "",
        sfuToken:
          this.deps.sfuUrl !== undefined && this.deps.sfuSecret !== undefined
            ? issueSfuToken(
                this.deps.sfuSecret,
                { callId: call.callId, conversationId: call.conversationId, ...from },
                this.deps.now(),
              )
            : "",
      }),
    );
    if (joined === "again") return;
    await this.announce(call, CallSignal.JOIN, from);
    if (call.ringing) await this.answeredElsewhere(call, from);
  }

  /** Tells every device in the call but `from` that it joined or left. */
  private async announce(
    call: GroupCall,
    signal: CallSignal,
    from: Pick<GroupMember, "userId" | "deviceId">,
  ) {
    const to = [...call.participants.values()].filter((p) => p.deviceId !== from.deviceId);
    await this.sendTo(to, () =>
      this.event({
        callId: call.callId,
        conversationId: call.conversationId,
        fromUserId: from.userId,
        fromDeviceId: from.deviceId,
        signal,
      }),
    );
  }

  /** The joiner's other devices stop ringing, and the push to them is withdrawn. */
  private async answeredElsewhere(call: GroupCall, from: Pick<GroupMember, "userId" | "deviceId">) {
    this.withdrawPush(call, [from.userId]);
    await this.send([from.userId], (_userId, deviceId) =>
      call.participants.has(deviceId)
        ? undefined
        : this.event({
            callId: call.callId,
            conversationId: call.conversationId,
            fromDeviceId: from.deviceId,
            signal: CallSignal.ANSWERED_ELSEWHERE,
          }),
    );
  }

  /** Rings every other member's devices: live where they hold a stream, by push where not. */
  private async ring(call: GroupCall): Promise<void> {
    const others = [...(await this.members.list(call.conversationId, true))].filter(
      (u) => u !== call.hostUserId,
    );
    const host = call.participants.get(call.hostDeviceId)!;
    const reached = await this.send(others, () =>
      this.event({
        callId: call.callId,
        conversationId: call.conversationId,
        fromUserId: call.hostUserId,
        fromDeviceId: call.hostDeviceId,
        hostDeviceId: call.hostDeviceId,
        signal: CallSignal.OFFER,
        media: call.media,
        participants: [participant(host)],
        sfuUrl: this.deps.sfuUrl ?? "",
      }),
    );
    if (this.deps.notifyCall === undefined) return;
    try {
      const pushTo = others.slice(0, CALL_LIMITS.groupPushMembers);
      const devices = await this.deps.devicesOf(pushTo);
      await Promise.all(
        [...devices].map(async ([userId, ids]) => {
          const offline = ids.filter((d) => !reached.has(d)).slice(0, 16);
          if (offline.length === 0) return;
          call.pushed.set(userId, offline);
          await this.deps.notifyCall!({
            userId,
            deviceIds: offline,
            callId: call.callId,
            conversationId: call.conversationId,
            ended: false,
          });
        }),
      );
    } catch (err) {
      this.deps.log.warn(
        { err, callId: call.callId },
        "could not ring group members' devices without a stream",
      );
    }
  }

  /** The ring time is over (or the call ended): member devices not in the call stop ringing. */
  private async stopRinging(call: GroupCall): Promise<void> {
    if (!call.ringing) return;
    call.ringing = false;
    this.withdrawPush(call, [...call.pushed.keys()]);
    try {
      const members = [...(await this.members.list(call.conversationId))];
      await this.send(members, (_userId, deviceId) =>
        call.participants.has(deviceId) || deviceId === call.hostDeviceId
          ? undefined
          : this.event({
              callId: call.callId,
              conversationId: call.conversationId,
              fromUserId: call.hostUserId,
              fromDeviceId: call.hostDeviceId,
              signal: CallSignal.HANGUP,
            }),
      );
    } catch (err) {
      this.deps.log.warn({ err, callId: call.callId }, "could not stop a group call ringing");
    }
  }

  /** The last device left (or the call outlived its bound): forgotten, rings stopped, logged. */
  private async end(call: GroupCall, endReason = CallEndReason.UNSPECIFIED): Promise<void> {
    this.calls.close(call);
    const endedAt = this.deps.now();
    // Devices still in (the call outlived its bound) are told it is over.
    const still = [...call.participants.values()];
    for (const p of still) this.calls.leave(call, p.deviceId);
    await this.sendTo(still, () =>
      this.event({
        callId: call.callId,
        conversationId: call.conversationId,
        fromUserId: call.hostUserId,
        fromDeviceId: call.hostDeviceId,
        signal: CallSignal.HANGUP,
        endReason,
      }),
    ).catch((err: unknown) => this.deps.log.warn({ err, callId: call.callId }, "could not end a group call"));
    await this.stopRinging(call);
    await appendGroupCallLog(this.deps.sequencer, this.deps.log, call, endedAt);
  }

  private withdrawPush(call: GroupCall, userIds: string[]): void {
    if (this.deps.notifyCall === undefined) return;
    for (const userId of userIds) {
      const deviceIds = call.pushed.get(userId);
      if (deviceIds === undefined) continue;
      call.pushed.delete(userId);
      this.deps
        .notifyCall({
          userId,
          deviceIds,
          callId: call.callId,
          conversationId: call.conversationId,
          ended: true,
        })
        .catch((err: unknown) =>
          this.deps.log.warn({ err, callId: call.callId }, "could not withdraw a group call's push"),
        );
    }
  }

  private event(init: Parameters<typeof create<typeof CallEventFrameSchema>>[1]): CallEventFrame {
    return create(CallEventFrameSchema, { ...init, serverTimeMs: BigInt(this.deps.now()) });
  }

  /** Delivers to the listed devices (where they hold a stream). */
  private sendTo(
    devices: Pick<GroupMember, "userId" | "deviceId">[],
    eventFor: () => CallEventFrame,
  ): Promise<Set<string>> {
    const ids = new Set(devices.map((d) => d.deviceId));
    return this.send([...new Set(devices.map((d) => d.userId))], (_u, deviceId) =>
      ids.has(deviceId) ? eventFor() : undefined,
    );
  }

  /** Delivers to each online device of the users that eventFor gives an event for (delivery.ts). */
  private send(
    userIds: string[],
    eventFor: (userId: string, deviceId: string) => CallEventFrame | undefined,
  ): Promise<Set<string>> {
    return deliverCall(this.deps, userIds, eventFor);
  }
}
