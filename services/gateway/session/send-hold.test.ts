import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { HOLD_MAX_PAST_HINT_MS, SendHold } from "./send-hold.js";

/** A hold on a hand-driven clock. */
function hold() {
  const clock = { now: 1_000 };
  return { h: new SendHold(() => clock.now), clock };
}

describe("SendHold: a stream's sends keep their order through retried refusals", () => {
  it("holds later sends past the refused send's hint, until that send comes back", () => {
    const { h, clock } = hold();
    assert.equal(h.check("m1", 1), undefined);
    h.refused("m2", 2, 100);
    // A later send read within the hint waits out what is left of it.
    clock.now += 30;
    assert.equal(h.check("m3", 3), 70);
    // Read after the hint (the load is gone, the frame sat in the socket): still held, for it
    // would take a seq ahead of m2's retry. This is the case a deadline alone let through.
    clock.now += 500;
    assert.equal(h.check("m4", 4), 50);
    assert.equal(h.heldFor, "m2");
    // m2 comes back (a new frame, so a new ordinal): it goes, and the hold is lifted.
    assert.equal(h.check("m2", 5), undefined);
    assert.equal(h.check("m3", 6), undefined);
    assert.equal(h.heldFor, undefined);
  });

  it("never holds a send read before the refused one, still waiting for its checks", () => {
    const { h } = hold();
    h.refused("m5", 5, 100);
    assert.equal(h.check("m4", 4), undefined, "read earlier: not overtaking anything");
    assert.notEqual(h.check("m6", 6), undefined);
  });

  it("holds for the earliest refused send: an earlier refusal takes a later one's place", () => {
    const { h } = hold();
    h.refused("m5", 5, 100);
    // m3 was read first but refused later (its device-set check took longer).
    h.refused("m3", 3, 100);
    assert.equal(h.heldFor, "m3");
    assert.notEqual(h.check("m5", 7), undefined, "m5's retry waits for m3's");
    // A later send refused while the hold stands does not take its place.
    h.refused("m8", 8, 100);
    assert.equal(h.heldFor, "m3");
    assert.equal(h.check("m3", 9), undefined);
    assert.equal(h.check("m5", 10), undefined);
  });

  it("lets go of a send the device gave up, HOLD_MAX_PAST_HINT_MS after its hint", () => {
    const { h, clock } = hold();
    h.refused("m1", 1, 200);
    clock.now += 200 + HOLD_MAX_PAST_HINT_MS - 1;
    assert.notEqual(h.check("m2", 2), undefined);
    clock.now += 1;
    assert.equal(h.check("m2", 3), undefined);
    assert.equal(h.heldFor, undefined);
    // A lapsed hold is replaced by the next refusal, whatever its ordinal.
    h.refused("m9", 9, 100);
    clock.now += HOLD_MAX_PAST_HINT_MS + 100;
    h.refused("m10", 10, 100);
    assert.equal(h.heldFor, "m10");
  });
});
