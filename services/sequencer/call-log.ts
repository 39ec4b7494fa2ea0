/**
 * Call log entries (Entry.call, docs/calls.md): appended by the gateway that held the caller's
 * stream (a group call's host device's) when the call ended, never sent by a device (OutgoingEntry has no such body), so the
 * record every device shows is the server's account of the signalling it relayed.
 */
import type { AppendItem } from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import { type CallLogBody, CallMedia, CallOutcome } from "../../gen/switchboard/v1/calls_pb.js";
import type { OutgoingEntry } from "../../gen/switchboard/v1/entry_pb.js";
import { InvalidInputError } from "../common/errors.js";
import { directConversationId } from "../common/ids.js";
import { requireId } from "../common/validate.js";

/** The call log body of an append item, checked against its entry and sender; INVALID_ARGUMENT otherwise. */
export function checkCallLog(item: AppendItem, outgoing: OutgoingEntry): CallLogBody {
  const log = item.callLog;
  if (log === undefined) throw new InvalidInputError("call_log: required");
  if (outgoing.body.case !== undefined)
    throw new InvalidInputError("call_log: the entry carries no body of its own");
  if (log.callerUserId !== item.senderUserId)
    throw new InvalidInputError("call_log: the caller is the sender");
  if (log.group) checkGroup(log, outgoing);
  else if (log.outcome === CallOutcome.ONGOING)
    throw new InvalidInputError("call_log: ONGOING is for group calls");
  else {
    if (log.calleeUserId === "" || log.calleeUserId === log.callerUserId)
      throw new InvalidInputError("call_log: a callee other than the caller is required");
    if (outgoing.conversationId !== directConversationId(log.callerUserId, log.calleeUserId))
      throw new InvalidInputError(
        "call_log: the conversation is the caller's and callee's direct conversation",
      );
    if (log.participants.length > 0 || log.peakParticipants !== 0)
      throw new InvalidInputError("call_log: participants are for group calls");
  }
  if (CallOutcome[log.outcome] === undefined || log.outcome === CallOutcome.UNSPECIFIED)
    throw new InvalidInputError("call_log: an outcome is required");
  if (log.media !== CallMedia.AUDIO && log.media !== CallMedia.VIDEO)
    throw new InvalidInputError("call_log: media is AUDIO or VIDEO");
  if (log.callId.length === 0 || log.callId.length > 64)
    throw new InvalidInputError("call_log: call_id is 1 to 64 characters");
  return log;
}

/** Participants a group call's entry lists at most (the gateway's CALL_LIMITS.groupLogParticipants). */
const GROUP_LOG_PARTICIPANTS = 128;

/** A group call's entry: in a group, no callee, a bounded list of well-formed participants. */
function checkGroup(log: CallLogBody, outgoing: OutgoingEntry): void {
  if (!outgoing.conversationId.startsWith("g_"))
    throw new InvalidInputError("call_log: a group call's entry is in a group conversation");
  if (log.calleeUserId !== "") throw new InvalidInputError("call_log: a group call has no callee");
  if (log.participants.length === 0 || log.participants.length > GROUP_LOG_PARTICIPANTS)
    throw new InvalidInputError(`call_log: 1 to ${GROUP_LOG_PARTICIPANTS} participants`);
  for (const p of log.participants) {
    requireId("call_log.participants.user_id", p.userId, "u");
    requireId("call_log.participants.device_id", p.deviceId, "dv");
  }
  if (log.peakParticipants === 0 || log.peakParticipants > log.participants.length)
    throw new InvalidInputError("call_log: peak_participants is 1 to the number of participants");
}
