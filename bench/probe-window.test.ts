import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { inProbeWindow, type ProbeSample } from "./server.js";

const tick = (t: number): ProbeSample => ({ kind: "tick", thread: 0, t, rss: 0, heapUsed: 0, external: 0 });

describe("the event-loop figures' window", () => {
  const window = { start: 10_000, end: 30_000, closedAt: 30_600 };

  it("keeps the ticks whose second is at least half inside the measured window", () => {
    assert.equal(inProbeWindow(tick(10_400), window), false, "three fifths of its second before the window");
    assert.equal(inProbeWindow(tick(10_600), window), true);
    assert.equal(inProbeWindow(tick(20_000), window), true);
    assert.equal(inProbeWindow(tick(30_500), window), true, "half of its second inside");
    assert.equal(inProbeWindow(tick(30_501), { ...window, closedAt: 31_000 }), false);
  });

  it("drops a tick written after the results were in, which may hold the bench's forced GC", () => {
    // The drain ended 200 ms after the window: the closing snapshot's full GC came next, and the
    // tick after it, though half inside the window, reports that pause.
    const closedEarly = { ...window, closedAt: 30_200 };
    assert.equal(inProbeWindow(tick(30_100), closedEarly), true);
    assert.equal(inProbeWindow(tick(30_300), closedEarly), false);
  });
});
