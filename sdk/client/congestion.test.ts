import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { SendWindow } from "./congestion.js";

const CAP = 64;

/** A window on a hand-driven clock. */
function windowAt() {
  const clock = { now: 1_000 };
  return { w: new SendWindow(() => clock.now), clock };
}

describe("SendWindow: additive increase, multiplicative decrease", () => {
  it("is the server's cap until the server says it is overloaded, then half of what was in flight", () => {
    const { w } = windowAt();
    assert.equal(w.limit(CAP), CAP);
    w.acked(CAP);
    assert.equal(w.limit(CAP), CAP);
    w.overloaded(39);
    assert.equal(w.limit(CAP), 20, "(39 + the refused one) / 2");
  });

  it("cuts once per burst: refusals within 100 ms of a cut are the same push-back", () => {
    const { w, clock } = windowAt();
    w.overloaded(31);
    clock.now += 99;
    w.overloaded(15);
    assert.equal(w.limit(CAP), 16);
    clock.now += 1;
    w.overloaded(15);
    assert.equal(w.limit(CAP), 8);
    for (let i = 0; i < 10; i++) {
      clock.now += 100;
      w.overloaded(0);
    }
    assert.equal(w.limit(CAP), 1, "never below one send");
  });

  it("grows by about one per round trip (a window's worth of acks), not by one per ack", () => {
    const { w } = windowAt();
    w.overloaded(15);
    assert.equal(w.limit(CAP), 8);
    for (let i = 0; i < 8; i++) w.acked(CAP);
    assert.equal(w.limit(CAP), 8, "eight acks: not yet nine");
    w.acked(CAP);
    assert.equal(w.limit(CAP), 9, "about one round trip: one more");
    // The window squared grows by two per ack: 100 acks from 8 give about the root of 264.
    // Growing by one per ack, it would have reached the cap after 56.
    for (let i = 0; i < 91; i++) w.acked(CAP);
    assert.equal(w.limit(CAP), 16);
  });

  it("is unbounded again once it grows to the cap, so a raised cap is used", () => {
    const { w } = windowAt();
    w.overloaded(5);
    assert.equal(w.limit(CAP), 3);
    let acks = 0;
    while (w.limit(CAP) < CAP) {
      w.acked(CAP);
      acks++;
    }
    assert.ok(acks > 1_000 && acks < 2_100, `${acks} acks from 3 to 64`);
    assert.equal(w.limit(128), 128);
  });
});
