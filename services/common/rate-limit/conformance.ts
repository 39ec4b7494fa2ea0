import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, test } from "node:test";
import type { RateLimit, RateLimiter } from "./types.js";

/**
 * The behaviour every RateLimiter engine shares; memory.test.ts and redis.test.ts run it against
 * their engine. Each test opens its own limiter and uses fresh keys.
 */

/** An engine under test. */
export interface OpenedLimiter {
  limiter: RateLimiter;
  /** Lets at least `ms` of the limiter's time pass. */
  advance(ms: number): Promise<void>;
  /**
   * True when `advance` moves the limiter's clock by exactly `ms` and nothing else does (an
   * injected clock), so exact waits can be asserted. A real clock only gets bounds that a stall of
   * seconds on a loaded machine would be needed to break.
   */
  exact: boolean;
  close(): Promise<void>;
}

const key = (): string => `k-${randomUUID()}`;

/** The behaviour every RateLimiter engine shares. Each test uses fresh keys. */
export function runRateLimiterConformance(name: string, open: () => Promise<OpenedLimiter>): void {
  describe(`RateLimiter conformance: ${name}`, () => {
    async function withLimiter(fn: (opened: OpenedLimiter) => Promise<void>): Promise<void> {
      const opened = await open();
      try {
        await fn(opened);
      } finally {
        await opened.close();
      }
    }

    test("takes a burst, then refuses with the wait for one token and takes nothing", () =>
      withLimiter(async ({ limiter, exact }) => {
        const limit: RateLimit = { name: "send", rate: 0.1, burst: 3 };
        const k = key();
        for (let i = 0; i < 3; i++) assert.equal(await limiter.take(limit, k), 0, `take ${i + 1}`);
        const first = await limiter.take(limit, k);
        // One token at 0.1 per second is 10 s away.
        if (exact) assert.equal(first, 10_000);
        else assert.ok(first > 5_000 && first <= 10_000, `wait ${first}`);
        const second = await limiter.take(limit, k);
        assert.ok(second > 0 && second <= first, `a refusal must not take tokens: ${first} then ${second}`);
      }));

    test("refills at the rate, and only up to the burst", () =>
      withLimiter(async ({ limiter, advance, exact }) => {
        const limit: RateLimit = { name: "send", rate: 4, burst: 2 };
        const k = key();
        assert.equal(await limiter.take(limit, k, 2), 0);
        const wait = await limiter.take(limit, k, 2);
        // Two tokens at 4 per second are 500 ms away.
        if (exact) assert.equal(wait, 500);
        else assert.ok(wait > 0 && wait <= 500, `wait ${wait}`);
        if (exact) {
          await advance(wait - 1);
          assert.equal(await limiter.take(limit, k, 2), 1);
          await advance(1);
        } else {
          await advance(wait);
        }
        assert.equal(await limiter.take(limit, k, 2), 0);

        // Idle for three bursts' worth of time, it still holds one burst.
        await advance(1_500);
        assert.equal(await limiter.take(limit, k, 2), 0);
        const capped = await limiter.take(limit, k);
        if (exact) assert.equal(capped, 250);
        else assert.ok(capped > 0 && capped <= 250, `wait ${capped}`);
      }));

    test("a cost above one takes that many tokens at once, or none", () =>
      withLimiter(async ({ limiter, exact }) => {
        const limit: RateLimit = { name: "upload", rate: 0.1, burst: 5 };
        const k = key();
        assert.equal(await limiter.take(limit, k, 3), 0);
        const wait = await limiter.take(limit, k, 3);
        if (exact) assert.equal(wait, 10_000);
        else assert.ok(wait > 5_000 && wait <= 10_000, `wait ${wait}`);
        assert.equal(await limiter.take(limit, k, 2), 0, "the refused take of 3 left 2 tokens");
        const empty = await limiter.take(limit, k);
        assert.ok(empty > 5_000 && empty <= 10_000, `wait ${empty}`);

        // More than a burst can never be taken, and trying takes nothing.
        const other = key();
        assert.equal(await limiter.take(limit, other, 6), Number.POSITIVE_INFINITY);
        assert.equal(await limiter.take(limit, other, 5), 0);
      }));

    test("keys and limits are independent", () =>
      withLimiter(async ({ limiter }) => {
        const a: RateLimit = { name: "a", rate: 0.1, burst: 1 };
        const b: RateLimit = { name: "b", rate: 0.1, burst: 1 };
        const [k1, k2] = [key(), key()];
        assert.equal(await limiter.take(a, k1), 0);
        assert.ok((await limiter.take(a, k1)) > 0);
        assert.equal(await limiter.take(a, k2), 0);
        assert.equal(await limiter.take(b, k1), 0);
        assert.ok((await limiter.take(b, k1)) > 0);
        assert.ok((await limiter.take(a, k2)) > 0);
      }));

    test("malformed limits and costs are refused with a RangeError", () =>
      withLimiter(async ({ limiter }) => {
        const ok: RateLimit = { name: "send", rate: 1, burst: 1 };
        const bad: [RateLimit, number][] = [
          [{ ...ok, rate: 0 }, 1],
          [{ ...ok, rate: Number.NaN }, 1],
          [{ ...ok, burst: 0 }, 1],
          [{ ...ok, burst: Number.POSITIVE_INFINITY }, 1],
          [ok, 0],
          [ok, -1],
          [{ ...ok, name: "" }, 1],
          [{ ...ok, name: "a:b" }, 1],
          [{ ...ok, name: "a{b}" }, 1],
        ];
        for (const [limit, cost] of bad) {
          await assert.rejects(limiter.take(limit, key(), cost), RangeError, JSON.stringify({ limit, cost }));
        }
      }));
  });
}
