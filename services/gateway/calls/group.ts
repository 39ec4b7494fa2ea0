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
  CallParticipantSchema,
  CallSignal,
} from "../../../gen/switchboard/v1/calls_pb.js";
import { InvalidInputError, NotFoundError, PermissionError } from "../../common/errors.js";
import { requireId } from "../../common/validate.js";
import { inBand } from "../session/frames.js";
import { type GroupCall, GroupCalls, type GroupMember } from "./group-state.js";
import { CALL_LIMITS } from "./limits.js";
import { appendGroupCallLog } from "./log.js";
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
/** Users per route lookup (PresenceService.LookupRoutes takes at most 1,024). */
const LOOKUP_CHUNK = 1_024;

export class GroupCallRelay {
  private readonly calls: GroupCalls;
  private readonly members = new Map<string, { users: Set<string>; until: number }>();
  /** Member ids in `members`, all lists together (bounded by CALL_LIMITS.groupMemberIds). */
  private memberIds = 0;
  /** Events already taken: one delivery reaches every session of the host device. */
  private readonly taken = new WeakSet<CallEventFrame>();

  private readonly sweeper: NodeJS.Timeout;
  private sweeping = false;

  constructor(private readonly deps: GroupCallDeps) {
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
      const routed = new Set<string>();
      for (let i = 0; i < users.length; i += LOOKUP_CHUNK) {
        const { routes } = await this.deps.presence.lookupRoutes({
          userIds: users.slice(i, i + LOOKUP_CHUNK),
        });
        for (const r of routes) routed.add(r.deviceId);
      }
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
    await this.requireMember(f.conversationId, stream.userId);
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
    await this.requireMember(f.conversationId, f.peerUserId);
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

  private async host(receiver: CallReceiver, ev: CallEventFrame): Promise<void> {
    const call = this.calls.get(receiver.deviceId, ev.callId);
    const from = { userId: ev.fromUserId, deviceId: ev.fromDeviceId };
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
    const others = [...(await this.memberList(call.conversationId, true))].filter(
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
      const members = [...(await this.memberList(call.conversationId))];
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
  private async end(call: GroupCall): Promise<void> {
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

  /**
   * Delivers an event to each online device of the users that eventFor gives one for, through
   * the gateways holding their streams. Returns the devices it was handed to.
   */
  private async send(
    userIds: string[],
    eventFor: (userId: string, deviceId: string) => CallEventFrame | undefined,
  ): Promise<Set<string>> {
    const devices = new Set<string>();
    for (let i = 0; i < userIds.length; i += LOOKUP_CHUNK) {
      const chunk = userIds.slice(i, i + LOOKUP_CHUNK);
      const wanted = new Set(chunk);
      const { routes } = await this.deps.presence.lookupRoutes({ userIds: chunk });
      const byGateway = new Map<string, Delivery[]>();
      for (const r of routes) {
        if (!wanted.has(r.userId) || devices.has(r.deviceId)) continue;
        const ev = eventFor(r.userId, r.deviceId);
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
    }
    return devices;
  }

  /** PERMISSION_DENIED unless userId is a member of the group (asked again once if not, when cached). */
  private async requireMember(conversationId: string, userId: string): Promise<void> {
    if ((await this.memberList(conversationId)).has(userId)) return;
    if ((await this.memberList(conversationId, true)).has(userId)) return;
    throw new PermissionError(`calls in group ${conversationId} are between its members`);
  }

  /** The group's members, from the sequencer, trusted for CALL_LIMITS.pairCheckMs. */
  private async memberList(conversationId: string, fresh = false): Promise<Set<string>> {
    const now = this.deps.now();
    const known = this.members.get(conversationId);
    if (!fresh && known !== undefined && known.until > now) return known.users;
    let users = new Set<string>();
    try {
      users = new Set((await this.deps.sequencer.getMembers({ conversationId })).userIds);
    } catch (err) {
      // No such group: nobody is a member.
      if (inBand(err).code !== Code.NotFound) throw err;
    }
    this.memberIds -= this.members.get(conversationId)?.users.size ?? 0;
    this.members.delete(conversationId);
    this.members.set(conversationId, { users, until: now + CALL_LIMITS.pairCheckMs });
    this.memberIds += users.size;
    // Oldest first, until within both bounds (the newest list always stays).
    for (const [k, v] of this.members) {
      if (this.members.size <= CALL_LIMITS.groupMemberLists && this.memberIds <= CALL_LIMITS.groupMemberIds)
        break;
      if (k === conversationId) break;
      this.members.delete(k);
      this.memberIds -= v.users.size;
    }
    return users;
  }
}

function participant(p: GroupMember) {
  return create(CallParticipantSchema, {
    userId: p.userId,
    deviceId: p.deviceId,
    joinedAtMs: BigInt(p.joinedAt),
    leftAtMs: BigInt(p.leftAt),
  });
}
