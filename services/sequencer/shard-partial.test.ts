import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { BusEvent } from "../../gen/switchboard/internal/v1/events_pb.js";
import { committedEntry } from "../../test/helpers/entries.js";
import { InProcessBus } from "../bus/in-process.js";
import { createLogger } from "../common/log.js";
import { openLmdbStore } from "../store/lmdb/engine.js";
import type { ConversationStore, StoreEngine } from "../store/types.js";
import { HotStateBudget } from "./hot-state.js";
import { PublishOutbox } from "./outbox.js";
import { type Batch, Shard } from "./shard.js";

/**
 * A commit to several conversations that fails after part of it was written (ScyllaDB finishes
 * each conversation's part on its own): the part that is durable gets its events published,
 * though the commit's sends were refused.
 */

const log = createLogger({ level: "silent" });

const entry = committedEntry;

describe("Shard after a commit that failed part-way", () => {
  let dir: string;
  let engine: StoreEngine;
  let shard: Shard;
  const seen: string[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "shard-partial-"));
    engine = await openLmdbStore({ path: dir });
    // The real store, except that a commit to several conversations writes only the first
    // conversation's part and then fails, as a ScyllaDB commit whose second part timed out does.
    const store = Object.create(engine.conversations) as ConversationStore;
    store.commit = async (writes) => {
      if (writes.length < 2) return engine.conversations.commit(writes);
      await engine.conversations.commit(writes.slice(0, 1));
      throw new Error("injected: the second conversation's part timed out");
    };
    const bus = new InProcessBus(log);
    bus.consumeCommitted(async (events: readonly BusEvent[]) => {
      for (const e of events) {
        if (e.event.case === "entryCommitted" && e.event.value.entry !== undefined) {
          const { conversationId, seq } = e.event.value.entry;
          seen.push(`${conversationId}:${seq}`);
        }
      }
    });
    shard = new Shard(0, store, new PublishOutbox(bus, log), log, 100, new HotStateBudget(64 * 1024 * 1024));
  });
  after(async () => {
    await shard.close();
    await engine.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("publishes the events of the part that is durable", async () => {
    const batches = new Set<Batch>();
    for (const id of ["g_partial_a", "g_partial_b"]) {
      const held = await shard.acquire(id);
      const { state } = held;
      try {
        const batch = shard.batch();
        batch.append(state, entry(id, 1, `${id}-one`));
        state.lastSeq = 1;
        batches.add(batch);
      } finally {
        shard.release(held);
      }
    }
    assert.equal(batches.size, 1, "both sends are in one commit");
    await assert.rejects([...batches][0]!.durable, /storage commit failed/);
    assert.equal(await engine.conversations.getLastSeq("g_partial_a"), 1);
    assert.equal(await engine.conversations.getLastSeq("g_partial_b"), 0);
    const deadline = Date.now() + 10_000;
    while (!seen.includes("g_partial_a:1")) {
      assert.ok(Date.now() < deadline, "the durable entry's event was published");
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.ok(!seen.includes("g_partial_b:1"), "nothing is published for the part that was not written");
  });
});
