import assert from "node:assert/strict";
import { describe, it, test } from "node:test";
import { runRateLimiterConformance } from "./conformance.js";
import { LocalRateLimiter } from "./memory.js";
import { TokenBucket } from "./token-bucket.js";
import type { RateLimit } from "./types.js";

/** A clock the test moves by hand. */
function manualClock(): { now: () => number; advance(ms: number): Promise<void> } {
  let t = 1_000;
  return {
    now: () => t,
    advance: async (ms) => {
      t += ms;
    },
  };
}

runRateLimiterConformance("LocalRateLimiter", async () => {
  const clock = manualClock();
  const limiter = new LocalRateLimiter({ now: clock.now });
  return { limiter, advance: clock.advance, exact: true, close: () => limiter.close() };
});

describe("LocalRateLimiter specifics", () => {
  test("beyond maxKeys, forgets first the keys not used since the last trim passed them", async () => {
    const clock = manualClock();
    const limiter = new LocalRateLimiter({ now: clock.now, maxKeys: 2 });
    const limit: RateLimit = { name: "send", rate: 0.001, burst: 1 };
    assert.equal(limiter.takeSync(limit, "k1"), 0);
    assert.equal(limiter.takeSync(limit, "k2"), 0);
    // All three were used since the (first) trim, which passes them and forgets the oldest.
    assert.equal(limiter.takeSync(limit, "k3"), 0);
    assert.equal(limiter.size, 2);
    assert.ok(limiter.takeSync(limit, "k2") > 0, "k2 is drained, and used again since the trim");
    assert.equal(limiter.takeSync(limit, "k4"), 0);
    assert.equal(limiter.size, 2);
    assert.ok(limiter.takeSync(limit, "k2") > 0, "k2 is remembered");
    assert.equal(
      limiter.takeSync(limit, "k3"),
      0,
      "k3, not used since the trim, was forgotten: a fresh burst",
    );
    assert.equal(limiter.takeSync(limit, "k1"), 0, "and k1 before it");
    assert.equal(limiter.size, 2);
  });

  test("keys of every limit count together against maxKeys, and a key has one bucket per limit", async () => {
    const clock = manualClock();
    const limiter = new LocalRateLimiter({ now: clock.now, maxKeys: 3 });
    const sends: RateLimit = { name: "send", rate: 0.001, burst: 1 };
    const frames: RateLimit = { name: "frame", rate: 0.001, burst: 1 };
    assert.equal(limiter.takeSync(sends, "k1"), 0);
    assert.equal(limiter.takeSync(frames, "k1"), 0, "the same key under another limit is another bucket");
    assert.ok(limiter.takeSync(sends, "k1") > 0);
    assert.ok(limiter.takeSync(frames, "k1") > 0);
    assert.equal(limiter.takeSync(sends, "k2"), 0);
    assert.equal(limiter.size, 3);
    // A fourth key under "frame" forgets that limit's least recently used bucket, not a "send" one.
    assert.equal(limiter.takeSync(frames, "k2"), 0);
    assert.equal(limiter.size, 3);
    assert.equal(limiter.takeSync(frames, "k1"), 0, "frame:k1 was forgotten: a fresh burst");
    assert.ok(limiter.takeSync(sends, "k1") > 0, "send:k1 is remembered");
    assert.ok(limiter.takeSync(sends, "k2") > 0, "send:k2 is remembered");
    // A limit holding only the new key takes the bound from the others.
    const third: RateLimit = { name: "third", rate: 0.001, burst: 1 };
    assert.equal(limiter.takeSync(third, "k9"), 0);
    assert.equal(limiter.size, 3);
    assert.ok(limiter.takeSync(third, "k9") > 0, "the newest bucket is kept");
  });

  test("a bucket idle until full behaves as a new one", async () => {
    const clock = manualClock();
    const limiter = new LocalRateLimiter({ now: clock.now });
    const limit: RateLimit = { name: "send", rate: 10, burst: 2 };
    assert.equal(limiter.takeSync(limit, "k", 2), 0);
    await clock.advance(200);
    assert.equal(limiter.takeSync(limit, "k", 2), 0);
    assert.equal(limiter.takeSync(limit, "k"), 100);
  });
});

describe("TokenBucket", () => {
  it("allows the burst, then refills at the rate, and says how long to wait", () => {
    const bucket = new TokenBucket(10, 3, 0);
    assert.equal(bucket.take(0), 0);
    assert.equal(bucket.take(0), 0);
    assert.equal(bucket.take(0), 0);
    assert.equal(bucket.take(0), 100, "one token takes 100 ms at 10/s");
    assert.equal(bucket.take(50), 50);
    assert.equal(bucket.take(100), 0);
    assert.equal(bucket.take(10_000), 0, "refill never exceeds the burst");
    assert.equal(bucket.take(10_000), 0);
    assert.equal(bucket.take(10_000), 0);
    assert.ok(bucket.take(10_000) > 0);
  });
});
