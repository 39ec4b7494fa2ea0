/**
 * A call's state as one gateway hands it to another (Delivery.call_handoff, docs/calls.md,
 * "Devices that drop off"): the gateway holding the device's stream is the one that decides.
 */
import { create } from "@bufbuild/protobuf";
import {
  type CallHandoff,
  CallHandoffRole,
  CallHandoffSchema,
} from "../../../gen/switchboard/internal/v1/events_pb.js";
import { type CallParticipant, CallParticipantSchema } from "../../../gen/switchboard/v1/calls_pb.js";
import { InvalidInputError } from "../../common/errors.js";
import type { CalleeCall } from "./drops.js";
import type { GroupCall, GroupMember } from "./group-state.js";
import { CALL_LIMITS } from "./limits.js";
import type { CallerCall } from "./state.js";

/** A device in a group call as the protocol says it. */
export const participant = (p: GroupMember) =>
  create(CallParticipantSchema, {
    userId: p.userId,
    deviceId: p.deviceId,
    joinedAtMs: BigInt(p.joinedAt),
    leftAtMs: BigInt(p.leftAt),
  });

const fromMember = (p: CallParticipant): GroupMember => ({
  userId: p.userId,
  deviceId: p.deviceId,
  joinedAt: Number(p.joinedAtMs),
  leftAt: Number(p.leftAtMs),
});

/** A 1:1 call its caller's gateway hands to the caller device's new one. */
export function callerHandoff(call: CallerCall): CallHandoff {
  return create(CallHandoffSchema, {
    callId: call.callId,
    role: CallHandoffRole.CALLER,
    callerUserId: call.callerUserId,
    callerDeviceId: call.callerDeviceId,
    peerUserId: call.peerUserId,
    media: call.media,
    startedAtMs: BigInt(call.startedAt),
    answeredAtMs: BigInt(call.answeredAt),
    answeredDeviceId: call.acceptedBy ?? "",
    pushed: call.pushed.map((deviceId) => ({ userId: call.peerUserId, deviceId })),
  });
}

export function callerFromHandoff(h: CallHandoff): CallerCall {
  const startedAt = Number(h.startedAtMs);
  const answeredAt = Number(h.answeredAtMs);
  return {
    callId: h.callId,
    callerUserId: h.callerUserId,
    callerDeviceId: h.callerDeviceId,
    peerUserId: h.peerUserId,
    media: h.media,
    startedAt,
    answeredAt,
    acceptedBy: h.answeredDeviceId === "" ? undefined : h.answeredDeviceId,
    expiresAt:
      h.answeredDeviceId === "" ? startedAt + CALL_LIMITS.ringMs : answeredAt + CALL_LIMITS.answeredMs,
    pushed: h.pushed.slice(0, 16).map((p) => p.deviceId),
  };
}

/** A 1:1 call a callee device took, handed to the callee device's new gateway. */
export function calleeHandoff(c: CalleeCall, userId: string, deviceId: string): CallHandoff {
  return create(CallHandoffSchema, {
    callId: c.callId,
    role: CallHandoffRole.CALLEE,
    callerUserId: c.callerUserId,
    peerUserId: c.callerUserId,
    answeredAtMs: BigInt(c.acceptedAt),
    answeredDeviceId: deviceId,
    hostUserId: userId,
  });
}

/** A group call handed to the gateway of its host device (the same, or a new one). */
export function groupHandoff(call: GroupCall, host: Pick<GroupMember, "userId" | "deviceId">): CallHandoff {
  return create(CallHandoffSchema, {
    callId: call.callId,
    role: CallHandoffRole.HOST,
    callerUserId: call.callerUserId,
    callerDeviceId: call.callerDeviceId,
    media: call.media,
    startedAtMs: BigInt(call.startedAt),
    answeredAtMs: BigInt(call.answeredAt),
    answeredDeviceId: call.answeredDeviceId,
    pushed: [...call.pushed].flatMap(([userId, ids]) => ids.map((deviceId) => ({ userId, deviceId }))),
    conversationId: call.conversationId,
    hostUserId: host.userId,
    hostDeviceId: host.deviceId,
    participants: [...call.participants.values()].map(participant),
    history: [...call.history.values()].map(participant),
    peakParticipants: call.peak,
    ringing: call.ringing,
    hostChanged: host.deviceId !== call.hostDeviceId,
  });
}

/** The group call a handoff carries, bounded as if it had been built here; INVALID_ARGUMENT when it is not one. */
export function groupFromHandoff(h: CallHandoff): GroupCall {
  if (h.conversationId === "" || h.hostDeviceId === "" || h.participants.length === 0)
    throw new InvalidInputError("call_handoff: a group call needs its group, host and participants");
  const pushed = new Map<string, string[]>();
  for (const p of h.pushed.slice(0, CALL_LIMITS.groupPushMembers * 16))
    pushed.set(p.userId, [...(pushed.get(p.userId) ?? []), p.deviceId]);
  return {
    callId: h.callId,
    conversationId: h.conversationId,
    callerUserId: h.callerUserId,
    callerDeviceId: h.callerDeviceId,
    hostUserId: h.hostUserId,
    hostDeviceId: h.hostDeviceId,
    media: h.media,
    startedAt: Number(h.startedAtMs),
    answeredAt: Number(h.answeredAtMs),
    answeredDeviceId: h.answeredDeviceId,
    participants: new Map(
      h.participants.slice(0, CALL_LIMITS.groupParticipants).map((p) => [p.deviceId, fromMember(p)]),
    ),
    history: new Map(
      h.history.slice(0, CALL_LIMITS.groupLogParticipants).map((p) => [p.deviceId, fromMember(p)]),
    ),
    peak: h.peakParticipants,
    ringing: h.ringing,
    pushed,
  };
}
