import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { CallHandoffRole } from "../../../gen/switchboard/internal/v1/events_pb.js";
import { CallMedia } from "../../../gen/switchboard/v1/calls_pb.js";
import { CalleeCalls, DropWatch, HeldFrames, RingWatch } from "./drops.js";
import { GroupCalls } from "./group-state.js";
import { callerFromHandoff, callerHandoff, groupFromHandoff, groupHandoff } from "./handoff.js";
import { CALL_LIMITS } from "./limits.js";
import { type CallerCall, CallerCalls } from "./state.js";

/** Runs fn with the event loop held open (the call timers are unref'd). */
async function alive<T>(fn: () => Promise<T>): Promise<T> {
  const keep = setInterval(() => {}, 1000);
  try {
    return await fn();
  } finally {
    clearInterval(keep);
  }
}

describe("devices that drop off mid-call", () => {
  it("a device's grace ends once, with the time its stream closed, however often it is closed meanwhile", async () => {
    const gone: [string, string, number][] = [];
    let clock = 1_000;
    await alive(async () => {
      const watch = new DropWatch(
        () => clock,
        (u, d, at) => gone.push([u, d, at]),
        20,
      );
      watch.closed("u_a", "dv_a");
      clock = 1_005;
      watch.closed("u_a", "dv_a");
      await new Promise((r) => setTimeout(r, 60));
      watch.stop();
    });
    assert.deepEqual(gone, [["u_a", "dv_a", 1_000]]);
  });

  it("the callee's answered calls are bounded per device, forgotten when they end, taken once", () => {
    const callees = new CalleeCalls(() => 10);
    for (let i = 0; i < CALL_LIMITS.callsPerDevice + 2; i++)
      callees.add("dv_b", { callId: `c${i}`, callerUserId: "u_a", acceptedAt: 10 });
    assert.equal(callees.take("dv_b").length, CALL_LIMITS.callsPerDevice);
    assert.equal(callees.has("dv_b"), false);
    callees.add("dv_b", { callId: "x", callerUserId: "u_a", acceptedAt: 10 });
    assert.equal(callees.hasCall("dv_b", "x"), true);
    callees.remove("dv_b", "x");
    assert.deepEqual(callees.take("dv_b"), []);
  });

  it("a ring nobody ends is ended by the callee's gateway; one that is ended is not", async () => {
    const ended: string[] = [];
    await alive(async () => {
      const rings = new RingWatch<{ deviceId: string }>(
        (r, callId) => ended.push(`${r.deviceId}:${callId}`),
        20,
      );
      rings.ringing({ deviceId: "dv_b" }, "ignored", "u_a", "dv_a");
      rings.ringing({ deviceId: "dv_b" }, "taken", "u_a", "dv_a");
      assert.equal(rings.over("dv_b", "taken"), true);
      await new Promise((r) => setTimeout(r, 60));
      rings.stop();
    });
    assert.deepEqual(ended, ["dv_b:ignored"]);
  });

  it("joins for a call on its way are held only while the host's stream is young, and released once", () => {
    let now = 100_000;
    const answered: string[] = [];
    const held = new HeldFrames<{ deviceId: string; openedAtMs: number }, { callId: string }>(
      () => now,
      (_r, ev) => answered.push(ev.callId),
    );
    assert.equal(held.hold({ deviceId: "dv_h", openedAtMs: now - 1_000 }, { callId: "c1" }), true);
    assert.equal(held.hold({ deviceId: "dv_h", openedAtMs: now - 1_000 }, { callId: "c1" }), true);
    now += CALL_LIMITS.dropGraceMs + CALL_LIMITS.handoffWaitMs;
    assert.equal(held.hold({ deviceId: "dv_h", openedAtMs: now - 1_000_000 }, { callId: "c2" }), false);
    held.release("dv_h", "c1");
    held.release("dv_h", "c1");
    assert.deepEqual(answered, ["c1", "c1"]);
    held.clear();
  });
});

describe("calls handed from one gateway to another", () => {
  it("a ringing 1:1 call keeps its start and rings out from the offer on the gateway it is handed to", async () => {
    const start = Date.now();
    const original: CallerCall = {
      callId: "c1",
      callerUserId: "u_a",
      callerDeviceId: "dv_a",
      peerUserId: "u_b",
      media: CallMedia.VIDEO,
      startedAt: start - 10,
      answeredAt: 0,
      acceptedBy: undefined,
      expiresAt: start + CALL_LIMITS.ringMs,
      pushed: ["dv_b2"],
    };
    const h = callerHandoff(original);
    assert.equal(h.role, CallHandoffRole.CALLER);
    const back = callerFromHandoff(h);
    assert.equal(back.startedAt, original.startedAt);
    assert.deepEqual(back.pushed, ["dv_b2"]);
    assert.equal(back.acceptedBy, undefined);
    const rang = await alive(
      () =>
        new Promise<CallerCall>((resolve) => {
          const calls = new CallerCalls(Date.now, resolve, 40);
          calls.adopt(back);
          assert.equal(calls.ofDevice("dv_a").length, 1);
        }),
    );
    assert.equal(rang.callId, "c1");
  });

  it("an answered 1:1 call comes over answered (no ring out)", () => {
    const h = callerHandoff({
      callId: "c2",
      callerUserId: "u_a",
      callerDeviceId: "dv_a",
      peerUserId: "u_b",
      media: CallMedia.AUDIO,
      startedAt: Date.now() - 10,
      answeredAt: Date.now() - 5,
      acceptedBy: "dv_b",
      expiresAt: 0,
      pushed: [],
    });
    const back = callerFromHandoff(h);
    assert.equal(back.acceptedBy, "dv_b");
    assert.ok(back.expiresAt > Date.now(), "remembered as answered, for hours");
    const calls = new CallerCalls(Date.now, () => assert.fail("an answered call does not ring out"));
    calls.adopt(back);
    assert.equal(calls.get("dv_a", "c2")?.acceptedBy, "dv_b");
    calls.clear();
  });

  it("a group call handed to a new host keeps who is in, the history, the peak and the starter", () => {
    const here = new GroupCalls(
      Date.now,
      () => {},
      () => {},
    );
    const call = here.open({
      callId: "g1",
      conversationId: "g_x",
      hostUserId: "u_h",
      hostDeviceId: "dv_h",
      media: CallMedia.AUDIO,
    });
    here.join(call, "u_p", "dv_p");
    here.join(call, "u_q", "dv_q");
    here.leave(call, "dv_h", 5);
    const h = groupHandoff(call, { userId: "u_p", deviceId: "dv_p" });
    assert.equal(h.hostChanged, true);
    here.close(call);
    const there = new GroupCalls(
      Date.now,
      () => {},
      () => {},
    );
    const moved = groupFromHandoff(h);
    there.adopt(moved);
    assert.equal(there.get("dv_p", "g1"), moved);
    assert.deepEqual(there.hostedBy("dv_p"), [moved]);
    assert.deepEqual([...moved.participants.keys()], ["dv_p", "dv_q"]);
    assert.equal(moved.history.get("dv_h")?.leftAt, 5);
    assert.equal(moved.peak, 3);
    assert.equal(moved.callerDeviceId, "dv_h");
    assert.equal(moved.answeredDeviceId, "dv_p");
    assert.equal(moved.startedAt, call.startedAt);
    here.clear();
    there.clear();
  });
});
