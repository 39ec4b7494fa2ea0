import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { evictSecondChance, MAX_MOVES_PER_WALK } from "./second-chance.js";

/** A cache of keys in a Set, with a mark per key as a user of evictSecondChance keeps them. */
class Marked {
  readonly order = new Set<string>();
  readonly marks = new Set<string>();
  readonly evicted: string[] = [];
  /** Keys evict() leaves in place (in use). */
  readonly pinned = new Set<string>();
  looks = 0;

  use(key: string): void {
    this.order.add(key);
    this.marks.add(key);
  }

  walk(keep: number): boolean {
    return evictSecondChance(
      this.order,
      (key) => {
        this.looks++;
        return this.marks.delete(key);
      },
      (key) => {
        this.looks++;
        if (this.pinned.has(key)) return;
        this.order.delete(key);
        this.evicted.push(key);
      },
      () => this.order.size <= keep,
    );
  }
}

describe("evictSecondChance", () => {
  it("evicts what went longest without a use, and a use since the last walk buys one more", () => {
    const cache = new Marked();
    for (const key of ["a", "b", "c", "d"]) cache.use(key);
    // Everything was used since the (never run) last walk: the walk moves each once, then
    // evicts in the order it moved them.
    assert.equal(cache.walk(3), true);
    assert.deepEqual(cache.evicted, ["a"]);
    cache.use("b");
    cache.use("e");
    assert.equal(cache.walk(3), true);
    // "c" is the oldest not used since the last walk; "b" was used, and moves behind "e".
    assert.deepEqual(cache.evicted, ["a", "c"]);
    assert.deepEqual([...cache.order], ["d", "e", "b"]);
    cache.use("f");
    cache.walk(3);
    assert.deepEqual(cache.evicted, ["a", "c", "d"]);
  });

  it("stops once done, leaving the marks it did not reach", () => {
    const cache = new Marked();
    for (const key of ["a", "b", "c"]) cache.use(key);
    cache.marks.delete("a");
    assert.equal(cache.walk(2), true);
    assert.deepEqual(cache.evicted, ["a"]);
    assert.deepEqual([...cache.marks].sort(), ["b", "c"], "the walk never came to them");
  });

  it("comes to each entry at most twice a walk when nothing can go, and says it fell short", () => {
    const cache = new Marked();
    const keys = Array.from({ length: 100 }, (_, i) => `k${i}`);
    for (const key of keys) {
      cache.use(key);
      cache.pinned.add(key);
    }
    assert.equal(cache.walk(10), false);
    assert.equal(cache.evicted.length, 0);
    // Each entry is come to twice: once to clear its mark (one call), and once more, behind the
    // others, to find it unmarked and try to evict it (two calls).
    assert.equal(cache.looks, 3 * keys.length);
    assert.deepEqual([...cache.order], keys, "every entry moved once, in order");
    cache.looks = 0;
    assert.equal(cache.walk(10), false);
    assert.equal(cache.looks, 2 * keys.length, "with no marks left, each is come to once, and nothing moves");
  });

  it("moves at most MAX_MOVES_PER_WALK entries a walk, then evicts in order", () => {
    const cache = new Marked();
    const keys = Array.from({ length: MAX_MOVES_PER_WALK + 10 }, (_, i) => `k${i}`);
    for (const key of keys) cache.use(key);
    cache.walk(keys.length - 1);
    assert.deepEqual(
      cache.evicted,
      [keys[MAX_MOVES_PER_WALK]],
      "the first key past the moves, though marked",
    );
    assert.deepEqual([...cache.order].slice(0, 9), keys.slice(MAX_MOVES_PER_WALK + 1));
    assert.equal(cache.looks, MAX_MOVES_PER_WALK + 1);
  });

  it("keeps a Map's values when it moves their keys", () => {
    const order = new Map([
      ["a", 1],
      ["b", 2],
      ["c", 3],
    ]);
    const used = new Set(["a"]);
    evictSecondChance(
      order,
      (key) => used.delete(key),
      (key) => order.delete(key),
      () => order.size <= 2,
    );
    assert.deepEqual(
      [...order],
      [
        ["c", 3],
        ["a", 1],
      ],
    );
  });
});
