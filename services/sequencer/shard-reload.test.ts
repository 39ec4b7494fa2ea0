import { strict as assert } from "node:assert";
import { randomBytes } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import { Client } from "cassandra-driver";
import { EntrySchema, MessageBodySchema } from "../../gen/switchboard/v1/entry_pb.js";
import { SCYLLA_SKIP, type ScratchKeyspace, scratchKeyspace } from "../../test/helpers/scylla.js";
import { InProcessBus } from "../bus/in-process.js";
import { createLogger } from "../common/log.js";
import { encodeIntent, type Intent } from "../store/scylla/conversations.js";
import { openScyllaStore, type ScyllaOptions } from "../store/scylla/engine.js";
import { clientOptions } from "../store/scylla/schema.js";
import type { ConversationRecord, MemberRecord, StoreEngine } from "../store/types.js";
import { HotStateBudget } from "./hot-state.js";
import { PublishOutbox } from "./outbox.js";
import { Shard } from "./shard.js";

/**
 * A shard's reload against the ScyllaDB engine (on the test's Cassandra): a writer that crashed
 * after reserving a commit leaves it pending, and the next `getLastSeq` completes it, members and
 * metadata included. A reload that read the members beside the head, instead of after it, kept
 * the members from before that commit.
 */

const log = createLogger({ level: "silent" });

const member = (userId: string): MemberRecord => ({
  userId,
  role: "member",
  joinedSeq: 1,
  addedAtMs: 1,
  deliveredUpTo: 0,
  readUpTo: 0,
});

const entry = (conversationId: string, seq: number) =>
  create(EntrySchema, {
    conversationId,
    seq: BigInt(seq),
    senderUserId: "u_alice",
    senderDeviceId: "dv_alice",
    clientMsgId: `c${seq}`,
    serverTimeMs: 1_700_000_000_000n + BigInt(seq),
    body: { case: "message", value: create(MessageBodySchema, { payload: new Uint8Array([seq]) }) },
  });

describe("Shard reload on the ScyllaDB engine", { skip: SCYLLA_SKIP }, () => {
  let options: ScyllaOptions;
  let keyspace: ScratchKeyspace | undefined;
  let store: StoreEngine | undefined;
  let cql: Client | undefined;

  before(async () => {
    keyspace = await scratchKeyspace("reload");
    options = keyspace.options;
    store = await openScyllaStore(options);
    cql = new Client(clientOptions(options, true));
  });

  after(async () => {
    await store?.close();
    await cql?.shutdown();
    await keyspace?.drop();
  });

  it("reads members and metadata after the head, so a commit the head completes is in them", async () => {
    assert.ok(store !== undefined && cql !== undefined);
    const id = `g_reload_${randomBytes(6).toString("hex")}`;
    const old: ConversationRecord = { id, kind: "group", title: "Old", createdAtMs: 1, membersVersion: 1 };
    await store.conversations.commit([
      {
        conversationId: id,
        conversation: old,
        append: [entry(id, 1)],
        putMembers: [member("u_alice"), member("u_bob")],
      },
    ]);
    // A writer reserved seq 2 (a rename and Bob's removal) and died before writing anything: its
    // intent sits in the head row, older than the grace period, for the next reader to complete.
    const intent: Intent = {
      id: "crashed-writer",
      conversationId: id,
      tsMicros: Date.now() * 1000 + 1000,
      atMs: Date.now() - 60_000,
      firstSeq: 2,
      lastSeq: 2,
      entries: [{ seq: 2, bytes: toBinary(EntrySchema, entry(id, 2)) }],
      replaced: [],
      conversation: { ...old, title: "New", membersVersion: 2 },
      idempotency: [{ deviceId: "dv_alice", clientMsgId: "c2", seq: 2 }],
      members: [{ remove: "u_bob" }],
    };
    const reserved = await cql.execute(
      `UPDATE log_heads SET pending_id = ?, pending_last = ?, pending = ?, pending_at_ms = ?
        WHERE conversation_id = ? IF last_seq = 1 AND pending_id = ''`,
      [intent.id, intent.lastSeq, encodeIntent(intent), intent.atMs, id],
      { prepare: true },
    );
    assert.equal(reserved.wasApplied(), true);

    const shard = new Shard(
      0,
      store.conversations,
      new PublishOutbox(new InProcessBus(log), log),
      log,
      100,
      new HotStateBudget(64 * 1024 * 1024),
    );
    const held = await shard.acquire(id);
    const { state } = held;
    try {
      assert.equal(state.lastSeq, 2);
      assert.deepEqual([...state.members.keys()], ["u_alice"], "Bob was removed by the completed commit");
      assert.equal(state.record?.title, "New");
      assert.equal(state.record?.membersVersion, 2);
    } finally {
      shard.release(held);
    }
    assert.deepEqual(
      (await store.conversations.getMembers(id)).map((m) => m.userId),
      ["u_alice"],
    );
  });
});
