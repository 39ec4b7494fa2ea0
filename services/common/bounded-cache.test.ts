import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { BoundedCache } from "./bounded-cache.js";

describe("BoundedCache", () => {
  it("keeps at most maxEntries, evicting first what was not read since the last eviction", () => {
    const cache = new BoundedCache<string, number>(3, 1_000_000);
    for (const [i, key] of ["a", "b", "c"].entries()) cache.set(key, i, 10);
    assert.equal(cache.get("a"), 0);
    cache.set("d", 3, 10);
    assert.deepEqual(
      ["a", "b", "c", "d"].map((k) => cache.get(k)),
      [0, undefined, 2, 3],
      "b, the oldest not read, went; a was read",
    );
    assert.equal(cache.size, 3);
    assert.equal(cache.bytes, 30);
  });

  it("lets no flood of new entries flush the ones read since the last eviction", () => {
    const cache = new BoundedCache<string, number>(4, 1_000_000);
    cache.set("hot", 1, 10);
    for (let i = 0; i < 100; i++) {
      assert.equal(cache.get("hot"), 1);
      cache.set(`new${i}`, i, 10);
    }
    assert.equal(cache.get("hot"), 1);
    assert.equal(cache.get("new99"), 99, "never the entry just kept");
    assert.equal(cache.size, 4);
  });

  it("keeps within maxBytes, and keeps no value larger than it", () => {
    const cache = new BoundedCache<string, string>(100, 100);
    cache.set("a", "x", 40);
    cache.set("b", "y", 40);
    cache.set("c", "z", 40);
    assert.equal(cache.bytes, 80);
    assert.equal(cache.get("a"), undefined);
    assert.equal(cache.set("b", "big", 101), false, "larger than the whole budget");
    assert.equal(cache.get("b"), undefined, "and the value before it is gone too");
    assert.equal(cache.bytes, 40);
    assert.equal(cache.set("c", "again", 60), true, "replaces, counted once");
    assert.equal(cache.bytes, 60);
    assert.equal(cache.delete("c"), true);
    assert.equal(cache.delete("c"), false);
    assert.deepEqual([cache.size, cache.bytes], [0, 0]);
  });

  it("refuses bounds that keep nothing", () => {
    assert.throws(() => new BoundedCache(0, 10), RangeError);
    assert.throws(() => new BoundedCache(10, 0), RangeError);
  });
});
