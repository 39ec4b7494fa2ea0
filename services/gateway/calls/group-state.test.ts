import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { CallMedia } from "../../../gen/switchboard/v1/calls_pb.js";
import { GroupCalls } from "./group-state.js";
import { CALL_LIMITS } from "./limits.js";

const init = (callId: string, hostDeviceId = "dv_host") => ({
  callId,
  conversationId: "g_group",
  hostUserId: "u_host",
  hostDeviceId,
  media: CallMedia.AUDIO,
});

describe("group calls kept by the host's gateway", () => {
  it("lets in up to the cap, says FULL past it, and keeps who joined and left and the peak", () => {
    let now = 1_000;
    const calls = new GroupCalls(
      () => now,
      () => {},
      () => {},
    );
    const call = calls.open(init("c1"));
    assert.equal(call.participants.size, 1, "the host is in");
    for (let i = 1; i < CALL_LIMITS.groupParticipants; i++) {
      now += 10;
      assert.equal(calls.join(call, `u_${i}`, `dv_${i}`), "admitted");
    }
    assert.equal(call.participants.size, CALL_LIMITS.groupParticipants);
    assert.equal(calls.join(call, "u_late", "dv_late"), "full");
    assert.equal(calls.join(call, "u_1", "dv_1"), "again", "already in: not counted twice");
    assert.equal(call.answeredDeviceId, "dv_1");
    assert.equal(call.answeredAt, 1_010);

    now = 5_000;
    assert.equal(calls.leave(call, "dv_1"), true);
    assert.equal(calls.leave(call, "dv_1"), false, "left already");
    assert.equal(calls.join(call, "u_late", "dv_late"), "admitted", "a place came free");
    assert.equal(call.history.get("dv_1")!.leftAt, 5_000);
    now = 6_000;
    assert.equal(calls.join(call, "u_1", "dv_1"), "full");
    assert.equal(call.peak, CALL_LIMITS.groupParticipants);
    assert.equal(call.history.size, CALL_LIMITS.groupParticipants + 1, "every device that joined");
    calls.clear();
  });

  it("bounds the calls a device hosts and forgets a closed call", () => {
    const calls = new GroupCalls(
      () => 0,
      () => {},
      () => {},
    );
    const open = [];
    for (let i = 0; i < CALL_LIMITS.callsPerDevice; i++) open.push(calls.open(init(`c${i}`)));
    assert.throws(() => calls.open(init("one-more")), /at most 4 group calls hosted/);
    calls.open(init("elsewhere", "dv_other"));
    calls.close(open[0]!);
    assert.equal(calls.get("dv_host", "c0"), undefined);
    calls.open(init("one-more"));
    assert.ok(calls.get("dv_host", "one-more"));
    calls.clear();
  });

  it("lists at most groupLogParticipants devices in the history, and the peak still counts", () => {
    const calls = new GroupCalls(
      () => 0,
      () => {},
      () => {},
    );
    const call = calls.open(init("churn"));
    for (let i = 0; i < CALL_LIMITS.groupLogParticipants + 10; i++) {
      assert.equal(calls.join(call, `u_${i}`, `dv_${i}`), "admitted");
      calls.leave(call, `dv_${i}`);
    }
    assert.equal(call.history.size, CALL_LIMITS.groupLogParticipants);
    assert.equal(call.peak, 2);
    calls.clear();
  });
});
