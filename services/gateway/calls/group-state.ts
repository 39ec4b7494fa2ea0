/**
 * The group calls hosted on this gateway (docs/calls.md, "Group calls"): a group call's host is
 * the device that started it, and the gateway holding that device's stream keeps who is in the
 * call, lets at most CALL_LIMITS.groupParticipants in, and writes the call's log entry when the
 * last one leaves. Bounded per host device and in all; forgotten when the call ends or outlives
 * CALL_LIMITS.answeredMs.
 */
import type { CallMedia } from "../../../gen/switchboard/v1/calls_pb.js";
import { LimitError } from "../../common/errors.js";
import { CALL_LIMITS } from "./limits.js";

/** A device in a group call, or one that was (left is 0 while it is in). */
export interface GroupMember {
  userId: string;
  deviceId: string;
  joinedAt: number;
  leftAt: number;
}

/** One group call as its host's gateway keeps it. */
export interface GroupCall {
  callId: string;
  conversationId: string;
  /** The device keeping the call now (its gateway decides): the starter, or one handed the call. */
  hostUserId: string;
  hostDeviceId: string;
  /** The device that started the call: the sender of its entries. */
  callerUserId: string;
  callerDeviceId: string;
  media: CallMedia;
  /** When it started, in milliseconds since the Unix epoch. */
  startedAt: number;
  /** The first join by a device other than the host's; 0 until then. */
  answeredAt: number;
  answeredDeviceId: string;
  /** The devices in the call now, by device id. */
  participants: Map<string, GroupMember>;
  /** Every device that joined (first join, last leave), at most CALL_LIMITS.groupLogParticipants. */
  history: Map<string, GroupMember>;
  /** The most devices in at once. */
  peak: number;
  /** Whether members' devices still ring (until CALL_LIMITS.ringMs, or the end). */
  ringing: boolean;
  /** The member devices rung by push, by user, to withdraw it from. */
  pushed: Map<string, string[]>;
}

export class GroupCalls {
  private readonly calls = new Map<string, GroupCall>();
  private readonly perHost = new Map<string, number>();
  private readonly timers = new Map<GroupCall, NodeJS.Timeout[]>();

  /**
   * now is the clock; stopRinging hears of a call whose ring time is over (it goes on),
   * expired of one that outlived CALL_LIMITS.answeredMs (it is ended as if everyone left).
   */
  constructor(
    private readonly now: () => number,
    private readonly stopRinging: (call: GroupCall) => void,
    private readonly expired: (call: GroupCall) => void,
  ) {}

  /** Starts a call with its host device in it. LIMIT past the bounds. */
  open(
    init: Pick<GroupCall, "callId" | "conversationId" | "hostUserId" | "hostDeviceId" | "media">,
  ): GroupCall {
    const hosted = this.perHost.get(init.hostDeviceId) ?? 0;
    if (hosted >= CALL_LIMITS.callsPerDevice)
      throw new LimitError(
        `calls: at most ${CALL_LIMITS.callsPerDevice} group calls hosted at once per device; leave one first`,
      );
    if (this.calls.size >= CALL_LIMITS.remembered)
      throw new LimitError("calls: this gateway is at its limit of calls; retry in a minute", {
        retryAfterMs: 60_000,
      });
    const now = this.now();
    const host: GroupMember = {
      userId: init.hostUserId,
      deviceId: init.hostDeviceId,
      joinedAt: now,
      leftAt: 0,
    };
    const call: GroupCall = {
      ...init,
      callerUserId: init.hostUserId,
      callerDeviceId: init.hostDeviceId,
      startedAt: now,
      answeredAt: 0,
      answeredDeviceId: "",
      participants: new Map([[host.deviceId, host]]),
      history: new Map([[host.deviceId, { ...host }]]),
      peak: 1,
      ringing: true,
      pushed: new Map(),
    };
    this.keep(call);
    return call;
  }

  /**
   * Keeps a call handed here (its host device moved, or the call was handed to a device here):
   * its ring time and bound run on from its start. LIMIT past the gateway's bound.
   */
  adopt(call: GroupCall): void {
    const known = this.get(call.hostDeviceId, call.callId);
    if (known !== undefined) this.close(known);
    if (this.calls.size >= CALL_LIMITS.remembered)
      throw new LimitError("calls: no room for a group call handed to this gateway");
    this.keep(call);
  }

  /** The calls the device hosts here. */
  hostedBy(deviceId: string): GroupCall[] {
    return [...this.calls.values()].filter((c) => c.hostDeviceId === deviceId);
  }

  private keep(call: GroupCall): void {
    this.calls.set(key(call.hostDeviceId, call.callId), call);
    this.perHost.set(call.hostDeviceId, (this.perHost.get(call.hostDeviceId) ?? 0) + 1);
    const left = (ms: number) => Math.max(0, call.startedAt + ms - this.now());
    const ring = setTimeout(() => {
      if (this.calls.get(key(call.hostDeviceId, call.callId)) === call && call.ringing)
        this.stopRinging(call);
    }, left(CALL_LIMITS.ringMs));
    const expire = setTimeout(() => {
      if (this.calls.get(key(call.hostDeviceId, call.callId)) === call) this.expired(call);
    }, left(CALL_LIMITS.answeredMs));
    ring.unref();
    expire.unref();
    this.timers.set(call, [ring, expire]);
  }

  /** The call hosted by this device, if this gateway keeps it. */
  get(hostDeviceId: string, callId: string): GroupCall | undefined {
    return this.calls.get(key(hostDeviceId, callId));
  }

  /**
   * Lets a device in: "full" when the call has its participants, "again" when it was in already,
   * "admitted" otherwise.
   */
  join(call: GroupCall, userId: string, deviceId: string): "admitted" | "again" | "full" {
    if (call.participants.has(deviceId)) return "again";
    if (call.participants.size >= CALL_LIMITS.groupParticipants) return "full";
    const now = this.now();
    const member: GroupMember = { userId, deviceId, joinedAt: now, leftAt: 0 };
    call.participants.set(deviceId, member);
    const seen = call.history.get(deviceId);
    if (seen !== undefined) seen.leftAt = 0;
    else if (call.history.size < CALL_LIMITS.groupLogParticipants) call.history.set(deviceId, { ...member });
    call.peak = Math.max(call.peak, call.participants.size);
    if (call.answeredAt === 0 && deviceId !== call.hostDeviceId) {
      call.answeredAt = now;
      call.answeredDeviceId = deviceId;
    }
    return "admitted";
  }

  /** Lets a device out (at: when it left, now unless said); false if it was not in. */
  leave(call: GroupCall, deviceId: string, at = this.now()): boolean {
    if (!call.participants.delete(deviceId)) return false;
    const seen = call.history.get(deviceId);
    if (seen !== undefined) seen.leftAt = at;
    return true;
  }

  /** Every call kept here. */
  all(): GroupCall[] {
    return [...this.calls.values()];
  }

  /** Forgets a call (it ended). */
  close(call: GroupCall): void {
    const k = key(call.hostDeviceId, call.callId);
    if (this.calls.get(k) !== call) return;
    this.calls.delete(k);
    const hosted = (this.perHost.get(call.hostDeviceId) ?? 1) - 1;
    if (hosted <= 0) this.perHost.delete(call.hostDeviceId);
    else this.perHost.set(call.hostDeviceId, hosted);
    for (const t of this.timers.get(call) ?? []) clearTimeout(t);
    this.timers.delete(call);
  }

  /** Forgets every call and its timers (the gateway is stopping). */
  clear(): void {
    for (const list of this.timers.values()) for (const t of list) clearTimeout(t);
    this.timers.clear();
    this.calls.clear();
    this.perHost.clear();
  }
}

function key(hostDeviceId: string, callId: string): string {
  return `${hostDeviceId}\n${callId}`;
}
