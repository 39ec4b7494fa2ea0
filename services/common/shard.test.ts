import { strict as assert } from "node:assert";
import { describe, it } from "node:test";
import { fnv1a, shardOf } from "./shard.js";

// These values are persisted (ScyllaDB partition keys, Redis key names) and shared by every
// process of a mesh: a change here is a data migration, not a refactoring.
const KNOWN: Array<[string, number]> = [
  ["", 0x811c9dc5],
  ["a", 3826002220],
  ["g_abc", 386959909],
  ["d_u_1_u_2", 3408255686],
  ["u_alice", 96504527],
  ["conversation.with dots", 1226812732],
  // UTF-16 code units, not UTF-8 bytes: a surrogate pair hashes as two units.
  ["héllo wörld ✓", 1757805203],
  ["😀", 3409036472],
];

describe("fnv1a and shardOf", () => {
  it("keep the values every deployment already stored", () => {
    for (const [text, hash] of KNOWN) assert.equal(fnv1a(text), hash, JSON.stringify(text));
  });

  it("shard by the hash modulo the count", () => {
    for (const [text, hash] of KNOWN) {
      for (const count of [1, 7, 16, 32]) assert.equal(shardOf(text, count), hash % count);
    }
    assert.deepEqual(
      KNOWN.map(([text]) => shardOf(text, 16)),
      [5, 12, 5, 6, 15, 12, 3, 8],
    );
    assert.deepEqual(
      KNOWN.map(([text]) => shardOf(text, 32)),
      [5, 12, 5, 6, 15, 28, 19, 24],
    );
  });

  it("is an unsigned 32-bit integer", () => {
    for (const [text] of KNOWN) {
      const h = fnv1a(text);
      assert.ok(Number.isInteger(h) && h >= 0 && h < 2 ** 32);
    }
  });
});
