import { strict as assert } from "node:assert";
import { randomBytes } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import { Client } from "cassandra-driver";
import type { BusEvent } from "../../gen/switchboard/internal/v1/events_pb.js";
import { type Entry, EntrySchema, MessageBodySchema } from "../../gen/switchboard/v1/entry_pb.js";
import { messageItem } from "../../test/helpers/entries.js";
import { SCYLLA_SKIP, type ScratchKeyspace, scratchKeyspace } from "../../test/helpers/scylla.js";
import { InProcessBus } from "../bus/in-process.js";
import { defaultLimits } from "../common/config.js";
import { createLogger } from "../common/log.js";
import { encodedSizeBound } from "../common/wire-size.js";
import { encodeIntent, type Intent } from "../store/scylla/conversations.js";
import { openScyllaStore, type ScyllaOptions } from "../store/scylla/engine.js";
import { clientOptions } from "../store/scylla/schema.js";
import type { StoreEngine } from "../store/types.js";
import { HotStateBudget } from "./hot-state.js";
import { PublishOutbox } from "./outbox.js";
import { Sequencer } from "./sequencer.js";
import { type Batch, Shard } from "./shard.js";

/**
 * A shard's commits on the ScyllaDB engine (on the test's Cassandra): large sends in one tick are
 * split into commits the database accepts (one intent held them all, over the mutation size
 * limit, and was refused at every attempt), and entries whose commit was finished by someone
 * other than their sender's shard still get their events published.
 */

const log = createLogger({ level: "silent" });
const ALICE = "u_0000000000000000000000000a";
const BOB = "u_0000000000000000000000000b";
const DEVICE = "dv_000000000000000000000000a";

function message(conversationId: string, seq: number, clientMsgId: string, payload: Uint8Array): Entry {
  return create(EntrySchema, {
    conversationId,
    seq: BigInt(seq),
    senderUserId: ALICE,
    senderDeviceId: DEVICE,
    clientMsgId,
    serverTimeMs: 1_700_000_000_000n + BigInt(seq),
    body: { case: "message", value: create(MessageBodySchema, { payload }) },
  });
}

/** Collects the seqs of committed events per conversation, as fanout would receive them. */
function recordEvents(bus: InProcessBus): Map<string, bigint[]> {
  const seen = new Map<string, bigint[]>();
  bus.consumeCommitted(async (events: readonly BusEvent[]) => {
    for (const e of events) {
      if (e.event.case !== "entryCommitted" || e.event.value.entry === undefined) continue;
      const entry = e.event.value.entry;
      seen.set(entry.conversationId, [...(seen.get(entry.conversationId) ?? []), entry.seq]);
    }
  });
  return seen;
}

/** Waits (bounded) until the recorded events of a conversation include a seq. */
async function eventFor(seen: Map<string, bigint[]>, conversationId: string, seq: number): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (!(seen.get(conversationId) ?? []).includes(BigInt(seq))) {
    assert.ok(Date.now() < deadline, `an event for seq ${seq} of ${conversationId} was published`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("Shard commits on the ScyllaDB engine", { skip: SCYLLA_SKIP }, () => {
  let options: ScyllaOptions;
  let keyspace: ScratchKeyspace | undefined;
  let store: StoreEngine | undefined;
  let cql: Client | undefined;

  before(async () => {
    keyspace = await scratchKeyspace("shard");
    options = keyspace.options;
    store = await openScyllaStore(options);
    cql = new Client(clientOptions(options, true));
  });

  after(async () => {
    await store?.close();
    await cql?.shutdown();
    await keyspace?.drop();
  });

  function newShard(bus: InProcessBus): Shard {
    assert.ok(store !== undefined);
    return new Shard(
      0,
      store.conversations,
      new PublishOutbox(bus, log),
      log,
      100,
      new HotStateBudget(256 * 1024 * 1024),
    );
  }

  it("commits many large sends of one tick in several commits, in order, with no gap", {
    timeout: 300_000,
  }, async () => {
    assert.ok(store !== undefined);
    // 40 sends of 400 KB: 16 MB of entries, over 21 MB as one intent, past the 16 MiB mutation
    // limit of the test node (commitlog_segment_size 32 MiB).
    const sends = 40;
    const id = `g_large_${randomBytes(6).toString("hex")}`;
    const shard = newShard(new InProcessBus(log));
    const held = await shard.acquire(id);
    const { state } = held;
    const batches: Batch[] = [];
    try {
      // One tick, as the append path assigns: nothing awaits between the sends.
      for (let seq = 1; seq <= sends; seq++) {
        const entry = message(id, seq, `big-${seq}`, randomBytes(400_000));
        const batch = shard.batch(encodedSizeBound(entry));
        batch.append(state, entry);
        state.lastSeq = seq;
        if (!batches.includes(batch)) batches.push(batch);
      }
    } finally {
      shard.release(held);
    }
    const results = await Promise.allSettled(batches.map((b) => b.durable));
    assert.deepEqual(
      results.map((r) => (r.status === "rejected" ? String(r.reason) : "ok")),
      batches.map(() => "ok"),
      "every commit succeeded",
    );
    assert.ok(batches.length > 1, `the sends were split into several commits (${batches.length})`);
    assert.equal(await store.conversations.getLastSeq(id), sends);
    const stored = await store.conversations.readEntries(id, 0, sends + 1);
    assert.deepEqual(
      stored.map((e) => [Number(e.seq), e.clientMsgId]),
      Array.from({ length: sends }, (_, i) => [i + 1, `big-${i + 1}`]),
    );
    await shard.close();
  });

  it("publishes the events of a commit that a recovery completed for a writer that died", async () => {
    assert.ok(store !== undefined && cql !== undefined);
    const id = `g_recovered_${randomBytes(6).toString("hex")}`;
    await store.conversations.commit([
      {
        conversationId: id,
        conversation: { id, kind: "group", title: "t", createdAtMs: 1, membersVersion: 1 },
        append: [message(id, 1, "one", new Uint8Array([1]))],
        putMembers: [
          { userId: ALICE, role: "admin", joinedSeq: 1, addedAtMs: 1, deliveredUpTo: 0, readUpTo: 0 },
        ],
      },
    ]);
    // Another writer (a sequencer replica that crashed) reserved seqs 2..3 and died before
    // writing them: its intent is older than the grace period, for the next reader to complete.
    const lost = [message(id, 2, "two", new Uint8Array([2])), message(id, 3, "three", new Uint8Array([3]))];
    const intent: Intent = {
      id: "crashed-writer",
      conversationId: id,
      tsMicros: Date.now() * 1000 + 1000,
      atMs: Date.now() - 60_000,
      firstSeq: 2,
      lastSeq: 3,
      entries: lost.map((e) => ({ seq: Number(e.seq), bytes: toBinary(EntrySchema, e) })),
      replaced: [],
      idempotency: lost.map((e) => ({ deviceId: DEVICE, clientMsgId: e.clientMsgId, seq: Number(e.seq) })),
      members: [],
    };
    const reserved = await cql.execute(
      `UPDATE log_heads SET pending_id = ?, pending_last = ?, pending = ?, pending_at_ms = ?
        WHERE conversation_id = ? IF last_seq = 1 AND pending_id = ''`,
      [intent.id, intent.lastSeq, encodeIntent(intent), intent.atMs, id],
      { prepare: true },
    );
    assert.equal(reserved.wasApplied(), true);

    const bus = new InProcessBus(log);
    const seen = recordEvents(bus);
    const shard = newShard(bus);
    // The shard's load settles the head, which completes the dead writer's commit.
    const held = await shard.acquire(id);
    const { state } = held;
    shard.release(held);
    assert.equal(state.lastSeq, 3);
    await eventFor(seen, id, 2);
    await eventFor(seen, id, 3);
    await shard.close();
  });

  it("answers a retry from the store with the entry's own server time, and publishes its event", async () => {
    assert.ok(store !== undefined);
    const bus = new InProcessBus(log);
    const seen = recordEvents(bus);
    const sequencer = new Sequencer(store.conversations, bus, log, { shardCount: 1, limits: defaultLimits });
    try {
      const group = await sequencer.createGroup(ALICE, DEVICE, "g", [BOB]);
      const id = group.conversationId;
      // This replica's state now says the log ends at seq 1. Another writer (the replica that
      // owned the shard a moment ago) commits the device's send as seq 2 and dies before
      // publishing or answering; the device retries here.
      const serverTimeMs = 1_700_000_123_456;
      const original = create(EntrySchema, {
        ...message(id, 2, "sent-elsewhere", new Uint8Array([7])),
        serverTimeMs: BigInt(serverTimeMs),
      });
      await store.conversations.commit([
        {
          conversationId: id,
          append: [original],
          idempotency: [{ deviceId: DEVICE, clientMsgId: "sent-elsewhere", seq: 2 }],
        },
      ]);
      const [retried] = await sequencer.append([
        messageItem({ userId: ALICE, deviceId: DEVICE }, id, "sent-elsewhere", new Uint8Array([7])),
      ]);
      assert.ok(!(retried instanceof Error), `the retry was answered: ${String(retried)}`);
      assert.deepEqual(retried, { seq: 2, serverTimeMs, expiresAtMs: 0 });
      await eventFor(seen, id, 2);
    } finally {
      await sequencer.close();
    }
  });
});
