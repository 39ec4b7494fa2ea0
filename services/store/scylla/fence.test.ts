import { strict as assert } from "node:assert";
import { randomBytes } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { create, equals, toBinary } from "@bufbuild/protobuf";
import { Client } from "cassandra-driver";
import { type Entry, EntrySchema, MessageBodySchema } from "../../../gen/switchboard/v1/entry_pb.js";
import { SCYLLA_SKIP, type ScratchKeyspace, scratchKeyspace } from "../../../test/helpers/scylla.js";
import { isStoreError } from "../errors.js";
import type { StoreEngine } from "../types.js";
import { ConversationLog } from "./conversations/log.js";
import { CommitRows } from "./conversations/rows.js";
import { encodeIntent, type Intent } from "./conversations.js";
import { openScyllaStore, type ScyllaOptions } from "./engine.js";
import { Cql, clientOptions } from "./schema.js";

/**
 * The store's fence with two writers, as two sequencer replicas that both believe they own a shard
 * would be: two engines, each with its own driver client, append to the same conversation at the
 * same time. Exactly one wins each seq, no seq is reused or skipped, and the loser gets the store's
 * "conflict".
 */

const conversationId = (): string => `g_fence_${randomBytes(6).toString("hex")}`;

function message(id: string, seq: number, writer: string, n: number): Entry {
  return create(EntrySchema, {
    conversationId: id,
    seq: BigInt(seq),
    senderUserId: `u_${writer}`,
    senderDeviceId: `dv_${writer}`,
    clientMsgId: `${writer}-${n}`,
    serverTimeMs: 1_700_000_000_000n + BigInt(seq),
    body: {
      case: "message",
      value: create(MessageBodySchema, { payload: new TextEncoder().encode(`${writer}-${n}`) }),
    },
  });
}

/** Appends `entries` (renumbered from last + 1) with their idempotency records. */
function append(store: StoreEngine, id: string, entries: Entry[]): Promise<void> {
  return store.conversations.commit([
    {
      conversationId: id,
      append: entries,
      idempotency: entries.map((e) => ({
        deviceId: e.senderDeviceId,
        clientMsgId: e.clientMsgId,
        seq: Number(e.seq),
      })),
    },
  ]);
}

/** A message's intent at `seq`, reserved by a writer whose clock says it is a minute old. */
function staleIntent(id: string, entry: Entry, intentId: string): Intent {
  const seq = Number(entry.seq);
  return {
    id: intentId,
    conversationId: id,
    tsMicros: Date.now() * 1000 + 1000,
    atMs: Date.now() - 60_000,
    firstSeq: seq,
    lastSeq: seq,
    entries: [{ seq, bytes: toBinary(EntrySchema, entry) }],
    replaced: [],
    idempotency: [{ deviceId: entry.senderDeviceId, clientMsgId: entry.clientMsgId, seq }],
    members: [],
  };
}

/** Reserves an intent in the head row as its writer's reservation does. */
async function reserve(client: Client, intent: Intent): Promise<void> {
  const reserved = await client.execute(
    `UPDATE log_heads SET pending_id = ?, pending_last = ?, pending = ?, pending_at_ms = ?
      WHERE conversation_id = ? IF last_seq = ? AND pending_id = ''`,
    [
      intent.id,
      intent.lastSeq,
      encodeIntent(intent),
      intent.atMs,
      intent.conversationId,
      intent.firstSeq - 1,
    ],
    { prepare: true },
  );
  assert.equal(reserved.wasApplied(), true);
}

describe("ScyllaDB fence under two concurrent writers", { skip: SCYLLA_SKIP }, () => {
  let options: ScyllaOptions;
  let keyspace: ScratchKeyspace | undefined;
  let a: StoreEngine | undefined;
  let b: StoreEngine | undefined;

  before(async () => {
    keyspace = await scratchKeyspace("fence", { bucketSize: 4 });
    options = keyspace.options;
    // Two engines, two clients: nothing is shared but the database.
    a = await openScyllaStore(options);
    b = await openScyllaStore(options);
  });

  after(async () => {
    await a?.close();
    await b?.close();
    await keyspace?.drop();
  });

  /** The two engines, once before() opened them. */
  const engines = (): [StoreEngine, StoreEngine] => {
    assert.ok(a !== undefined && b !== undefined);
    return [a, b];
  };

  it("of two writers appending the same seqs at once, exactly one wins each time", async () => {
    const [a, b] = engines();
    const id = conversationId();
    const winners: string[] = [];
    for (let round = 0; round < 12; round++) {
      // Both read the head, then both append after it: the same seq, or overlapping ranges.
      const [lastA, lastB] = await Promise.all([
        a.conversations.getLastSeq(id),
        b.conversations.getLastSeq(id),
      ]);
      assert.equal(lastA, lastB);
      const next = lastA + 1;
      const fromA = [message(id, next, "a", round)];
      // Every third round B appends two entries, so the ranges overlap without being equal.
      const fromB =
        round % 3 === 2
          ? [message(id, next, "b", round), message(id, next + 1, "b", round + 100)]
          : [message(id, next, "b", round)];
      const results = await Promise.allSettled([append(a, id, fromA), append(b, id, fromB)]);
      const won = results.flatMap((r, i) => (r.status === "fulfilled" ? [i] : []));
      assert.equal(won.length, 1, `round ${round}: ${results.map((r) => r.status).join(", ")}`);
      for (const r of results) {
        if (r.status === "rejected") assert.ok(isStoreError(r.reason, "conflict"), String(r.reason));
      }
      const written = won[0] === 0 ? fromA : fromB;
      const lost = won[0] === 0 ? fromB : fromA;
      winners.push(won[0] === 0 ? "a" : "b");
      const stored = await b.conversations.readEntries(id, lastA, 10);
      assert.equal(stored.length, written.length);
      for (const [i, e] of written.entries()) assert.ok(equals(EntrySchema, stored[i]!, e), `seq ${e.seq}`);
      // The loser left nothing: no idempotency record points at a seq it does not hold.
      for (const e of lost) {
        assert.equal(await a.conversations.getIdempotency(id, e.senderDeviceId, e.clientMsgId), undefined);
      }
      assert.equal(await a.conversations.getLastSeq(id), lastA + written.length);
    }
    const entries = await a.conversations.readEntries(id, 0, 100);
    assert.deepEqual(
      entries.map((e) => Number(e.seq)),
      Array.from({ length: entries.length }, (_, i) => i + 1),
    );
  });

  it("two writers retrying on conflict store every message once, at seqs 1..n with no gap", async () => {
    const [a, b] = engines();
    const id = conversationId();
    const perWriter = 15;
    const conflicts = { a: 0, b: 0 };
    // Each writer behaves as a sequencer replica: it reads the head, appends after it, and on the
    // store's conflict reads the head again and retries the same message (same client message id).
    const run = async (store: StoreEngine, writer: "a" | "b"): Promise<void> => {
      for (let n = 0; n < perWriter; n++) {
        for (;;) {
          const last = await store.conversations.getLastSeq(id);
          try {
            await append(store, id, [message(id, last + 1, writer, n)]);
            break;
          } catch (err) {
            assert.ok(isStoreError(err, "conflict"), String(err));
            conflicts[writer]++;
          }
        }
      }
    };
    await Promise.all([run(a, "a"), run(b, "b")]);
    const entries = await a.conversations.readEntries(id, 0, 100);
    assert.deepEqual(
      entries.map((e) => Number(e.seq)),
      Array.from({ length: 2 * perWriter }, (_, i) => i + 1),
    );
    const ids = entries.map((e) => e.clientMsgId);
    assert.equal(new Set(ids).size, ids.length, "a message stored twice");
    for (const e of entries) {
      assert.equal(await b.conversations.getIdempotency(id, e.senderDeviceId, e.clientMsgId), Number(e.seq));
    }
    assert.equal(await b.conversations.getLastSeq(id), 2 * perWriter);
  });

  it("a reservation whose writer died is completed by the other writer, never given to another message", async () => {
    const [a, b] = engines();
    const id = conversationId();
    await append(a, id, [message(id, 1, "a", 0)]);
    // Writer A reserves seq 2 (its message, its idempotency record, a new member) and dies before
    // writing anything else: the intent sits in the head row, older than the grace period.
    const lost = message(id, 2, "a", 1);
    const intent: Intent = {
      id: "writer-a-crashed",
      conversationId: id,
      tsMicros: Date.now() * 1000 + 1000,
      atMs: Date.now() - 60_000,
      firstSeq: 2,
      lastSeq: 2,
      entries: [{ seq: 2, bytes: toBinary(EntrySchema, lost) }],
      replaced: [],
      idempotency: [{ deviceId: lost.senderDeviceId, clientMsgId: lost.clientMsgId, seq: 2 }],
      members: [
        {
          put: {
            userId: "u_carol",
            role: "member",
            joinedSeq: 2,
            addedAtMs: 1,
            deliveredUpTo: 0,
            readUpTo: 0,
          },
        },
      ],
    };
    const cql = new Client(clientOptions(options, true));
    try {
      const reserved = await cql.execute(
        `UPDATE log_heads SET pending_id = ?, pending_last = ?, pending = ?, pending_at_ms = ?
          WHERE conversation_id = ? IF last_seq = 1 AND pending_id = ''`,
        [intent.id, intent.lastSeq, encodeIntent(intent), intent.atMs, id],
        { prepare: true },
      );
      assert.equal(reserved.wasApplied(), true);
    } finally {
      await cql.shutdown();
    }
    // Writer B, taking over, tries seq 2 for its own message: refused, and A's commit completed.
    const mine = message(id, 2, "b", 0);
    await assert.rejects(append(b, id, [mine]), (err: unknown) => isStoreError(err, "conflict"));
    assert.equal(await b.conversations.getLastSeq(id), 2);
    const [stored] = await b.conversations.readEntries(id, 1, 10);
    assert.ok(stored !== undefined && equals(EntrySchema, stored, lost), "seq 2 holds A's message");
    // A's client retrying with the same client message id is answered with seq 2.
    assert.equal(await b.conversations.getIdempotency(id, lost.senderDeviceId, lost.clientMsgId), 2);
    assert.deepEqual(
      (await b.conversations.getMembers(id)).map((m) => m.userId),
      ["u_carol"],
    );
    // B's message takes the next seq.
    await append(b, id, [message(id, 3, "b", 0)]);
    assert.deepEqual(
      (await a.conversations.readEntries(id, 0, 10)).map((e) => e.clientMsgId),
      ["a-0", "a-1", "b-0"],
    );
  });

  it("a recovery claims the intent before applying it, so its writer's release cannot take it back", async () => {
    const [a, b] = engines();
    const id = conversationId();
    await append(a, id, [message(id, 1, "a", 0)]);
    // Writer A reserved seq 2 for its message; its clock is behind, so to a reader it looks dead.
    const sent = message(id, 2, "a", 1);
    const intent = staleIntent(id, sent, "writer-a-slow");
    const client = new Client(clientOptions(options, true));
    try {
      await reserve(client, intent);
      // A reader recovers it, and is held just before writing the intent's rows.
      let applying!: () => void;
      const started = new Promise<void>((resolve) => {
        applying = resolve;
      });
      let proceed!: () => void;
      const gate = new Promise<void>((resolve) => {
        proceed = resolve;
      });
      const cql = new Cql(client);
      class HeldRows extends CommitRows {
        override async apply(i: Intent): Promise<void> {
          applying();
          await gate;
          return super.apply(i);
        }
      }
      const reader = new ConversationLog(
        cql,
        new HeldRows(cql, { bucketSize: options.bucketSize ?? 1000, entryTtlSeconds: 0 }),
      );
      const recovered = reader.getLastSeq(id);
      await started;
      // Meanwhile writer A, alive after all, gives its reservation back (another part of its
      // commit was refused), as log.ts's release does.
      const released = await client.execute(
        `UPDATE log_heads SET pending_id = '', pending_last = 0, pending = ?, pending_at_ms = 0
          WHERE conversation_id = ? IF pending_id = ?`,
        [Buffer.alloc(0), id, intent.id],
        { prepare: true },
      );
      proceed();
      const last = await recovered;
      assert.equal(released.wasApplied(), false, "the release took back an intent being recovered");
      assert.equal(last, 2);
    } finally {
      await client.shutdown();
    }
    // Whatever happened, a retry of A's message must be answered with a seq that holds it.
    const next = (await b.conversations.getLastSeq(id)) + 1;
    await append(b, id, [message(id, next, "b", 0)]);
    const seq = await b.conversations.getIdempotency(id, sent.senderDeviceId, sent.clientMsgId);
    assert.ok(seq !== undefined);
    const [holder] = await b.conversations.readEntries(id, seq - 1, 1);
    assert.equal(holder?.clientMsgId, sent.clientMsgId, `seq ${seq} holds another message`);
  });
});
