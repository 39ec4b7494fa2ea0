import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { AppendItemSchema } from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import { type CallLogBodySchema, CallMedia, CallOutcome } from "../../gen/switchboard/v1/calls_pb.js";
import { directConversationId } from "../common/ids.js";
import { checkCallLog } from "./call-log.js";

const HOST = "u_00000000000000000000000001";
const PEER = "u_00000000000000000000000002";
const GROUP = "g_00000000000000000000000001";

function item(conversationId: string, log: MessageInitShape<typeof CallLogBodySchema>) {
  const it = create(AppendItemSchema, {
    senderUserId: HOST,
    senderDeviceId: "dv_00000000000000000000000001",
    entry: { clientMsgId: "call-x", conversationId },
    callLog: log,
  });
  return [it, it.entry!] as const;
}

const group = (over: MessageInitShape<typeof CallLogBodySchema> = {}) =>
  item(GROUP, {
    callId: "c1",
    callerUserId: HOST,
    media: CallMedia.AUDIO,
    outcome: CallOutcome.ANSWERED,
    group: true,
    participants: [
      { userId: HOST, deviceId: "dv_00000000000000000000000001" },
      { userId: PEER, deviceId: "dv_00000000000000000000000002" },
    ],
    peakParticipants: 2,
    ...over,
  });

describe("call log entries the sequencer takes from gateways", () => {
  it("takes a group call's entry, ended or ONGOING", () => {
    assert.equal(checkCallLog(...group()).group, true);
    assert.equal(checkCallLog(...group({ outcome: CallOutcome.ONGOING })).outcome, CallOutcome.ONGOING);
  });

  it("refuses group entries that are not in a group, name a callee, or list participants badly", () => {
    const refused = (args: ReturnType<typeof item>, pattern: RegExp) =>
      assert.throws(() => checkCallLog(...args), pattern);
    refused(
      item(directConversationId(HOST, PEER), {
        callId: "c1",
        callerUserId: HOST,
        media: CallMedia.AUDIO,
        outcome: CallOutcome.ANSWERED,
        group: true,
        participants: [{ userId: HOST, deviceId: "dv_00000000000000000000000001" }],
        peakParticipants: 1,
      }),
      /in a group conversation/,
    );
    refused(group({ calleeUserId: PEER }), /no callee/);
    refused(group({ participants: [] }), /1 to 128 participants/);
    refused(
      group({
        participants: Array.from({ length: 129 }, (_, i) => ({
          userId: HOST,
          deviceId: `dv_${String(i).padStart(26, "0")}`,
        })),
      }),
      /1 to 128 participants/,
    );
    refused(group({ participants: [{ userId: "nobody", deviceId: "dv_x" }] }), /user_id: not a valid id/);
    refused(group({ peakParticipants: 3 }), /peak_participants/);
  });

  it("refuses ONGOING and participants on a 1:1 call's entry", () => {
    const direct = (over: MessageInitShape<typeof CallLogBodySchema>) =>
      item(directConversationId(HOST, PEER), {
        callId: "c1",
        callerUserId: HOST,
        calleeUserId: PEER,
        media: CallMedia.AUDIO,
        outcome: CallOutcome.MISSED,
        ...over,
      });
    assert.equal(checkCallLog(...direct({})).outcome, CallOutcome.MISSED);
    assert.throws(
      () => checkCallLog(...direct({ outcome: CallOutcome.ONGOING })),
      /ONGOING is for group calls/,
    );
    assert.throws(
      () => checkCallLog(...direct({ participants: [{ userId: HOST, deviceId: "dv_1" }] })),
      /participants are for group calls/,
    );
  });
});
