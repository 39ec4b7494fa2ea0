import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { setImmediate as nextTurn, setTimeout as sleep } from "node:timers/promises";
import { UnavailableError } from "../common/errors.js";
import { eventLoopDelay, SendAdmission } from "./admission.js";

/** An admission on a hand-driven clock, with no jitter; refusals are recorded. */
function admission(limits: Partial<ConstructorParameters<typeof SendAdmission>[0]> = {}) {
  const clock = { now: 0 };
  const refusals: string[] = [];
  const a = new SendAdmission(
    { maxInFlight: 1000, maxBytesInFlight: 1 << 30, queueTargetMs: 100, ...limits },
    (reason) => refusals.push(reason),
    () => clock.now,
    () => 0,
  );
  const refused = (bytes = 10): UnavailableError => {
    try {
      a.admit(bytes);
    } catch (err) {
      assert.ok(err instanceof UnavailableError);
      return err;
    }
    assert.fail("admitted a send that should have been refused");
  };
  return { a, clock, refusals, refused };
}

describe("gateway send admission", () => {
  it("bounds the sends in flight by count, and frees a slot when one is answered", () => {
    const { a, refusals, refused } = admission({ maxInFlight: 3 });
    for (let i = 0; i < 3; i++) a.admit(10);
    const err = refused();
    assert.equal(err.retryAfterMs, 100, "the shortest hint when nothing is known to be waiting");
    assert.deepEqual(refusals, ["in_flight_bound"]);
    a.settled(10, 1);
    a.admit(10);
    assert.equal(a.sendsInFlight, 3);
  });

  it("bounds the bytes in flight, but always lets one send in", () => {
    const { a, refused } = admission({ maxBytesInFlight: 1000 });
    a.admit(5000); // larger than the bound, alone: taken
    refused(1);
    a.settled(5000, 1);
    a.admit(600);
    a.admit(400);
    refused(1);
  });

  it("refuses once the quickest send of three intervals running waited past the target, then recovers", () => {
    const { a, clock, refusals, refused } = admission({ queueTargetMs: 100 });
    for (let i = 0; i < 20; i++) a.admit(10);
    // A burst: one slow answer and one quick one in the same interval is no standing queue.
    clock.now = 50;
    a.settled(10, 400);
    a.settled(10, 20);
    clock.now = 101;
    a.admit(10);
    assert.equal(a.overloaded, false);
    // One slow commit: every answer of one interval late, then quick ones. Not overload.
    a.settled(10, 300);
    clock.now = 205;
    assert.equal(a.overloaded, false);
    a.settled(10, 30);
    // Three intervals running whose quickest answer was late: the queue stands. (An interval
    // closes when the first call after its 100 ms comes.)
    for (const [at, waits] of [
      [310, [300, 250]],
      [420, [260, 240]],
      [530, [300, 180]],
    ] as const) {
      clock.now = at;
      for (const w of waits) a.settled(10, w);
    }
    clock.now = 640;
    assert.equal(a.overloaded, true);
    const err = refused();
    assert.equal(err.retryAfterMs, 360, "about twice the shortest wait of the last interval");
    assert.match(err.message, /server overloaded: sends have waited at least 180 ms/);
    assert.deepEqual(refusals, ["queue_standing"]);
    // An interval with no answer while sends are still in flight: the queue is not moving; still standing.
    clock.now = 750;
    refused();
    // The sends in flight are answered quickly again: admitted from the next interval on.
    a.settled(10, 30);
    clock.now = 860;
    a.admit(10);
    assert.equal(a.overloaded, false);
  });

  it("forgets a standing queue once nothing is in flight", () => {
    const { a, clock, refused } = admission({ queueTargetMs: 50 });
    for (let i = 0; i < 3; i++) a.admit(10);
    for (const at of [100, 200, 300]) {
      a.settled(10, 500);
      clock.now = at;
    }
    refused();
    clock.now = 450; // a quiet interval with nothing in flight
    a.admit(10);
  });

  it("counts the event loop's delay as part of every send's wait", () => {
    const clock = { now: 0 };
    const loop = { ms: 450 };
    const a = new SendAdmission(
      { maxInFlight: 100, maxBytesInFlight: 1 << 30, queueTargetMs: 500 },
      () => {},
      () => clock.now,
      () => 0,
      () => loop.ms,
    );
    for (let i = 0; i < 10; i++) a.admit(1);
    // Answers of 100 ms are quick, but frames waited 450 ms for the loop before being read.
    for (const at of [100, 200, 300]) {
      a.settled(1, 100);
      clock.now = at;
    }
    a.settled(1, 100);
    assert.equal(a.overloaded, true);
    loop.ms = 5;
    a.settled(1, 100);
    clock.now = 420;
    assert.equal(a.overloaded, false);
  });

  it("counts the wait of sends handed over by another thread, the least of each interval", () => {
    const clock = { now: 0 };
    const a = new SendAdmission(
      { maxInFlight: 100, maxBytesInFlight: 1 << 30, queueTargetMs: 500 },
      () => {},
      () => clock.now,
      () => 0,
      () => 5,
    );
    for (let i = 0; i < 10; i++) a.admit(1);
    // One hand-off in an interval was quick: the queue before the gateway is not standing.
    for (const at of [100, 200, 300, 400]) {
      a.handedOver(900);
      a.handedOver(20);
      a.settled(1, 100);
      clock.now = at;
    }
    assert.equal(a.overloaded, false);
    // Answers of 100 ms are quick, but every batch of reads waited 450 ms for this thread.
    for (const at of [500, 600, 700]) {
      a.handedOver(450);
      a.settled(1, 100);
      clock.now = at;
    }
    a.settled(1, 100);
    assert.equal(a.overloaded, true);
    assert.throws(() => a.admit(1), /sends have waited at least 550 ms/);
    // The hand-offs are quick again.
    a.handedOver(3);
    a.settled(1, 100);
    clock.now = 800;
    assert.equal(a.overloaded, false);
    // An interval with no hand-off adds nothing.
    for (const at of [900, 1000, 1100]) {
      a.settled(1, 100);
      clock.now = at;
    }
    assert.equal(a.overloaded, false);
  });

  describe("the answer-rate bound", () => {
    /** Admits and answers n sends, `at` (a thousand) at a time, each having waited waitedMs. */
    function answer(a: SendAdmission, n: number, waitedMs = 5, at = 1000): void {
      for (let done = 0; done < n; done += at) {
        const k = Math.min(at, n - done);
        for (let i = 0; i < k; i++) a.admit(1);
        for (let i = 0; i < k; i++) a.settled(1, waitedMs);
      }
    }

    it("takes at most what the gateway answers in the target", () => {
      const { a, clock, refusals, refused } = admission({ maxInFlight: 100_000, queueTargetMs: 500 });
      // 10,000 answers in the first second: half a second's worth is 5,000.
      for (let ms = 0; ms < 1000; ms += 100) {
        clock.now = ms;
        answer(a, 1000);
      }
      clock.now = 1000;
      assert.equal(a.inFlightBound, 5000);
      for (let i = 0; i < 5000; i++) a.admit(1);
      const err = refused();
      assert.deepEqual(refusals, ["answer_rate_bound"]);
      assert.match(
        err.message,
        /server overloaded: 5000 sends in flight, what this gateway answers in 500 ms/,
      );
      assert.equal(err.retryAfterMs, 100, "the shortest hint: a slot frees with every answer");
      // The sends in flight were taken and go on; each answer frees a slot.
      a.settled(1, 5);
      a.admit(1);
      assert.equal(a.sendsInFlight, 5000);
    });

    it("follows the mean of the last ten whole seconds: a stalled second costs a tenth", () => {
      const { a, clock } = admission({ maxInFlight: 100_000, queueTargetMs: 500 });
      assert.equal(a.inFlightBound, 2048, "before a second has closed, the floor");
      for (let s = 0; s < 10; s++) {
        clock.now = s * 1000;
        answer(a, 10_000);
      }
      clock.now = 10_000;
      assert.equal(a.inFlightBound, 5000);
      // A second with no answer (a stalled commit): the mean of 9 x 10,000 and 0.
      clock.now = 11_000;
      assert.equal(a.inFlightBound, 4500);
      // Idle for a minute: back to the floor, which still lets a burst in.
      clock.now = 71_000;
      assert.equal(a.inFlightBound, 2048);
      for (let i = 0; i < 2048; i++) a.admit(1);
    });

    it("holds the floor while answers are quick: a quiet gateway still takes a burst", () => {
      const { a, clock } = admission({ maxInFlight: 100_000, queueTargetMs: 500 });
      // 100 answers a second for ten seconds, each after 240 ms (under half the target).
      for (let s = 0; s < 10; s++) {
        clock.now = s * 1000;
        answer(a, 100, 240);
      }
      clock.now = 10_000;
      assert.equal(a.inFlightBound, 2048, "50 by the rate, but the floor holds");
      for (let i = 0; i < 2048; i++) a.admit(1);
    });

    it("lifts the floor once answers wait past half the target: past capacity, the rate is what it can do", () => {
      const { a, clock, refusals, refused } = admission({ maxInFlight: 100_000, queueTargetMs: 500 });
      // A mesh gateway whose sequencers are saturated: 1,000 answers a second, after 900 ms on
      // average (the 2,048 sends the floor let in, at that rate). The quickest of each interval
      // is on time, as a group commit's are (the delay signal's blind spot), so only the bound
      // can push back.
      for (let s = 0; s < 10; s++) {
        clock.now = s * 1000;
        answer(a, 1, 100, 1);
        answer(a, 999, 901, 100);
      }
      clock.now = 10_000;
      assert.equal(a.inFlightBound, 500, "what it answers in the target, under the floor");
      for (let i = 0; i < 500; i++) a.admit(1);
      refused();
      assert.deepEqual(refusals, ["answer_rate_bound"]);
      // Held there, the answers wait about the target, more than half of it: the floor stays off.
      for (let i = 0; i < 500; i++) a.settled(1, 500);
      for (let s = 10; s < 20; s++) {
        clock.now = s * 1000;
        answer(a, 1000, 500, 100);
      }
      clock.now = 20_000;
      assert.equal(a.inFlightBound, 525, "10,500 answered in ten seconds, so 525 in the target");
      // The load falls and answers are quick again: the floor comes back as their mean falls.
      for (let s = 20; s < 30; s++) {
        clock.now = s * 1000;
        answer(a, 1000, 20, 100);
      }
      clock.now = 30_000;
      assert.equal(a.inFlightBound, 2048);
    });

    it("never binds under the fixed bound or when the target is 0", () => {
      const small = admission({ maxInFlight: 10, queueTargetMs: 500 });
      assert.equal(small.a.inFlightBound, 10);
      const off = admission({ maxInFlight: 100_000, queueTargetMs: 0 });
      for (let i = 0; i < 5000; i++) off.a.admit(1);
      assert.equal(off.a.inFlightBound, 100_000);
    });
  });

  describe("the retry hint's spread", () => {
    /**
     * An admission whose ten seconds answered `perSecond` sends a second, with `maxInFlight` taken
     * now. Its target of 10 s makes the rate it assumes of any gateway (2,048 answers in the
     * target) 204.8 a second, under every rate these tests answer at.
     */
    function answering(perSecond: number, maxInFlight = 10) {
      const t = admission({ maxInFlight, queueTargetMs: 10_000 });
      for (let s = 0; s < 10; s++) {
        t.clock.now = s * 1000;
        for (let done = 0; done < perSecond; done += maxInFlight) {
          for (let i = 0; i < maxInFlight; i++) t.a.admit(1);
          for (let i = 0; i < maxInFlight; i++) t.a.settled(1, 5);
        }
      }
      t.clock.now = 10_000;
      for (let i = 0; i < maxInFlight; i++) t.a.admit(1);
      return t;
    }

    it("is the time the gateway takes to answer the refused sends still waiting", () => {
      const { refused } = answering(1000);
      const hints = Array.from({ length: 6000 }, () => refused().retryAfterMs);
      // The n-th refusal finds n - 1 waiting: at 1,000 answers a second, n - 1 ms of answers.
      assert.equal(hints[0], 100, "none waiting: the shortest hint");
      assert.equal(hints[100], 100, "100 waiting are answered in the shortest hint");
      assert.equal(hints[250], 250);
      assert.equal(hints[2000], 2000);
      assert.equal(hints[5999], 5000, "never past the longest hint");
    });

    it("counts a refused send only until its hint has passed", () => {
      const { clock, refused } = answering(1000);
      for (let i = 0; i < 1000; i++) refused();
      // The n-th was told max(100, n - 1) ms: 200 of them were due back by 10.2 s, all by 11 s
      // (counted to the next 100 ms).
      clock.now = 10_250;
      assert.equal(refused().retryAfterMs, 800);
      clock.now = 11_300;
      assert.equal(refused().retryAfterMs, 100, "every refused send is due back");
    });

    it("takes the answer rate's mean: the same crowd waits longer on a slower gateway", () => {
      const fast = answering(4000);
      const slow = answering(500);
      for (let i = 0; i < 1000; i++) {
        fast.refused();
        slow.refused();
      }
      assert.equal(fast.refused().retryAfterMs, 250, "1,000 waiting at 4,000 a second");
      assert.equal(slow.refused().retryAfterMs, 2000, "1,000 waiting at 500 a second");
    });

    it("assumes any gateway answers what the bound's floor takes in the target, however quiet it was", () => {
      // A target of 500 ms: the floor, 2,048 sends in 500 ms, is 4,096 answers a second.
      const quiet = admission({ maxInFlight: 10, queueTargetMs: 500 }); // 10 answers a second
      for (let s = 0; s < 10; s++) {
        quiet.clock.now = s * 1000;
        for (let i = 0; i < 10; i++) {
          quiet.a.admit(1);
          quiet.a.settled(1, 5);
        }
      }
      quiet.clock.now = 10_000;
      const fresh = admission({ maxInFlight: 10, queueTargetMs: 500 }); // no second closed yet
      for (let i = 0; i < 10; i++) {
        quiet.a.admit(1);
        fresh.a.admit(1);
      }
      for (const t of [quiet, fresh]) {
        const hints = Array.from({ length: 4097 }, () => t.refused().retryAfterMs);
        assert.equal(hints[409], 100, "409 waiting at 4,096 a second: under the shortest hint");
        assert.equal(hints[2048], 500, "2,048 waiting: half a second, not 200 s at 10 a second");
        assert.equal(hints[4096], 1000);
      }
    });

    it("takes what it answered while it refused as what it can do, under the floor too", () => {
      // A gateway at its limits: every second it answered 1,000 sends and refused some.
      const { a, clock, refused } = admission({ maxInFlight: 10, queueTargetMs: 500 });
      for (let s = 0; s < 10; s++) {
        clock.now = s * 1000;
        for (let done = 0; done < 1000; done += 10) {
          for (let i = 0; i < 10; i++) a.admit(1);
          if (done === 0) refused();
          for (let i = 0; i < 10; i++) a.settled(1, 5);
        }
      }
      clock.now = 10_000;
      for (let i = 0; i < 10; i++) a.admit(1);
      const hints = Array.from({ length: 1001 }, () => refused().retryAfterMs);
      assert.equal(hints[1000], 1000, "1,000 waiting at the 1,000 a second it showed, not 4,096");
    });

    it("marks the second a refusal came in, however long since the last answer", () => {
      const { a, clock, refused } = admission({ maxInFlight: 10, queueTargetMs: 500 });
      // Ten seconds of 1,000 answers, none refused, and fresh deliveries for a base lag.
      for (let s = 0; s < 10; s++) {
        clock.now = s * 1000;
        a.delivered(10);
        for (let done = 0; done < 1000; done += 10) {
          for (let i = 0; i < 10; i++) a.admit(1);
          for (let i = 0; i < 10; i++) a.settled(1, 5);
        }
      }
      // Then no answer, and deliveries 2 s behind their commits: refused for the lag, in second 10.
      for (const at of [10_000, 10_100, 10_200, 10_300]) {
        clock.now = at;
        a.delivered(2010);
      }
      clock.now = 10_400;
      assert.match(refused().message, /deliveries have been at least/);
      // Fresh deliveries again; a crowd refused at the bound in second 11. The one second the
      // gateway refused in answered nothing: it is stalled, so the crowd is told the longest hint.
      clock.now = 11_000;
      a.delivered(10);
      clock.now = 11_100;
      a.delivered(10);
      for (let i = 0; i < 10; i++) a.admit(1);
      refused();
      assert.equal(
        refused().retryAfterMs,
        5000,
        "not the shortest: second 9's 1,000 answers were not at the limits",
      );
    });

    it("is off with a target of 0", () => {
      const t = admission({ maxInFlight: 1, queueTargetMs: 0 });
      t.a.admit(1);
      const hints = Array.from({ length: 5000 }, () => t.refused().retryAfterMs);
      assert.deepEqual(new Set(hints), new Set([100]));
    });
  });

  it("with a target of 0 only the bounds apply", () => {
    const { a, clock } = admission({ queueTargetMs: 0 });
    for (let i = 0; i < 5; i++) a.admit(10);
    for (let i = 0; i < 5; i++) a.settled(10, 10_000);
    clock.now = 1000;
    a.admit(10);
    assert.equal(a.overloaded, false);
  });

  it("keeps retry hints between 100 ms and 5 s, jittered up to half again", () => {
    const hints: number[] = [];
    for (const random of [0, 0.999]) {
      const clock = { now: 0 };
      const a = new SendAdmission(
        { maxInFlight: 100, maxBytesInFlight: 1 << 30, queueTargetMs: 10 },
        () => {},
        () => clock.now,
        () => random,
      );
      for (let i = 0; i < 3; i++) a.admit(1);
      for (const at of [200, 400, 600]) {
        a.settled(1, 60_000);
        clock.now = at;
      }
      try {
        a.admit(1);
      } catch (err) {
        hints.push((err as UnavailableError).retryAfterMs ?? -1);
      }
    }
    assert.equal(hints[0], 5000);
    assert.ok(hints[1]! > 7000 && hints[1]! <= 7500, `jittered hint ${hints[1]}`);
  });

  describe("delivery lag", () => {
    /** One delivery of `lagMs` in each interval, at 100 ms steps from `from`; returns the next time. */
    function deliver(a: SendAdmission, clock: { now: number }, from: number, lags: number[]): number {
      let at = from;
      for (const lag of lags) {
        clock.now = at;
        a.delivered(lag);
        at += 100;
      }
      return at;
    }

    it("refuses once the freshest delivery of three intervals running lagged past the target above its base", () => {
      const { a, clock, refusals, refused } = admission({ queueTargetMs: 500 });
      // The sequencer's clock is 40 ms behind this host's: every lag carries it.
      let at = deliver(a, clock, 0, [45, 40, 60]);
      // One slow interval, then fresh again: no queue.
      at = deliver(a, clock, at, [900, 50]);
      clock.now = at;
      assert.equal(a.overloaded, false);
      // Three intervals whose freshest delivery lagged 600+ ms: deliveries run behind acks.
      at = deliver(a, clock, at, [700, 650, 640, 640]);
      clock.now = at;
      assert.equal(a.overloaded, true);
      const err = refused();
      assert.deepEqual(refusals, ["delivery_lag"]);
      assert.match(
        err.message,
        /server overloaded: deliveries have been at least 600 ms behind their commits/,
      );
      assert.equal(err.retryAfterMs, 1200, "about twice the lag above base");
      // Fresh deliveries again: admitted from the next interval on.
      at = deliver(a, clock, at, [80]);
      clock.now = at;
      a.admit(10);
      assert.equal(a.overloaded, false);
    });

    it("takes a constant clock offset for base, not for lag", () => {
      const { a, clock } = admission({ queueTargetMs: 500 });
      // This host's clock runs 2 s ahead of the sequencer's.
      const at = deliver(
        a,
        clock,
        0,
        Array.from({ length: 30 }, (_, i) => 2000 + (i % 3)),
      );
      clock.now = at;
      assert.equal(a.overloaded, false);
      a.admit(10);
    });

    it("clears when an interval has no live delivery, since only sends let in could show the queue gone", () => {
      const { a, clock, refused } = admission({ queueTargetMs: 100 });
      let at = deliver(a, clock, 0, [5, 400, 400, 400, 400]);
      clock.now = at;
      refused();
      at += 100; // an interval with no delivery
      clock.now = at;
      assert.equal(a.overloaded, false);
      a.admit(10);
    });

    it("forgets a base older than ten minutes, so a clock stepped back stops reading as lag", () => {
      const { a, clock } = admission({ queueTargetMs: 500 });
      let at = deliver(a, clock, 0, [10, 10]);
      // The sequencer's clock steps 3 s back: every lag is now 3 s more, for good.
      at = deliver(a, clock, at, [3010, 3010, 3010, 3010]);
      clock.now = at;
      assert.equal(a.overloaded, true, "within ten minutes the step reads as lag");
      // Once ten minute-long buckets hold only the new lag (one delivery a minute feeds them), the
      // old base has gone.
      for (let minute = 1; minute <= 11; minute++) at = deliver(a, clock, at + 60_000, [3010]);
      at = deliver(a, clock, at, [3010, 3010, 3010]);
      clock.now = at;
      assert.equal(a.overloaded, false);
    });
  });
});

describe("the event loop's delay", () => {
  it("reads what the loop was late by, not the sampling interval", async () => {
    const delay = eventLoopDelay();
    try {
      await sleep(300);
      const idle = delay.read();
      assert.ok(idle < 8, `an idle loop read ${idle} ms`);
      // Turns of 40 ms each: a sample due every 10 ms comes about 30 ms late.
      const until = performance.now() + 400;
      while (performance.now() < until) {
        const end = performance.now() + 40;
        while (performance.now() < end) {}
        await nextTurn();
      }
      const busy = delay.read();
      assert.ok(busy >= 20 && busy < 60, `turns of 40 ms read ${busy} ms`);
    } finally {
      delay.stop();
    }
  });
});
