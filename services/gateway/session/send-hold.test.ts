import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { HOLD_MAX_PAST_HINT_MS, MAX_HELD_CONVERSATIONS, SendHold } from "./send-hold.js";

/** A hold on a hand-driven clock. */
function hold() {
  const clock = { now: 1_000 };
  return { h: new SendHold(() => clock.now), clock };
}

describe("SendHold: a stream's sends to a conversation keep their order through retried refusals", () => {
  it("holds later sends past the refused send's hint, until that send comes back", () => {
    const { h, clock } = hold();
    assert.equal(h.check("c", "m1", 1), undefined);
    h.refused("c", "m2", 2, 100);
    // A later send read within the hint waits out what is left of it.
    clock.now += 30;
    assert.equal(h.check("c", "m3", 3), 70);
    // Read after the hint (the load is gone, the frame sat in the socket): still held, for it
    // would take a seq ahead of m2's retry. This is the case a deadline alone let through.
    clock.now += 500;
    assert.equal(h.check("c", "m4", 4), 50);
    assert.equal(h.heldFor("c"), "m2");
    // m2 comes back (a new frame, so a new ordinal): it goes, and the hold is lifted.
    assert.equal(h.check("c", "m2", 5), undefined);
    assert.equal(h.check("c", "m3", 6), undefined);
    assert.equal(h.heldFor("c"), undefined);
  });

  it("never holds a send read before the refused one, still waiting for its checks", () => {
    const { h } = hold();
    h.refused("c", "m5", 5, 100);
    assert.equal(h.check("c", "m4", 4), undefined, "read earlier: not overtaking anything");
    assert.notEqual(h.check("c", "m6", 6), undefined);
  });

  it("holds for the earliest refused send: an earlier refusal takes a later one's place", () => {
    const { h } = hold();
    h.refused("c", "m5", 5, 100);
    // m3 was read first but refused later (its device-set check took longer).
    h.refused("c", "m3", 3, 100);
    assert.equal(h.heldFor("c"), "m3");
    assert.notEqual(h.check("c", "m5", 7), undefined, "m5's retry waits for m3's");
    // A later send refused while the hold stands does not take its place.
    h.refused("c", "m8", 8, 100);
    assert.equal(h.heldFor("c"), "m3");
    assert.equal(h.check("c", "m3", 9), undefined);
    assert.equal(h.check("c", "m5", 10), undefined);
  });

  it("lets go of a send the device gave up, HOLD_MAX_PAST_HINT_MS after its hint", () => {
    const { h, clock } = hold();
    h.refused("c", "m1", 1, 200);
    clock.now += 200 + HOLD_MAX_PAST_HINT_MS - 1;
    assert.notEqual(h.check("c", "m2", 2), undefined);
    clock.now += 1;
    assert.equal(h.check("c", "m2", 3), undefined);
    assert.equal(h.heldFor("c"), undefined);
    // A lapsed hold is replaced by the next refusal, whatever its ordinal.
    h.refused("c", "m9", 9, 100);
    clock.now += HOLD_MAX_PAST_HINT_MS + 100;
    h.refused("c", "m10", 10, 100);
    assert.equal(h.heldFor("c"), "m10");
  });

  it("holds only the refused send's conversation: the stream's sends to others go on", () => {
    const { h } = hold();
    h.refused("x", "x1", 1, 100);
    assert.equal(h.check("y", "y1", 2), undefined, "another conversation is not held");
    assert.notEqual(h.check("x", "x2", 3), undefined);
    h.refused("y", "y2", 4, 100);
    assert.deepEqual([h.heldFor("x"), h.heldFor("y"), h.heldFor("z")], ["x1", "y2", undefined]);
    // Each hold is lifted by its own send coming back, not by the other's.
    assert.equal(h.check("y", "y2", 5), undefined);
    assert.notEqual(h.check("x", "x2", 6), undefined);
    assert.equal(h.check("y", "y3", 7), undefined);
    assert.equal(h.check("x", "x1", 8), undefined);
    assert.equal(h.heldConversations, 0);
  });

  it("past MAX_HELD_CONVERSATIONS, holds the whole stream rather than give up a conversation's order", () => {
    const { h, clock } = hold();
    let ordinal = 0;
    for (let i = 0; i < MAX_HELD_CONVERSATIONS; i++) h.refused(`c${i}`, `m${i}`, ++ordinal, 100);
    assert.equal(h.heldConversations, MAX_HELD_CONVERSATIONS);
    // One more conversation refused: every later send of the stream waits for it.
    h.refused("over", "o1", ++ordinal, 100);
    assert.equal(h.heldConversations, MAX_HELD_CONVERSATIONS, "the per-conversation holds stay bounded");
    assert.notEqual(h.check("over", "o2", ++ordinal), undefined);
    assert.notEqual(h.check("fresh", "f1", ++ordinal), undefined, "held by the stream-wide hold");
    assert.notEqual(h.check("c0", "m0", ++ordinal), undefined, "its own hold lifted, the stream's stands");
    assert.equal(h.check("over", "o1", ++ordinal), undefined, "the stream-wide hold's send lifts it");
    assert.equal(h.check("fresh", "f1", ++ordinal), undefined);
    // Lapsed holds make room again once the bound is reached: new conversations are held alone.
    clock.now += 100 + HOLD_MAX_PAST_HINT_MS;
    h.refused("late", "l1", ++ordinal, 100);
    assert.equal(h.heldConversations, MAX_HELD_CONVERSATIONS);
    h.refused("later", "k1", ++ordinal, 100);
    assert.equal(h.heldConversations, 2, "the lapsed holds were dropped");
    assert.equal(h.check("fresh", "f2", ++ordinal), undefined);
    assert.notEqual(h.check("late", "l2", ++ordinal), undefined);
  });
});
