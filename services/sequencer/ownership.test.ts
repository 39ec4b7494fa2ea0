import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { ShardLease } from "../store/types.js";
import { type LeaseAction, type LeaseView, planLeases, rightfulHolder } from "./ownership.js";

/**
 * The lease protocol's decisions, one tick of one replica at a time (the loop and the store are
 * tested against the database in failover-scylla.test.ts). Four shards over two replicas: shards 0
 * and 2 are replica 0's home, 1 and 3 replica 1's.
 */

const leasesOf = (...leases: Array<[shard: number, owner: number, epoch: number]>) =>
  new Map<number, ShardLease>(leases.map(([shard, owner, epoch]) => [shard, { shard, owner, epoch }]));

function plan(view: Partial<LeaseView> & Pick<LeaseView, "me">): LeaseAction[] {
  return planLeases({
    replicas: 2,
    shardCount: 4,
    live: new Set([0, 1]),
    leases: new Map(),
    held: new Map(),
    mayTakeUnleased: true,
    ...view,
  });
}

describe("the rightful holder of a shard", () => {
  it("is its home replica when live, else the next live one in ring order", () => {
    assert.equal(rightfulHolder(4, 3, new Set([0, 1, 2])), 1);
    assert.equal(rightfulHolder(4, 3, new Set([0, 2])), 2);
    assert.equal(rightfulHolder(4, 3, new Set([0])), 0);
    assert.equal(rightfulHolder(5, 3, new Set([0, 1])), 0, "past the last ordinal the ring wraps");
    assert.equal(rightfulHolder(4, 3, new Set()), undefined);
  });
});

describe("one tick's plan", () => {
  it("takes its own unleased shards at once, and no one else's", () => {
    assert.deepEqual(plan({ me: 0 }), [
      { kind: "take", shard: 0, fromEpoch: undefined },
      { kind: "take", shard: 2, fromEpoch: undefined },
    ]);
  });

  it("takes a dead replica's shards from the epoch they were at", () => {
    const leases = leasesOf([0, 0, 1], [1, 1, 4], [2, 0, 1], [3, 1, 7]);
    const held = new Map([
      [0, 1],
      [2, 1],
    ]);
    assert.deepEqual(plan({ me: 0, live: new Set([0]), leases, held }), [
      { kind: "take", shard: 1, fromEpoch: 4 },
      { kind: "take", shard: 3, fromEpoch: 7 },
    ]);
  });

  it("leaves a live replica's shards to it, even those it should hand over", () => {
    // Replica 1 holds shard 0 (replica 0's home) after a failover; replica 0 is back. Replica 0
    // waits: the holder is live and hands it over itself.
    const leases = leasesOf([0, 1, 3], [1, 1, 1], [2, 0, 2], [3, 1, 1]);
    assert.deepEqual(plan({ me: 0, leases, held: new Map([[2, 2]]) }), []);
    assert.deepEqual(
      plan({
        me: 1,
        leases,
        held: new Map([
          [0, 3],
          [1, 1],
          [3, 1],
        ]),
      }),
      [{ kind: "hand-over", shard: 0, epoch: 3, to: 0 }],
    );
  });

  it("takes a shard handed to it under a new epoch", () => {
    const leases = leasesOf([0, 0, 4], [2, 0, 2]);
    assert.deepEqual(plan({ me: 0, leases, held: new Map([[2, 2]]) }), [
      { kind: "take", shard: 0, fromEpoch: 4 },
    ]);
  });

  it("stops serving a shard whose epoch or holder moved, writing nothing", () => {
    const leases = leasesOf([0, 0, 5], [2, 1, 3]);
    const held = new Map([
      [0, 4],
      [2, 2],
    ]);
    assert.deepEqual(plan({ me: 0, leases, held }), [
      { kind: "drop", shard: 0 },
      { kind: "drop", shard: 2 },
    ]);
  });

  it("re-takes, under a new epoch, what its previous incarnation held", () => {
    // A restarted replica finds its own name on its shards: it bumps the epoch, so that a process
    // of the same ordinal that is somehow still running stops serving them.
    const leases = leasesOf([0, 0, 9], [2, 0, 9]);
    assert.deepEqual(plan({ me: 0, leases }), [
      { kind: "take", shard: 0, fromEpoch: 9 },
      { kind: "take", shard: 2, fromEpoch: 9 },
    ]);
  });

  it("passes on a shard handed to it that it should not have", () => {
    // Handed over while this replica's view said otherwise: it goes to its rightful holder.
    const leases = leasesOf([1, 0, 2]);
    assert.deepEqual(plan({ me: 0, leases, mayTakeUnleased: false }), [
      { kind: "take", shard: 0, fromEpoch: undefined },
      { kind: "pass", shard: 1, epoch: 2, to: 1 },
      { kind: "take", shard: 2, fromEpoch: undefined },
    ]);
  });

  it("does not take another's never-leased shard until it has been up a lease term", () => {
    const live = new Set([0]);
    assert.deepEqual(
      plan({ me: 0, live, mayTakeUnleased: false }).map((a) => a.shard),
      [0, 2],
    );
    assert.deepEqual(
      plan({ me: 0, live, mayTakeUnleased: true }).map((a) => a.shard),
      [0, 1, 2, 3],
    );
  });
});
