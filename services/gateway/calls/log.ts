/**
 * A call's entry in the direct conversation's log (Entry.call, docs/calls.md), appended by the
 * gateway that held the caller's stream, as the caller's device.
 */
import { createHash } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { type Client, Code, ConnectError } from "@connectrpc/connect";
import {
  type AppendItem,
  AppendItemSchema,
  type SequencerService,
} from "../../../gen/switchboard/internal/v1/sequencer_pb.js";
import { CallOutcome } from "../../../gen/switchboard/v1/calls_pb.js";
import { directConversationId } from "../../common/ids.js";
import type { Logger } from "../../common/log.js";
import type { GroupCall } from "./group-state.js";
import type { CallerCall } from "./state.js";

/** Tries at writing a call's log entry while the sequencer is unavailable (250 ms, 500 ms, ... apart). */
const LOG_ATTEMPTS = 4;

/**
 * Appends the call's entry, once (the client_msg_id comes from the call id), retrying while the
 * sequencer is unavailable; a refusal is logged. endedAt is in milliseconds since the Unix epoch.
 */
export async function appendCallLog(
  sequencer: Client<typeof SequencerService>,
  log: Logger,
  call: CallerCall,
  outcome: CallOutcome,
  endedAt: number,
): Promise<void> {
  const answered = outcome === CallOutcome.ANSWERED;
  const item = create(AppendItemSchema, {
    senderUserId: call.callerUserId,
    senderDeviceId: call.callerDeviceId,
    entry: {
      clientMsgId: clientMsgId(call.callId),
      conversationId: directConversationId(call.callerUserId, call.peerUserId),
    },
    callLog: {
      callId: call.callId,
      callerUserId: call.callerUserId,
      calleeUserId: call.peerUserId,
      media: call.media,
      outcome,
      startedAtMs: BigInt(call.startedAt),
      answeredAtMs: BigInt(answered ? call.answeredAt : 0),
      endedAtMs: BigInt(endedAt),
      durationMs: BigInt(answered ? Math.max(0, endedAt - call.answeredAt) : 0),
      answeredDeviceId: answered ? (call.acceptedBy ?? "") : "",
    },
  });
  await appendOnce(sequencer, log, call.callId, item);
}

/**
 * Appends a group call's entry (in the group, as the device that started it, even when another
 * hosts it now): who joined and left, when, the most at once; ANSWERED if a device other than
 * the host's joined, MISSED otherwise. Without endedAt, the entry that says the call is going
 * (ONGOING), so members who were not rung see it and join by its sender: with `rehosted`, the
 * one a new host's gateway appends after a handoff, sent as the new host (its caller).
 */
export async function appendGroupCallLog(
  sequencer: Client<typeof SequencerService>,
  log: Logger,
  call: GroupCall,
  endedAt: number | undefined,
  rehosted = false,
): Promise<void> {
  const answered = call.answeredAt > 0 && endedAt !== undefined;
  const sender = rehosted
    ? { userId: call.hostUserId, deviceId: call.hostDeviceId }
    : { userId: call.callerUserId, deviceId: call.callerDeviceId };
  const started = rehosted ? `started\n${call.callId}\n${call.hostDeviceId}` : `started\n${call.callId}`;
  const outcome =
    endedAt === undefined ? CallOutcome.ONGOING : answered ? CallOutcome.ANSWERED : CallOutcome.MISSED;
  const item = create(AppendItemSchema, {
    senderUserId: sender.userId,
    senderDeviceId: sender.deviceId,
    entry: {
      clientMsgId: clientMsgId(endedAt === undefined ? started : call.callId),
      conversationId: call.conversationId,
    },
    callLog: {
      callId: call.callId,
      callerUserId: sender.userId,
      media: call.media,
      outcome,
      startedAtMs: BigInt(call.startedAt),
      answeredAtMs: BigInt(answered ? call.answeredAt : 0),
      endedAtMs: BigInt(endedAt ?? 0),
      durationMs: BigInt(answered ? Math.max(0, endedAt - call.answeredAt) : 0),
      answeredDeviceId: answered ? call.answeredDeviceId : "",
      group: true,
      participants: [...call.history.values()].map((p) => ({
        userId: p.userId,
        deviceId: p.deviceId,
        joinedAtMs: BigInt(p.joinedAt),
        leftAtMs: BigInt(p.leftAt),
      })),
      peakParticipants: call.peak,
    },
  });
  await appendOnce(sequencer, log, call.callId, item);
}

/** The entry's client_msg_id: from the call id, so a retry never logs a call twice. */
function clientMsgId(callId: string): string {
  return `call-${createHash("sha256").update(callId).digest("base64url").slice(0, 32)}`;
}

/** Appends, retrying while the sequencer is unavailable; a refusal is logged. */
async function appendOnce(
  sequencer: Client<typeof SequencerService>,
  log: Logger,
  callId: string,
  item: AppendItem,
): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    let code: Code;
    let message: string;
    try {
      const [result] = (await sequencer.append({ items: [item] })).results;
      if (result === undefined || result.errorCode === 0) return;
      code = result.errorCode;
      message = result.errorMessage;
    } catch (err) {
      const e = ConnectError.from(err);
      code = e.code;
      message = e.rawMessage;
    }
    if (code !== Code.Unavailable || attempt >= LOG_ATTEMPTS - 1) {
      log.warn({ callId, code, message }, "could not write a call's log entry");
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 250 * 2 ** attempt));
  }
}
