import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { Client } from "@connectrpc/connect";
import type { DirectoryService } from "../../gen/switchboard/internal/v1/directory_pb.js";
import { BlockLists } from "./blocks.js";

/**
 * A directory answering GetBlockedUsers from a map, counting reads; `gate` holds answers back,
 * `fail` fails them.
 */
function directory(lists: Map<string, string[]>) {
  const state = { reads: 0, gate: undefined as Promise<void> | undefined, fail: false };
  const client = {
    getBlockedUsers: async ({ userIds }: { userIds: string[] }) => {
      state.reads++;
      await state.gate;
      if (state.fail) throw new Error("directory unavailable");
      return { users: userIds.map((userId) => ({ userId, blockedUserIds: [...(lists.get(userId) ?? [])] })) };
    },
  } as unknown as Client<typeof DirectoryService>;
  return { state, client };
}

describe("BlockLists: the gateway's cache of block lists", () => {
  it("reads lists once, answers from the cache, and reads again after a change", async () => {
    const lists = new Map([["u_bob", ["u_alice"]]]);
    const { state, client } = directory(lists);
    const blocks = new BlockLists(client);
    assert.deepEqual(await blocks.blockedAmong(["u_bob", "u_carol"], "u_alice"), ["u_bob"]);
    assert.deepEqual(await blocks.blockedAmong(["u_bob", "u_carol"], "u_alice"), ["u_bob"]);
    assert.equal(state.reads, 1, "one call for both owners, then the cache");
    lists.set("u_bob", []);
    blocks.changed("u_bob");
    assert.deepEqual(await blocks.blockedAmong(["u_bob"], "u_alice"), []);
    assert.equal(state.reads, 2);
  });

  it("reads the lists a group add needs in calls of 256 users", async () => {
    const owners = Array.from({ length: 600 }, (_, i) => `u_${i}`);
    const { state, client } = directory(new Map([["u_599", ["u_alice"]]]));
    const blocks = new BlockLists(client);
    assert.deepEqual(await blocks.blockedAmong(owners, "u_alice"), ["u_599"]);
    assert.equal(state.reads, 3);
    assert.deepEqual(await blocks.blockedAmong(owners, "u_alice"), ["u_599"]);
    assert.equal(state.reads, 3, "all cached");
  });

  it("reads the lists asked for in one turn together, in calls of 256 users", async () => {
    const owners = Array.from({ length: 300 }, (_, i) => `u_${i}`);
    const { state, client } = directory(new Map([["u_299", ["u_alice"]]]));
    const blocks = new BlockLists(client);
    const lists = await Promise.all(owners.map((o) => blocks.listOf(o)));
    assert.equal(state.reads, 2, "300 owners in one turn: two calls");
    assert.deepEqual(
      owners.filter((_, i) => lists[i]!.has("u_alice")),
      ["u_299"],
    );
    assert.equal((await blocks.listOf("u_0")).size, 0);
    assert.equal(state.reads, 2, "then from the cache");
  });

  it("fails every list of a call that failed, and reads them again when next asked", async () => {
    const { state, client } = directory(new Map([["u_bob", ["u_alice"]]]));
    const blocks = new BlockLists(client);
    state.fail = true;
    const failed = [blocks.listOf("u_bob"), blocks.listOf("u_carol")];
    for (const read of failed) await assert.rejects(read, /directory unavailable/);
    assert.equal(blocks.cached("u_bob"), undefined);
    state.fail = false;
    assert.ok((await blocks.listOf("u_bob")).has("u_alice"));
    assert.equal(state.reads, 2);
  });

  it("does not cache a read that raced a change", async () => {
    const lists = new Map([["u_bob", ["u_alice"]]]);
    const { state, client } = directory(lists);
    const blocks = new BlockLists(client);
    let open = () => {};
    state.gate = new Promise<void>((r) => (open = r));
    const racing = blocks.listOf("u_bob");
    blocks.changed("u_bob");
    open();
    await racing;
    assert.equal(blocks.cached("u_bob"), undefined);
  });

  it("is bounded by users and by bytes, least recently used out first", async () => {
    const lists = new Map([
      ["u_a", ["u_x"]],
      ["u_b", ["u_x"]],
      ["u_c", ["u_x"]],
      ["u_big", Array.from({ length: 100 }, (_, i) => `u_${i}`)],
    ]);
    const { state, client } = directory(lists);
    const byUsers = new BlockLists(client, { maxUsers: 2 });
    await byUsers.listOf("u_a");
    await byUsers.listOf("u_b");
    byUsers.cached("u_a"); // used: u_b is now the oldest
    await byUsers.listOf("u_c");
    assert.equal(byUsers.size.users, 2);
    assert.notEqual(byUsers.cached("u_a"), undefined);
    assert.equal(byUsers.cached("u_b"), undefined);

    const byBytes = new BlockLists(client, { maxBytes: 1000 });
    await byBytes.listOf("u_a");
    await byBytes.listOf("u_b");
    assert.ok(byBytes.size.bytes <= 1000);
    const before = state.reads;
    // Larger than the whole budget: answered, never kept.
    assert.equal((await byBytes.listOf("u_big")).size, 100);
    assert.equal(byBytes.cached("u_big"), undefined);
    await byBytes.listOf("u_big");
    assert.equal(state.reads, before + 2);
    assert.ok(byBytes.size.bytes <= 1000 && byBytes.size.users === 2);
  });

  it("delivers presence and typing unless the owner blocked the viewer", async () => {
    const { client } = directory(new Map([["u_bob", ["u_alice"]]]));
    const blocks = new BlockLists(client);
    const seen: string[] = [];
    await blocks.listOf("u_bob");
    blocks.unlessBlocked("u_bob", "u_alice", () => seen.push("to alice"));
    blocks.unlessBlocked("u_bob", "u_carol", () => seen.push("to carol"));
    blocks.unlessBlocked("u_bob", "u_bob", () => seen.push("to bob"));
    assert.deepEqual(seen, ["to carol", "to bob"], "cached: decided at once");
  });
});
