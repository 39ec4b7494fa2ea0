import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { InProcessBus } from "../bus/in-process.js";
import { createLogger } from "../common/log.js";
import { openLmdbStore } from "../store/lmdb/engine.js";
import type { ConversationStore, StoreEngine } from "../store/types.js";
import { HotStateBudget } from "./hot-state.js";
import { PublishOutbox } from "./outbox.js";
import { Shard } from "./shard.js";

/**
 * A shard's count limit on the conversation states it keeps: past it, the least recently used
 * idle state goes (as a second-chance order tells it), and a state in use never does. A state's
 * load reads its head from the store, so the test tells what stayed by what was read again.
 */

const log = createLogger({ level: "silent" });

describe("Shard's count limit on conversation states", () => {
  let dir: string;
  let engine: StoreEngine;
  let shard: Shard;
  let budget: HotStateBudget;
  const loads: string[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "shard-evict-"));
    engine = await openLmdbStore({ path: dir });
    const store = Object.create(engine.conversations) as ConversationStore;
    store.getLastSeq = (id) => {
      loads.push(id);
      return engine.conversations.getLastSeq(id);
    };
    budget = new HotStateBudget(64 * 1024 * 1024);
    shard = new Shard(0, store, new PublishOutbox(new InProcessBus(log), log), log, 3, budget);
  });
  after(async () => {
    await shard.close();
    await engine.close();
    await rm(dir, { recursive: true, force: true });
  });

  /** One operation on each conversation, in turn; returns the ones that had to be loaded. */
  async function use(...ids: string[]): Promise<string[]> {
    loads.length = 0;
    for (const id of ids) shard.release(await shard.acquire(id));
    return [...loads];
  }

  it("drops the idle state that went longest without an operation, never one in use", async () => {
    assert.deepEqual(await use("g_a", "g_b", "g_c", "g_d"), ["g_a", "g_b", "g_c", "g_d"]);
    assert.equal(budget.metrics.evictedConversations, 1);
    assert.equal(budget.conversations, 3);
    // "b" is used again; "e" then pushes out "c", the oldest not used since, and not "b".
    assert.deepEqual(await use("g_b", "g_e"), ["g_e"]);
    assert.deepEqual(await use("g_b", "g_e"), [], "both stayed");
    assert.deepEqual(await use("g_c"), ["g_c"], "it went");
    assert.equal(budget.metrics.evictedConversations, 3);

    // A state held by an operation stays however many others come and go.
    const held = await shard.acquire("g_held");
    await use("g_f", "g_g", "g_h", "g_i");
    const again = await shard.acquire("g_held");
    assert.equal(again.state, held.state, "the same state, not a reload");
    shard.release(again);
    shard.release(held);
    assert.ok(budget.conversations <= 3);
  });
});
