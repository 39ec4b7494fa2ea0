import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Backoff } from "./backoff.js";

describe("Backoff", () => {
  it("doubles the ceiling per attempt up to the cap", () => {
    const b = new Backoff(250, 30_000, () => 0.999_999);
    const delays = Array.from({ length: 10 }, () => b.next());
    assert.deepEqual(delays, [249, 499, 999, 1999, 3999, 7999, 15_999, 29_999, 29_999, 29_999]);
  });

  it("stays within [0, ceiling) for any random value", () => {
    for (const r of [0, 0.25, 0.5, 0.999]) {
      const b = new Backoff(100, 1_000, () => r);
      for (let i = 0; i < 20; i++) {
        const ceiling = b.ceiling();
        const d = b.next();
        assert.ok(d >= 0 && d < ceiling, `delay ${d} outside [0, ${ceiling})`);
        assert.ok(ceiling <= 1_000);
      }
    }
  });

  it("jitters: delays at the same attempt spread over the whole range", () => {
    const seen: number[] = [];
    for (let i = 0; i < 200; i++) {
      const b = new Backoff(1_000, 1_000);
      seen.push(b.next());
    }
    const min = Math.min(...seen);
    const max = Math.max(...seen);
    assert.ok(min < 200 && max > 800, `expected spread over [0, 1000), got [${min}, ${max}]`);
    assert.ok(new Set(seen).size > 50);
  });

  it("starts over after reset", () => {
    const b = new Backoff(250, 30_000, () => 0.5);
    for (let i = 0; i < 6; i++) b.next();
    assert.equal(b.attempts, 6);
    b.reset();
    assert.equal(b.attempts, 0);
    assert.equal(b.next(), 125);
  });

  it("stays finite after very many attempts", () => {
    const b = new Backoff(250, 30_000, () => 0.5);
    for (let i = 0; i < 5_000; i++) b.next();
    assert.equal(b.next(), 15_000);
  });

  it("rejects nonsense bounds", () => {
    assert.throws(() => new Backoff(0, 10), RangeError);
    assert.throws(() => new Backoff(100, 10), RangeError);
  });
});
