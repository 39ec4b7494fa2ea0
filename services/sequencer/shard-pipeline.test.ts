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
import { committedEvent, PublishOutbox } from "./outbox.js";
import { type Batch, Shard } from "./shard.js";

/**
 * A shard hands its next batch to the store before the batch that just committed is acked and
 * delivered: in one process those acks and deliveries run in the task that learns of the commit,
 * and a store left idle behind them made every send that came in meanwhile wait for both
 * (docs/benchmarks.md, twentieth pass). Order still holds: one commit in flight, and a batch's
 * events are published before the next batch's.
 */

const log = createLogger({ level: "silent" });

describe("Shard pipelining its commits", () => {
  let dir: string;
  let engine: StoreEngine;
  let shard: Shard;
  /** Conversation ids of each commit the store was handed, in order. */
  const commits: string[][] = [];
  /** While set, the next commit waits for it. */
  let gate: { wait: Promise<void>; open: () => void } | undefined;
  /** Each batch of committed events fanout was handed: its seqs, and how many commits the store had been handed then. */
  const published: Array<{ seqs: number[]; commitsHandedOver: number }> = [];
  /** How many commits the store had been handed when each batch's durable promise settled. */
  const acked: number[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "shard-pipeline-"));
    engine = await openLmdbStore({ path: dir });
    const store = Object.create(engine.conversations) as ConversationStore;
    store.commit = async (writes) => {
      commits.push(writes.map((w) => w.conversationId));
      const held = gate;
      gate = undefined;
      if (held !== undefined) await held.wait;
      return engine.conversations.commit(writes);
    };
    const bus = new InProcessBus(log);
    bus.consumeCommitted(async (events: readonly BusEvent[]) => {
      published.push({
        seqs: events.map((e) => (e.event.case === "entryCommitted" ? Number(e.event.value.entry!.seq) : -1)),
        commitsHandedOver: commits.length,
      });
    });
    shard = new Shard(
      0,
      store,
      new PublishOutbox(bus, log),
      log,
      100,
      new HotStateBudget(64 * 1024 * 1024),
      30_000,
    );
  });
  after(async () => {
    gate?.open();
    await shard.close();
    await engine.close();
    await rm(dir, { recursive: true, force: true });
  });

  /** Assigns the next seq of a conversation and queues its entry and event, as the append path does. */
  async function append(id: string, text: string): Promise<Batch> {
    const held = await shard.acquire(id);
    const { state } = held;
    try {
      const seq = state.lastSeq + 1;
      const batch = shard.batch();
      const entry = committedEntry(id, seq, text);
      batch.append(state, entry);
      batch.events.push(committedEvent(entry));
      state.lastSeq = seq;
      void batch.durable.then(() => acked.push(commits.length));
      return batch;
    } finally {
      shard.release(held);
    }
  }

  it("hands the next batch to the store before acking and delivering the one that committed", {
    timeout: 10_000,
  }, async () => {
    const id = "g_pipeline";
    let open!: () => void;
    gate = { wait: new Promise<void>((r) => (open = r)), open: () => open() };
    const first = await append(id, "one");
    // Wait until the first batch is with the store, so the second cannot join it.
    while (commits.length === 0) await new Promise((r) => setImmediate(r));
    const second = await append(id, "two");
    assert.notEqual(first, second, "the second send is in a batch of its own");
    open();
    await first.durable;
    await second.durable;

    assert.deepEqual(commits, [[id], [id]], "two commits, one batch each");
    assert.deepEqual(
      published.map((p) => p.seqs),
      [[1], [2]],
      "each batch's events once, in seq order",
    );
    assert.equal(
      published[0]!.commitsHandedOver,
      2,
      "the second batch was with the store before the first batch's events reached fanout",
    );
    assert.equal(acked[0], 2, "and before the first batch's senders were answered");
    const stored = await engine.conversations.readEntries(id, 0, 10);
    assert.deepEqual(
      stored.map((e) => [Number(e.seq), e.clientMsgId]),
      [
        [1, "one"],
        [2, "two"],
      ],
    );
  });

  it("commits as before when nothing is waiting behind a commit", { timeout: 10_000 }, async () => {
    const id = "g_alone";
    const before = commits.length;
    const batch = await append(id, "one");
    await batch.durable;
    assert.equal(commits.length, before + 1);
    const later = await append(id, "two");
    await later.durable;
    assert.equal(commits.length, before + 2);
    assert.deepEqual(published.at(-1)!.seqs, [2]);
  });
});
