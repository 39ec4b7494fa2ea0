import { strict as assert } from "node:assert";
import { randomBytes } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Client, errors, types } from "cassandra-driver";
import { type Entry, EntrySchema, MessageBodySchema } from "../../../gen/switchboard/v1/entry_pb.js";
import { SCYLLA_SKIP, type ScratchKeyspace, scratchKeyspace } from "../../../test/helpers/scylla.js";
import type { ConversationWrite, DeviceRecord, MemberRecord, StoreEngine, UserRecord } from "../types.js";
import { ScyllaAccountStore } from "./accounts.js";
import { PENDING_GRACE_MS, readHead } from "./conversations/head.js";
import { ConversationLog } from "./conversations/log.js";
import { ConversationReads } from "./conversations/reads.js";
import { CommitRows } from "./conversations/rows.js";
import { openScyllaStore, type ScyllaOptions } from "./engine.js";
import { Cql, clientOptions, IDEMPOTENCY_SHARDS, type Row, type RunOptions } from "./schema.js";

/**
 * The engine's edges a review found on paper, each run against the real database: clocks that
 * disagree, a read in the middle of a commit, conditional writes whose outcome is unknown.
 */

const BUCKET_SIZE = 4;

const conversationId = (): string => `g_edge_${randomBytes(6).toString("hex")}`;

function message(id: string, seq: number, n: number): Entry {
  return create(EntrySchema, {
    conversationId: id,
    seq: BigInt(seq),
    senderUserId: "u_a",
    senderDeviceId: "dv_a",
    clientMsgId: `m-${n}`,
    serverTimeMs: 1_700_000_000_000n + BigInt(seq),
    body: {
      case: "message",
      value: create(MessageBodySchema, { payload: new TextEncoder().encode(`m-${n}`) }),
    },
  });
}

/** Appends seqs from..to with their idempotency records. */
function appendWrite(id: string, from: number, to: number): ConversationWrite {
  const entries = Array.from({ length: to - from + 1 }, (_, i) => message(id, from + i, from + i));
  return {
    conversationId: id,
    append: entries,
    idempotency: entries.map((e) => ({
      deviceId: e.senderDeviceId,
      clientMsgId: e.clientMsgId,
      seq: Number(e.seq),
    })),
  };
}

/** Runs fn with this process's wall clock moved by offsetMs (a writer whose clock is wrong). */
async function withClockOffset<T>(offsetMs: number, fn: () => Promise<T>): Promise<T> {
  const real = Date.now;
  Date.now = () => real() + offsetMs;
  try {
    return await fn();
  } finally {
    Date.now = real;
  }
}

/** What a faulty connection does to the next conditional write whose text contains `match`. */
interface Fault {
  match: string;
  /** "before": fails without sending it; "after": sends it, then fails as if the answer was lost. */
  when: "before" | "after";
}

/** The driver's error for an LWT whose Paxos round timed out: outcome unknown. */
function casTimeout(): Error {
  const err = new errors.ResponseError(
    types.responseErrorCodes.writeTimeout,
    "Server timeout during write query at consistency LOCAL_SERIAL (0 replica(s) acknowledged the write over 1 required)",
  );
  Object.assign(err, { writeType: "CAS" });
  return err;
}

/** A connection whose conditional writes time out as `faults` say, each fault once. */
class FaultyCql extends Cql {
  readonly faults: Fault[] = [];

  override lwt(query: string, params: unknown[]): Promise<types.ResultSet> {
    return this.faulty([query], () => super.lwt(query, params));
  }

  override lwtBatch(queries: { query: string; params: unknown[] }[]): Promise<types.ResultSet> {
    return this.faulty(
      queries.map((q) => q.query),
      () => super.lwtBatch(queries),
    );
  }

  private async faulty(texts: string[], send: () => Promise<types.ResultSet>): Promise<types.ResultSet> {
    const i = this.faults.findIndex((f) => texts.some((t) => t.includes(f.match)));
    if (i < 0) return send();
    const [fault] = this.faults.splice(i, 1);
    if (fault!.when === "after") await send();
    throw casTimeout();
  }
}

/** A promise and the function that resolves it. */
function signal(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/** Rejects with `message` if `promise` has not settled within ms (a liveness bound, not a timing check). */
function within<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
  });
  return Promise.race([promise, bound]).finally(() => clearTimeout(timer));
}

describe("ScyllaDB engine's edges", { skip: SCYLLA_SKIP }, () => {
  let options: ScyllaOptions;
  let keyspace: ScratchKeyspace | undefined;
  let store: StoreEngine | undefined;
  let client: Client | undefined;

  before(async () => {
    keyspace = await scratchKeyspace("edges", { bucketSize: BUCKET_SIZE });
    options = keyspace.options;
    store = await openScyllaStore(options);
    client = new Client(clientOptions(options, true));
  });

  after(async () => {
    await store?.close();
    await client?.shutdown();
    await keyspace?.drop();
  });

  const engine = (): { store: StoreEngine; cql: Cql } => {
    assert.ok(store !== undefined && client !== undefined);
    return { store, cql: new Cql(client) };
  };

  it("a crashed writer whose clock ran an hour ahead blocks its conversation only for the grace period", async () => {
    const { store, cql } = engine();
    const id = conversationId();
    await store.conversations.commit([appendWrite(id, 1, 1)]);
    // The writer reserves seq 2 with its clock an hour ahead, then dies before writing anything.
    class Crashing extends CommitRows {
      override async apply(): Promise<void> {
        throw new Error("the writer crashed");
      }
    }
    const writer = new ConversationLog(
      cql,
      new Crashing(cql, { bucketSize: BUCKET_SIZE, entryTtlSeconds: 0 }),
    );
    await assert.rejects(
      withClockOffset(3_600_000, () => writer.commit([appendWrite(id, 2, 2)])),
      /the writer crashed/,
    );
    // On the reader's clock the reservation is not in the future, whatever the writer's said.
    const head = await readHead(cql, id, true);
    assert.notEqual(head.pendingId, "");
    assert.ok(
      head.pendingAtMs <= Date.now(),
      `the reservation's age is measured on the writer's clock: ${head.pendingAtMs - Date.now()} ms ahead`,
    );
    // Another process completes it once the grace period has passed since it first saw it.
    const last = await within(
      store.conversations.getLastSeq(id),
      PENDING_GRACE_MS + 30_000,
      "the conversation stayed blocked well past the grace period",
    );
    assert.equal(last, 2);
    assert.equal(await store.conversations.getIdempotency(id, "dv_a", "m-2"), 2);
  });

  it("a read in the middle of a commit sees a prefix of it, never a hole between bucket slices", async () => {
    const { store, cql } = engine();
    const id = conversationId();
    await store.conversations.commit([appendWrite(id, 1, 1)]);
    // The writer appends 2..9: slices [2, 3] (bucket 0), [4..7] (bucket 1), [8, 9] (bucket 2),
    // written one after another. Its first slice waits until the reader has read bucket 0.
    const firstSliceHeld = signal();
    const readerReadBucket0 = signal();
    const secondSliceWritten = signal();
    let slices = 0;
    class WriterCql extends Cql {
      override async batch(queries: { query: string; params: unknown[] }[], options: RunOptions = {}) {
        const isSlice = queries[0]?.query.includes("log_entries") === true;
        const n = isSlice ? ++slices : 0;
        if (n === 1) {
          firstSliceHeld.resolve();
          await readerReadBucket0.promise;
        }
        const result = await super.batch(queries, options);
        if (n === 2) secondSliceWritten.resolve();
        return result;
      }
    }
    class ReaderCql extends Cql {
      override async *pages(query: string, params: unknown[], options: RunOptions = {}): AsyncGenerator<Row> {
        yield* super.pages(query, params, options);
        if (query.includes("log_entries") && params[1] === 0) {
          // Bucket 0 is read: the writer's first two slices land before bucket 1 is.
          readerReadBucket0.resolve();
          await secondSliceWritten.promise;
        }
      }
    }
    const settings = { bucketSize: BUCKET_SIZE, entryTtlSeconds: 0 };
    const writerCql = new WriterCql(cql.client);
    const writer = new ConversationLog(writerCql, new CommitRows(writerCql, settings));
    const committed = writer.commit([appendWrite(id, 2, 9)]);
    await firstSliceHeld.promise;
    const seen = await new ConversationReads(new ReaderCql(cql.client), settings).readEntries(id, 0, 100);
    await committed;
    const seqs = seen.map((e) => Number(e.seq));
    assert.deepEqual(
      seqs,
      Array.from({ length: seqs.length }, (_, i) => i + 1),
      `the read returned a hole: ${seqs.join(", ")}`,
    );
    assert.deepEqual(
      (await store.conversations.readEntries(id, 0, 100)).map((e) => Number(e.seq)),
      [1, 2, 3, 4, 5, 6, 7, 8, 9],
    );
  });

  it("an unmute, a cursor move and a later commit each win over the one before, though a writer's clock ran ahead", async () => {
    const { store } = engine();
    const id = conversationId();
    const alice = (over: Partial<MemberRecord> = {}): MemberRecord => ({
      userId: "u_alice",
      role: "member",
      joinedSeq: 1,
      addedAtMs: 1,
      deliveredUpTo: 0,
      readUpTo: 0,
      ...over,
    });
    // A writer whose clock runs an hour ahead (another process: its own driver client, whose
    // timestamps the skew also moves) commits seq 1 and Alice, muted: its cells carry its future
    // commit timestamp.
    const skewed = await openScyllaStore(options);
    try {
      await withClockOffset(3_600_000, () =>
        skewed.conversations.commit([
          { ...appendWrite(id, 1, 1), putMembers: [alice({ mutedUntilMs: 9e12 })] },
        ]),
      );
    } finally {
      await skewed.close();
    }
    assert.equal((await store.conversations.getMembers(id))[0]?.mutedUntilMs, 9e12);
    // Then, on a correct clock: Alice unmutes (a member write with no append) ...
    await store.conversations.commit([{ conversationId: id, putMembers: [alice()] }]);
    assert.equal(
      (await store.conversations.getMembers(id))[0]?.mutedUntilMs,
      undefined,
      "the unmute was lost",
    );
    // ... her cursors move ...
    await store.conversations.saveCursors(
      [{ conversationId: id, deviceId: "dv_alice", deliveredUpTo: 1, readUpTo: 1 }],
      [{ conversationId: id, userId: "u_alice", deliveredUpTo: 1, readUpTo: 1 }],
    );
    const moved = (await store.conversations.getMembers(id))[0];
    assert.deepEqual([moved?.deliveredUpTo, moved?.readUpTo], [1, 1], "the cursor move was lost");
    // ... and a later fenced commit (she becomes an admin) wins over both.
    await store.conversations.commit([
      { ...appendWrite(id, 2, 2), putMembers: [alice({ role: "admin", deliveredUpTo: 1, readUpTo: 1 })] },
    ]);
    const last = (await store.conversations.getMembers(id))[0];
    assert.equal(last?.role, "admin", "the commit after them was lost");
    assert.equal(last?.mutedUntilMs, undefined);
  });

  it("with idempotencyTtlSeconds, records expire on their own and no expiry index row is written", async () => {
    const { cql } = engine();
    const ttlStore = await openScyllaStore({ ...options, idempotencyTtlSeconds: 600 });
    try {
      const id = conversationId();
      const before = Date.now();
      await ttlStore.conversations.commit([appendWrite(id, 1, 2)]);
      // A retry is still answered from the record.
      assert.equal(await ttlStore.conversations.getIdempotency(id, "dv_a", "m-2"), 2);
      const ttl = await cql.one(
        "SELECT TTL(seq) AS ttl FROM idempotency WHERE conversation_id = ? AND device_id = ? AND client_msg_id = ?",
        [id, "dv_a", "m-1"],
      );
      const seconds = ttl?.get("ttl") as number | null;
      assert.ok(
        seconds !== null && seconds > 0 && seconds <= 600,
        `the record expires within 600 s (${seconds})`,
      );
      // The sweep's index has nothing of it: no write per send spent on it.
      const slot = Math.floor(before / 600_000);
      let indexed = 0;
      for (const s of [slot, slot + 1]) {
        for (let shard = 0; shard < IDEMPOTENCY_SHARDS; shard++) {
          for await (const row of cql.pages(
            "SELECT conversation_id FROM idempotency_by_time WHERE slot = ? AND shard = ?",
            [s, shard],
          )) {
            if (row.get("conversation_id") === id) indexed++;
          }
        }
      }
      assert.equal(indexed, 0);
    } finally {
      await ttlStore.close();
    }
  });

  describe("conditional writes that time out with an unknown outcome", () => {
    const accounts = (): { store: ScyllaAccountStore; cql: FaultyCql } => {
      assert.ok(client !== undefined);
      const cql = new FaultyCql(client);
      return { store: new ScyllaAccountStore(cql), cql };
    };
    const suffix = (): string => randomBytes(5).toString("hex");
    const user = (s: string): UserRecord => ({
      userId: `u_${s}`,
      username: `user_${s}`,
      displayName: "",
      createdAtMs: 1_700_000_000_000,
    });
    const device = (s: string, n: number, createdAtMs = 1_700_000_000_000 + n): DeviceRecord => ({
      deviceId: `dv_${s}_${n}`,
      userId: `u_${s}`,
      name: `device ${n}`,
      secretHash: "00",
      createdAtMs,
      revokedAtMs: 0,
    });

    it("createUser whose username claim applied but timed out registers the user", async () => {
      const { store, cql } = accounts();
      const s = suffix();
      cql.faults.push({ match: "INSERT INTO usernames", when: "after" });
      await store.createUser(user(s), device(s, 0));
      assert.equal((await store.getUserByUsername(`user_${s}`))?.userId, `u_${s}`);
      assert.equal((await store.getDevice(`dv_${s}_0`))?.userId, `u_${s}`);
    });

    it("createUser whose first device applied but timed out registers the user, leaving nothing half-made", async () => {
      const { store, cql } = accounts();
      const s = suffix();
      cql.faults.push({ match: "INSERT INTO user_devices", when: "after" });
      await store.createUser(user(s), device(s, 0));
      assert.equal((await store.getUserByUsername(`user_${s}`))?.userId, `u_${s}`);
      assert.deepEqual(
        (await store.listDevices(`u_${s}`)).map((d) => d.deviceId),
        [`dv_${s}_0`],
      );
      assert.equal((await store.getDevice(`dv_${s}_0`))?.userId, `u_${s}`);
    });

    it("createUser whose username claim timed out before applying holds nothing: the retry succeeds", async () => {
      const { store, cql } = accounts();
      const s = suffix();
      cql.faults.push({ match: "INSERT INTO usernames", when: "before" });
      await assert.rejects(store.createUser(user(s), device(s, 0)), /Server timeout/);
      await store.createUser(user(s), device(s, 0));
      assert.equal((await store.getUserByUsername(`user_${s}`))?.userId, `u_${s}`);
    });

    it("addDevice whose device id claim applied but timed out adds the device", async () => {
      const { store, cql } = accounts();
      const s = suffix();
      await store.createUser(user(s), device(s, 0));
      cql.faults.push({ match: "INSERT INTO devices_by_id", when: "after" });
      await store.addDevice(device(s, 1), 5);
      assert.equal((await store.getDevice(`dv_${s}_1`))?.userId, `u_${s}`);
    });

    it("addDevice whose batch applied but timed out adds the device, with no phantom left", async () => {
      const { store, cql } = accounts();
      const s = suffix();
      await store.createUser(user(s), device(s, 0));
      cql.faults.push({ match: "SET version", when: "after" });
      await store.addDevice(device(s, 1), 5);
      assert.equal(
        (await store.getDevice(`dv_${s}_1`))?.userId,
        `u_${s}`,
        "the device is listed but not found",
      );
      assert.deepEqual(
        (await store.listDevices(`u_${s}`)).map((d) => d.deviceId),
        [`dv_${s}_0`, `dv_${s}_1`],
      );
    });

    it("addDevice whose batch timed out before applying leaves nothing held: the retry succeeds", async () => {
      const { store, cql } = accounts();
      const s = suffix();
      await store.createUser(user(s), device(s, 0));
      cql.faults.push({ match: "SET version", when: "before" });
      await assert.rejects(store.addDevice(device(s, 1), 5), /Server timeout/);
      assert.equal(await store.getDevice(`dv_${s}_1`), undefined);
      await store.addDevice(device(s, 1), 5);
      assert.deepEqual(
        (await store.listDevices(`u_${s}`)).map((d) => d.deviceId),
        [`dv_${s}_0`, `dv_${s}_1`],
      );
    });
  });
});
