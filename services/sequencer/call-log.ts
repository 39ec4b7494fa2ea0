/**
 * Call log entries (Entry.call, docs/calls.md): appended by the gateway that held the caller's
 * stream when the call ended, never sent by a device (OutgoingEntry has no such body), so the
 * record every device shows is the server's account of the signalling it relayed.
 */
import type { AppendItem } from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import { type CallLogBody, CallMedia, CallOutcome } from "../../gen/switchboard/v1/calls_pb.js";
import type { OutgoingEntry } from "../../gen/switchboard/v1/entry_pb.js";
import { InvalidInputError } from "../common/errors.js";
import { directConversationId } from "../common/ids.js";

/** The call log body of an append item, checked against its entry and sender; INVALID_ARGUMENT otherwise. */
export function checkCallLog(item: AppendItem, outgoing: OutgoingEntry): CallLogBody {
  const log = item.callLog;
  if (log === undefined) throw new InvalidInputError("call_log: required");
  if (outgoing.body.case !== undefined)
    throw new InvalidInputError("call_log: the entry carries no body of its own");
  if (log.callerUserId !== item.senderUserId)
    throw new InvalidInputError("call_log: the caller is the sender");
  if (log.calleeUserId === "" || log.calleeUserId === log.callerUserId)
    throw new InvalidInputError("call_log: a callee other than the caller is required");
  if (outgoing.conversationId !== directConversationId(log.callerUserId, log.calleeUserId))
    throw new InvalidInputError(
      "call_log: the conversation is the caller's and callee's direct conversation",
    );
  if (CallOutcome[log.outcome] === undefined || log.outcome === CallOutcome.UNSPECIFIED)
    throw new InvalidInputError("call_log: an outcome is required");
  if (log.media !== CallMedia.AUDIO && log.media !== CallMedia.VIDEO)
    throw new InvalidInputError("call_log: media is AUDIO or VIDEO");
  if (log.callId.length === 0 || log.callId.length > 64)
    throw new InvalidInputError("call_log: call_id is 1 to 64 characters");
  return log;
}
