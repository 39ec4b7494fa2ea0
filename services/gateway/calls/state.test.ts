import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { CallMedia } from "../../../gen/switchboard/v1/calls_pb.js";
import { CALL_LIMITS } from "./limits.js";
import { type CallerCall, CallerCalls } from "./state.js";

const call = (callId: string, callerDeviceId = "dv_caller") => ({
  callId,
  callerUserId: "u_caller",
  callerDeviceId,
  peerUserId: "u_callee",
  media: CallMedia.AUDIO,
});

/** Resolves with the first call that rings out. */
function rangOutOnce(): { calls: CallerCall[]; next: Promise<CallerCall>; hear: (c: CallerCall) => void } {
  const calls: CallerCall[] = [];
  let resolve: (c: CallerCall) => void = () => {};
  const next = new Promise<CallerCall>((r) => {
    resolve = r;
  });
  return {
    calls,
    next,
    hear: (c) => {
      calls.push(c);
      resolve(c);
    },
  };
}

describe("the calls a caller's gateway remembers", () => {
  it("a call nobody takes rings out once and is forgotten; an answered or hung-up one never does", async () => {
    const heard = rangOutOnce();
    // The ringing timers are unref'd (they never hold a gateway open): this keeps the test alive.
    const alive = setInterval(() => {}, 1000);
    const calls = new CallerCalls(Date.now, heard.hear, 30);
    calls.open(call("unanswered"));
    calls.open(call("answered"));
    calls.open(call("hung-up"));
    calls.accept("dv_caller", "answered", "dv_callee");
    assert.equal(calls.close("dv_caller", "hung-up")?.callId, "hung-up");
    const rang = await heard.next;
    assert.equal(rang.callId, "unanswered");
    assert.equal(calls.get("dv_caller", "unanswered"), undefined);
    assert.equal(calls.get("dv_caller", "answered")?.acceptedBy, "dv_callee");
    // The answered call's timer was cleared with the accept: nothing else rings out.
    await new Promise((r) => setTimeout(r, 60));
    assert.deepEqual(
      heard.calls.map((c) => c.callId),
      ["unanswered"],
    );
    calls.clear();
    clearInterval(alive);
  });

  it("bounds the calls of one device, and an offer again for a ringing call is the same call", () => {
    const calls = new CallerCalls(Date.now, () => {});
    for (let i = 0; i < CALL_LIMITS.callsPerDevice; i++) calls.open(call(`c${i}`));
    calls.open(call("c0"));
    assert.throws(
      () => calls.open(call("one-too-many")),
      /calls: at most 4 ringing or going at once per device; hang one up first/,
    );
    // Another device has its own bound.
    calls.open(call("elsewhere", "dv_other"));
    calls.close("dv_caller", "c1");
    calls.open(call("one-more"));
    calls.clear();
  });
});
