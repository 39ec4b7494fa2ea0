import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { AppendItemSchema, SequencerService } from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import { MessageBodySchema, OutgoingEntrySchema } from "../../gen/switchboard/v1/entry_pb.js";
import { InProcessBus } from "../bus/in-process.js";
import { errorBoundary } from "../common/boundary.js";
import { defaultLimits } from "../common/config.js";
import { directConversationId } from "../common/ids.js";
import { createLogger } from "../common/log.js";
import { shardOf } from "../common/shard.js";
import { openLmdbStore } from "../store/lmdb/engine.js";
import type { StoreEngine } from "../store/types.js";
import { sequencerService } from "./handler.js";
import { replicaOf, type SequencerClient, shardedSequencerClient, shardsOfReplica } from "./router.js";
import { Sequencer } from "./sequencer.js";

const log = createLogger({ level: "silent" });
const SHARDS = 8;
const users = Array.from({ length: 6 }, (_, i) => `u_00000000000000000000000${i}a`);
const device = (user: string) => `dv_${user.slice(2)}`;

describe("the shard map", () => {
  it("gives every shard exactly one replica, by ordinal", () => {
    const owned = [0, 1, 2].map((o) => shardsOfReplica(o, 3, SHARDS));
    assert.deepEqual(owned, [
      [0, 3, 6],
      [1, 4, 7],
      [2, 5],
    ]);
    assert.deepEqual(owned.flat().sort(), [...Array(SHARDS).keys()]);
    assert.equal(replicaOf("g_abc", 3, SHARDS), shardOf("g_abc", SHARDS) % 3);
  });

  it("refuses maps that cannot work", () => {
    assert.throws(() => shardsOfReplica(3, 3, SHARDS), /outside 0..2/);
    assert.throws(() => shardsOfReplica(0, 0, SHARDS), /at least 1/);
    assert.throws(() => shardsOfReplica(0, 9, SHARDS), /without a shard/);
  });
});

describe("shardedSequencerClient over two replicas, each on its own store", () => {
  const dirs: string[] = [];
  const engines: StoreEngine[] = [];
  const sequencers: Sequencer[] = [];
  let replicas: SequencerClient[];
  let client: SequencerClient;

  before(async () => {
    replicas = [];
    for (let ordinal = 0; ordinal < 2; ordinal++) {
      const dir = await mkdtemp(join(tmpdir(), "router-test-"));
      dirs.push(dir);
      const engine = await openLmdbStore({ path: dir });
      engines.push(engine);
      const sequencer = new Sequencer(engine.conversations, new InProcessBus(log), log, {
        shardCount: SHARDS,
        ownedShards: shardsOfReplica(ordinal, 2, SHARDS),
        limits: defaultLimits,
      });
      sequencers.push(sequencer);
      const transport = createRouterTransport(
        (r) => r.service(SequencerService, sequencerService(sequencer)),
        {
          router: { interceptors: [errorBoundary(log)] },
        },
      );
      replicas.push(createClient(SequencerService, transport));
    }
    client = shardedSequencerClient(replicas, SHARDS);
  });

  after(async () => {
    for (const s of sequencers) await s.close();
    for (const e of engines) await e.close();
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it("creates groups on the replica that owns them, spread over both", async () => {
    const owners = new Set<number>();
    for (let i = 0; i < 6; i++) {
      const { conversation } = await client.createGroup({
        userId: users[0]!,
        deviceId: device(users[0]!),
        title: `g${i}`,
        memberUserIds: [users[1]!],
      });
      const id = conversation!.conversationId;
      const owner = replicaOf(id, 2, SHARDS);
      owners.add(owner);
      // The owner knows it; the other replica refuses it precisely instead of guessing.
      await replicas[owner]!.getMembers({ conversationId: id });
      await assert.rejects(replicas[1 - owner]!.getMembers({ conversationId: id }), (err: unknown) => {
        const e = ConnectError.from(err);
        return (
          e.code === Code.FailedPrecondition && /is not owned by this sequencer replica/.test(e.rawMessage)
        );
      });
    }
    assert.deepEqual([...owners].sort(), [0, 1]);
  });

  it("splits an append batch by owner and answers in the caller's order", async () => {
    // Direct conversations of one user with several peers land on both replicas. This user is in
    // none of the groups above, so the user-level reads below see exactly these.
    const me = users[5]!;
    const peers = users.slice(0, 5);
    const ids: string[] = [];
    for (const peer of peers) {
      const { conversation } = await client.openDirect({
        userId: me,
        peerUserId: peer,
        deviceId: device(me),
      });
      assert.equal(conversation!.conversationId, directConversationId(me, peer));
      ids.push(conversation!.conversationId);
    }
    assert.equal(
      new Set(ids.map((id) => replicaOf(id, 2, SHARDS))).size,
      2,
      "the fixture must span both replicas",
    );
    const items = ids.flatMap((conversationId, i) =>
      [0, 1].map((n) =>
        create(AppendItemSchema, {
          senderUserId: me,
          senderDeviceId: device(me),
          entry: create(OutgoingEntrySchema, {
            clientMsgId: `split-${i}-${n}`,
            conversationId,
            body: { case: "message", value: create(MessageBodySchema, { payload: new Uint8Array([i, n]) }) },
          }),
        }),
      ),
    );
    const { results } = await client.append({ items });
    assert.equal(results.length, items.length);
    for (const [k, r] of results.entries()) {
      assert.equal(r.errorCode, 0, r.errorMessage);
      // Each conversation opened with a CREATED entry at seq 1, then our two messages.
      assert.equal(r.seq, BigInt(2 + (k % 2)));
    }

    // User-level reads gather every replica's share.
    const sync = await client.getSyncState({ userId: me, deviceId: device(me) });
    assert.deepEqual(sync.conversations.map((c) => c.conversationId).sort(), [...ids].sort());
    const listed = await client.listConversations({ userId: me, deviceId: device(me) });
    assert.equal(listed.conversations.length, ids.length);
    const active = listed.conversations.map((c) => Number(c.lastActiveMs));
    assert.deepEqual(
      active,
      [...active].sort((a, b) => b - a),
      "listed newest first",
    );
    const { contactUserIds, directContactUserIds } = await client.findContacts({
      userId: me,
      peerUserIds: [...users.slice(1), "u_nobody"],
    });
    assert.deepEqual(contactUserIds, users.slice(1));
    // The direct ones (spread over both replicas) are all kept by the merge; oneself is not one.
    assert.deepEqual(
      directContactUserIds,
      users.slice(1).filter((u) => peers.includes(u)),
    );
  });

  it("fails only the items of a replica that is down", async () => {
    // Two of the conversations opened above, one on each replica; replica 0 goes down.
    const me = users[5]!;
    const ids = users.slice(0, 5).map((peer) => directConversationId(me, peer));
    const a = ids.find((id) => replicaOf(id, 2, SHARDS) === 0);
    const other = ids.find((id) => replicaOf(id, 2, SHARDS) === 1);
    assert.ok(a && other, "needs conversations on both replicas");
    const down = 0;
    const broken: SequencerClient = {
      ...replicas[down]!,
      append: () => Promise.reject(new ConnectError("connect ECONNREFUSED", Code.Unavailable)),
    };
    const partial = shardedSequencerClient(
      down === 0 ? [broken, replicas[1]!] : [replicas[0]!, broken],
      SHARDS,
    );
    const items = [a, other].map((conversationId, i) =>
      create(AppendItemSchema, {
        senderUserId: me,
        senderDeviceId: device(me),
        entry: create(OutgoingEntrySchema, {
          clientMsgId: `down-${i}`,
          conversationId,
          body: { case: "message", value: create(MessageBodySchema, { payload: new Uint8Array([i]) }) },
        }),
      }),
    );
    const { results } = await partial.append({ items });
    assert.equal(results[0]!.errorCode, Code.Unavailable);
    assert.equal(results[1]!.errorCode, 0, results[1]!.errorMessage);
    assert.ok(results[1]!.seq > 0n);
  });

  it("keeps every call on the home replica without failover, so a down replica means UNAVAILABLE", async () => {
    // On LMDB no other replica can serve a shard: sending its calls elsewhere would turn an
    // outage the device retries into the other replica's FAILED_PRECONDITION, refused for good.
    const me = users[5]!;
    const ids = users.slice(0, 5).map((peer) => directConversationId(me, peer));
    const onOne = ids.find((id) => replicaOf(id, 2, SHARDS) === 1)!;
    const refused = Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:1"), { code: "ECONNREFUSED" });
    const dead = new Proxy(replicas[1]!, {
      get: () => () =>
        Promise.reject(new ConnectError(refused.message, Code.Unavailable, undefined, undefined, refused)),
    });
    const staticMap = shardedSequencerClient([replicas[0]!, dead], SHARDS);
    for (let attempt = 0; attempt < 2; attempt++) {
      await assert.rejects(
        staticMap.getHistory({ userId: me, deviceId: device(me), conversationId: onOne }),
        (err: unknown) => ConnectError.from(err).code === Code.Unavailable,
      );
      const { results } = await staticMap.append({
        items: [
          create(AppendItemSchema, {
            senderUserId: me,
            senderDeviceId: device(me),
            entry: create(OutgoingEntrySchema, {
              clientMsgId: `static-${attempt}`,
              conversationId: onOne,
              body: { case: "message", value: create(MessageBodySchema, { payload: new Uint8Array([1]) }) },
            }),
          }),
        ],
      });
      assert.equal(results[0]!.errorCode, Code.Unavailable, results[0]!.errorMessage);
    }
    // With failover the same calls go on to the next replica in ring order, which (holding no
    // lease here) answers as the static map does: proof that the call did move.
    const moving = shardedSequencerClient([replicas[0]!, dead], SHARDS, { failover: true });
    await assert.rejects(
      moving.getHistory({ userId: me, deviceId: device(me), conversationId: onOne }),
      (err: unknown) => /is not owned by this sequencer replica/.test(ConnectError.from(err).rawMessage),
    );
  });

  it("answers the sync state in part while a replica is down, naming it, and fails on a refusal", async () => {
    const me = users[5]!;
    const ids = users.slice(0, 5).map((peer) => directConversationId(me, peer));
    const down = (reason: ConnectError): SequencerClient => ({
      ...replicas[1]!,
      getSyncState: () => Promise.reject(reason),
    });
    const partial = shardedSequencerClient(
      [replicas[0]!, down(new ConnectError("connect ECONNREFUSED", Code.Unavailable))],
      SHARDS,
    );
    const sync = await partial.getSyncState({ userId: me, deviceId: device(me) });
    assert.deepEqual(sync.unansweredReplicas, [1]);
    assert.deepEqual(
      sync.conversations.map((c) => c.conversationId).sort(),
      ids.filter((id) => replicaOf(id, 2, SHARDS) === 0).sort(),
      "the live replica's conversations, and only those",
    );
    // A refusal is an answer, not an outage: the whole call fails with it.
    const refusing = shardedSequencerClient(
      [replicas[0]!, down(new ConnectError("no", Code.PermissionDenied))],
      SHARDS,
    );
    await assert.rejects(refusing.getSyncState({ userId: me, deviceId: device(me) }), (err: unknown) => {
      return ConnectError.from(err).code === Code.PermissionDenied;
    });
    const complete = await client.getSyncState({ userId: me, deviceId: device(me) });
    assert.deepEqual(complete.unansweredReplicas, []);
  });
});
