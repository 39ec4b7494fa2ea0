import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import {
  type BusEvent,
  BusEventSchema,
  EntryCommittedSchema,
} from "../../gen/switchboard/internal/v1/events_pb.js";
import { committedEntry } from "../../test/helpers/entries.js";
import { InProcessBus } from "../bus/in-process.js";
import { UnavailableError } from "../common/errors.js";
import { createLogger } from "../common/log.js";
import { openLmdbStore } from "../store/lmdb/engine.js";
import type { ConversationStore, StoreEngine } from "../store/types.js";
import { HotStateBudget } from "./hot-state.js";
import { PublishOutbox } from "./outbox.js";
import { type Batch, Shard } from "./shard.js";

/**
 * A store that stops answering (a hung fsync, an unreachable database): the shard refuses the
 * commit's sends after its timeout instead of holding them forever, keeps one commit in flight,
 * and whatever the store finally does, no seq is reused or skipped.
 */

const log = createLogger({ level: "silent" });

const entry = committedEntry;

describe("Shard with a store that stops answering", () => {
  let dir: string;
  let engine: StoreEngine;
  let store: ConversationStore;
  /** While set, commits wait for it: resolve(true) lets them through, resolve(false) fails them. */
  let gate: { wait: Promise<boolean>; open: (ok: boolean) => void } | undefined;
  let shard: Shard;

  function hang(): void {
    let open!: (ok: boolean) => void;
    gate = { wait: new Promise<boolean>((r) => (open = r)), open };
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "shard-faults-"));
    engine = await openLmdbStore({ path: dir });
    store = Object.create(engine.conversations) as ConversationStore;
    store.commit = async (writes) => {
      const held = gate;
      if (held !== undefined && !(await held.wait)) throw new Error("injected: the store gave up");
      return engine.conversations.commit(writes);
    };
    // A short timeout, so the test does not wait for the real 30 s one; nothing asserts on
    // durations. Long enough that a real commit on a loaded machine never reaches it: only the
    // commits the gate holds do.
    shard = new Shard(
      0,
      store,
      new PublishOutbox(new InProcessBus(log), log),
      log,
      100,
      new HotStateBudget(64 * 1024 * 1024),
      1000,
    );
  });
  after(async () => {
    gate?.open(true);
    await shard.close();
    await engine.close();
    await rm(dir, { recursive: true, force: true });
  });

  /** Assigns the next seq of a conversation and queues its entry, as the append path does. */
  async function append(id: string, text: string): Promise<{ seq: number; batch: Batch }> {
    const held = await shard.acquire(id);
    const { state } = held;
    try {
      const seq = state.lastSeq + 1;
      const batch = shard.batch();
      batch.append(state, entry(id, seq, text));
      state.lastSeq = seq;
      return { seq, batch };
    } finally {
      shard.release(held);
    }
  }

  async function refusal(batch: Batch): Promise<UnavailableError> {
    const err = await batch.durable.then(
      () => assert.fail("expected the commit to be refused"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof UnavailableError, `UNAVAILABLE, got ${String(err)}`);
    assert.ok((err.retryAfterMs ?? 0) > 0, "with a retry hint");
    return err;
  }

  it("refuses a commit that does not finish in time; a late success keeps its seq, work sequenced meanwhile is refused", {
    timeout: 20_000,
  }, async () => {
    const id = "g_hung_then_done";
    await (await append(id, "one")).batch.durable;

    hang();
    const hung = await append(id, "two");
    assert.equal(hung.seq, 2);
    assert.match((await refusal(hung.batch)).message, /did not answer in time/);
    // Reloaded from the store, which has not written seq 2 yet.
    const meanwhile = await append(id, "two again");
    assert.equal(meanwhile.seq, 2);
    gate!.open(true);
    gate = undefined;
    // The late commit wrote seq 2; what was sequenced on the reload collides and is refused.
    await refusal(meanwhile.batch);
    const next = await append(id, "three");
    await next.batch.durable;
    assert.equal(next.seq, 3);
    const log = await engine.conversations.readEntries(id, 0, 10);
    assert.deepEqual(
      log.map((e) => [Number(e.seq), e.clientMsgId]),
      [
        [1, "one"],
        [2, "two"],
        [3, "three"],
      ],
    );
  });

  it("refuses a commit that does not finish in time; after a late failure, work sequenced meanwhile commits", {
    timeout: 20_000,
  }, async () => {
    const id = "g_hung_then_failed";
    await (await append(id, "one")).batch.durable;

    hang();
    const hung = await append(id, "two");
    await refusal(hung.batch);
    const meanwhile = await append(id, "two again");
    assert.equal(meanwhile.seq, 2);
    gate!.open(false);
    gate = undefined;
    await meanwhile.batch.durable;
    const log = await engine.conversations.readEntries(id, 0, 10);
    assert.deepEqual(
      log.map((e) => [Number(e.seq), e.clientMsgId]),
      [
        [1, "one"],
        [2, "two again"],
      ],
    );
  });
});

describe("PublishOutbox with a bus that throws instead of rejecting", () => {
  it("holds the events and republishes them; the committed batch is not reported as failed", async () => {
    const accepted: bigint[] = [];
    let broken = true;
    const bus = new (class extends InProcessBus {
      override publishCommitted(events: readonly BusEvent[]): Promise<void> {
        if (broken) throw new Error("injected: the bus's store is full");
        for (const e of events)
          if (e.event.case === "entryCommitted") accepted.push(e.event.value.entry!.seq);
        return Promise.resolve();
      }
    })(log);
    const outbox = new PublishOutbox(bus, log, { minDelayMs: 5, maxDelayMs: 20 });
    const committed = create(BusEventSchema, {
      event: {
        case: "entryCommitted",
        value: create(EntryCommittedSchema, { entry: entry("g_x", 1, "one") }),
      },
    });
    assert.doesNotThrow(() => outbox.publish([committed]));
    const deadline = Date.now() + 5000;
    while (outbox.size === 0) {
      assert.ok(Date.now() < deadline, "the event waits in the outbox");
      await new Promise((r) => setTimeout(r, 5));
    }
    broken = false;
    while (accepted.length === 0) {
      assert.ok(Date.now() < deadline, "the event is republished");
      await new Promise((r) => setTimeout(r, 5));
    }
    assert.deepEqual(accepted, [1n]);
    outbox.close();
  });
});
