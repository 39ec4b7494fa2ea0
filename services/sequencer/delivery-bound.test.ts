import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { shardOf } from "../common/shard.js";
import { openLmdbStore } from "../store/lmdb/engine.js";
import type { DeviceRecord, MemberRecord, StoreEngine } from "../store/types.js";
import { DeviceDeliveryBound, holdsConversation, ReceivedBounds } from "./delivery-bound.js";

function device(userId: string, deviceId: string): DeviceRecord {
  return { deviceId, userId, name: deviceId, secretHash: "00", createdAtMs: 1, revokedAtMs: 0 };
}

function member(userId: string, joinedSeq: number): MemberRecord {
  // The member-level cursor says everything arrived: the bound must not trust it.
  return { userId, role: "member", joinedSeq, addedAtMs: 1, deliveredUpTo: 100, readUpTo: 0 };
}

/**
 * Who has received what for retention after delivery, on a real store: every active device of
 * every member, from where each could first read.
 */
describe("DeviceDeliveryBound", () => {
  let dir: string;
  let engine: StoreEngine;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "delivery-bound-"));
    engine = await openLmdbStore({ path: dir });
    const { accounts } = engine;
    await accounts.createUser(
      { userId: "u_a", username: "a", displayName: "", createdAtMs: 1 },
      device("u_a", "dv_a1"),
    );
    await accounts.addDevice(device("u_a", "dv_a2"), 10);
    await accounts.createUser(
      { userId: "u_b", username: "b", displayName: "", createdAtMs: 1 },
      device("u_b", "dv_b1"),
    );
  });
  after(async () => {
    await engine.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("is the lowest cursor of every active device, each counted from where it could read", async () => {
    const { conversations: store, accounts } = engine;
    const bounds = new ReceivedBounds();
    const bound = new DeviceDeliveryBound(store, accounts, bounds);
    const id = "g_bound1";
    const members = [member("u_a", 1), member("u_b", 5)];
    const cursor = (deviceId: string, deliveredUpTo: number) => ({
      conversationId: id,
      deviceId,
      deliveredUpTo,
      readUpTo: 0,
    });
    // a's first device has everything, b's only device has 7: a's second device has nothing.
    await store.saveCursors([cursor("dv_a1", 9), cursor("dv_b1", 7)], []);
    bound.startSweep();
    assert.equal(await bound.receivedUpTo(id, members), 0, "a device that received nothing holds all back");
    assert.equal(bounds.get(id), 0);

    // Linked into the conversation at seq 6 (its floor): it never reads what came before.
    await store.putDeviceFloors([{ conversationId: id, deviceId: "dv_a2", floorSeq: 6 }]);
    bound.startSweep();
    assert.equal(await bound.receivedUpTo(id, members), 6);
    await store.saveCursors([cursor("dv_a2", 8)], []);
    bound.startSweep();
    assert.equal(await bound.receivedUpTo(id, members), 7, "now b's device is the lowest");
    assert.equal(bounds.get(id), 7, "recorded for the log's reads");

    // b joined at 5 and its device never acknowledged: it holds back from 5 on only.
    await accounts.addDevice(device("u_b", "dv_b2"), 10);
    bound.startSweep();
    assert.equal(await bound.receivedUpTo(id, members), 4);
    assert.equal(bounds.get(id), 7, "a recorded bound never moves back");

    // Revoked, a device holds nothing back.
    await accounts.revokeDevice("dv_b2", 2);
    bound.startSweep();
    assert.equal(await bound.receivedUpTo(id, members), 7);
  });

  it("reads the device lists once per sweep, and again at the next", async () => {
    const { conversations: store, accounts } = engine;
    let reads = 0;
    const counting = {
      listDevices: (userId: string) => {
        reads++;
        return accounts.listDevices(userId);
      },
    };
    const bound = new DeviceDeliveryBound(store, counting, new ReceivedBounds());
    bound.startSweep();
    for (const id of ["g_c1", "g_c2", "g_c3"]) await bound.receivedUpTo(id, [member("u_b", 1)]);
    assert.equal(reads, 1);
    bound.startSweep();
    await bound.receivedUpTo("g_c1", [member("u_b", 1)]);
    assert.equal(reads, 2);
  });

  it("on a replica that does not hold the conversation, deletes nothing and reads nothing", async () => {
    const { conversations: store, accounts } = engine;
    let reads = 0;
    const counting = {
      listDevices: (userId: string) => {
        reads++;
        return accounts.listDevices(userId);
      },
    };
    const bounds = new ReceivedBounds();
    const bound = new DeviceDeliveryBound(store, counting, bounds, (id) => id === "g_mine");
    bound.startSweep();
    assert.equal(await bound.receivedUpTo("g_theirs", []), 0);
    assert.equal(await bound.receivedUpTo("g_theirs", [member("u_b", 1)]), 0);
    assert.equal(reads, 0);
    assert.equal(bounds.get("g_theirs"), 0);
    assert.equal(await bound.receivedUpTo("g_mine", [member("u_b", 1)]), 0, "b's device has nothing");
    assert.equal(reads, 1);
  });

  it("keeps nothing back for members without active devices", async () => {
    const { conversations: store, accounts } = engine;
    const bound = new DeviceDeliveryBound(store, accounts, new ReceivedBounds());
    bound.startSweep();
    assert.equal(await bound.receivedUpTo("g_empty", []), Number.POSITIVE_INFINITY);
    assert.equal(await bound.receivedUpTo("g_gone", [member("u_nobody", 1)]), Number.POSITIVE_INFINITY);
  });

  it("holdsConversation answers by the conversation's shard; a replica holding none holds nothing", () => {
    const id = "g_held";
    const shard = shardOf(id, 8);
    assert.equal(holdsConversation({ heldShards: () => new Set([shard]) }, id, 8), true);
    assert.equal(holdsConversation({ heldShards: () => new Set([(shard + 1) % 8]) }, id, 8), false);
    const fenced = {
      heldShards: (): ReadonlySet<number> => {
        throw new Error("this sequencer replica serves no shard now");
      },
    };
    assert.equal(holdsConversation(fenced, id, 8), false);
  });
});
