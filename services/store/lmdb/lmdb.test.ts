import { strict as assert } from "node:assert";
import { spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { create } from "@bufbuild/protobuf";
import { open } from "lmdb";
import { EntrySchema, MessageBodySchema } from "../../../gen/switchboard/v1/entry_pb.js";
import { UnavailableError } from "../../common/errors.js";
import { runAccountStoreConformance } from "../conformance/accounts.js";
import { runAvatarConformance } from "../conformance/avatars.js";
import { runConversationStoreConformance } from "../conformance/conversations.js";
import { runExpiryConformance } from "../conformance/expiry.js";
import { runKeyStoreConformance } from "../conformance/keys.js";
import { runPinConformance } from "../conformance/pins.js";
import { runSafetyStoreConformance } from "../conformance/safety.js";
import type { ConversationUnit } from "./conversation-writes.js";
import { openLmdbStore } from "./engine.js";
import { MOVE_SLICE } from "./idempotency-tail.js";
import { StorageFault } from "./storage-fault.js";
import { crashWriteWorker, WriteThread } from "./write-thread.js";

const dirs: string[] = [];

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "switchboard-lmdb-"));
  dirs.push(dir);
  return dir;
}

after(async () => {
  await Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true })));
});

const openFresh = async () => openLmdbStore({ path: await tempDir() });

runConversationStoreConformance(openFresh);
runAccountStoreConformance(openFresh);
runKeyStoreConformance(openFresh);
runSafetyStoreConformance(openFresh);
runExpiryConformance(openFresh);
runPinConformance(openFresh);
runAvatarConformance(openFresh);

function message(conversationId: string, seq: number) {
  return create(EntrySchema, {
    conversationId,
    seq: BigInt(seq),
    body: { case: "message", value: create(MessageBodySchema, { payload: new Uint8Array([seq % 256]) }) },
  });
}

describe("LMDB engine", () => {
  it("keeps every kind of record across close and reopen", async () => {
    // A dot in the name must not turn the directory into a file name.
    const path = join(await tempDir(), "store.lmdb");
    const first = await openLmdbStore({ path, mapSizeBytes: 1 << 20 });
    const member = {
      userId: "u_a",
      role: "admin" as const,
      joinedSeq: 1,
      addedAtMs: 1,
      deliveredUpTo: 0,
      readUpTo: 0,
    };
    await first.conversations.commit([
      {
        conversationId: "g_1",
        conversation: { id: "g_1", kind: "group", title: "T", createdAtMs: 1, membersVersion: 1 },
        append: [message("g_1", 1), message("g_1", 2)],
        idempotency: [{ deviceId: "dv_a", clientMsgId: "c1", seq: 1 }],
        putMembers: [member],
      },
    ]);
    await first.conversations.saveCursors(
      [{ conversationId: "g_1", deviceId: "dv_a", deliveredUpTo: 2, readUpTo: 1 }],
      [{ conversationId: "g_1", userId: "u_a", deliveredUpTo: 2, readUpTo: 1 }],
    );
    const user = { userId: "u_a", username: "alice", displayName: "Alice", createdAtMs: 1 };
    const device = {
      deviceId: "dv_a",
      userId: "u_a",
      name: "p",
      secretHash: "00",
      createdAtMs: 1,
      revokedAtMs: 0,
    };
    await first.accounts.createUser(user, device);
    await first.accounts.putLinkCode({ codeHash: "h", userId: "u_a", expiresAtMs: 9 });
    await first.close();
    await first.close();

    const second = await openLmdbStore({ path });
    try {
      const c = second.conversations;
      assert.equal(await c.getLastSeq("g_1"), 2);
      assert.deepEqual(
        (await c.readEntries("g_1", 0, 10)).map((e) => e.seq),
        [1n, 2n],
      );
      assert.equal((await c.getConversation("g_1"))?.title, "T");
      assert.equal(await c.getIdempotency("g_1", "dv_a", "c1"), 1);
      assert.deepEqual(await c.getMembers("g_1"), [{ ...member, deliveredUpTo: 2, readUpTo: 1 }]);
      assert.deepEqual(await c.listUserConversations("u_a"), [{ conversationId: "g_1", joinedSeq: 1 }]);
      assert.equal((await c.getDeviceCursors("g_1", ["dv_a"])).length, 1);
      assert.deepEqual(await second.accounts.getUserByUsername("alice"), user);
      assert.deepEqual(await second.accounts.listDevices("u_a"), [device]);
      assert.equal((await second.accounts.takeLinkCode("h"))?.userId, "u_a");
    } finally {
      await second.close();
    }
  });

  it("group-commits concurrent calls into one transaction", async () => {
    const engine = await openFresh();
    try {
      const before = engine.lastTransactionId();
      await Promise.all(
        Array.from({ length: 100 }, (_, i) =>
          engine.conversations.commit([{ conversationId: `g_${i}`, append: [message(`g_${i}`, 1)] }]),
        ),
      );
      const used = engine.lastTransactionId() - before;
      assert.ok(used >= 1 && used <= 2, `100 concurrent commits took ${used} transactions`);
    } finally {
      await engine.close();
    }
  });

  it("applies concurrent calls in call order, so one caller may pipeline seqs", async () => {
    const engine = await openFresh();
    try {
      const ids = Array.from({ length: 20 }, (_, i) => `g_${i}`);
      const calls: Promise<void>[] = [];
      for (let seq = 1; seq <= 10; seq++) {
        for (const id of ids)
          calls.push(engine.conversations.commit([{ conversationId: id, append: [message(id, seq)] }]));
      }
      await Promise.all(calls);
      for (const id of ids) assert.equal(await engine.conversations.getLastSeq(id), 10);
    } finally {
      await engine.close();
    }
  });

  it("rolls back a commit that fails after its first puts, and only that commit", async () => {
    const engine = await openFresh();
    try {
      const c = engine.conversations;
      // The key-size check of LMDB fires on the idempotency put, after the entries were put.
      const failing = c.commit([
        {
          conversationId: "g_bad",
          conversation: { id: "g_bad", kind: "group", title: "", createdAtMs: 1, membersVersion: 0 },
          append: [message("g_bad", 1)],
          idempotency: [{ deviceId: "dv_a", clientMsgId: "x".repeat(3000), seq: 1 }],
        },
      ]);
      const neighbour = c.commit([{ conversationId: "g_good", append: [message("g_good", 1)] }]);
      await assert.rejects(failing, /key size/i);
      await neighbour;
      assert.equal(await c.getLastSeq("g_bad"), 0);
      assert.deepEqual(await c.readEntries("g_bad", 0, 10), []);
      assert.equal(await c.getConversation("g_bad"), undefined);
      assert.equal(await c.getLastSeq("g_good"), 1);
    } finally {
      await engine.close();
    }
  });

  it("a read made as soon as a commit resolved sees it, though lmdb-js would keep its read snapshot", async (t) => {
    // Commits are applied on the write thread's worker; this thread's lmdb-js renews its read
    // snapshot only on a setTimeout(0). With timers held, only the write thread's reset of the
    // snapshot, before it resolves a commit, can make the commit visible here.
    const engine = await openFresh();
    const c = engine.conversations;
    t.mock.timers.enable({ apis: ["setTimeout"] });
    try {
      for (let seq = 1; seq <= 5; seq++) {
        assert.equal(await c.getLastSeq("g_r"), seq - 1);
        await c.commit([{ conversationId: "g_r", append: [message("g_r", seq)] }]);
        assert.equal(await c.getLastSeq("g_r"), seq, `seq ${seq} is visible once its commit resolved`);
        assert.equal((await c.readEntries("g_r", seq - 1, 10)).length, 1);
      }
    } finally {
      t.mock.timers.reset();
      await engine.close();
    }
  });

  it("engines open at once share the write thread, and each closes alone", async () => {
    const [a, b] = await Promise.all([openFresh(), openFresh()]);
    try {
      await Promise.all([
        a.conversations.commit([{ conversationId: "g_a", append: [message("g_a", 1)] }]),
        b.conversations.commit([{ conversationId: "g_b", append: [message("g_b", 1)] }]),
      ]);
      await a.close();
      await b.conversations.commit([{ conversationId: "g_b", append: [message("g_b", 2)] }]);
      assert.equal(await b.conversations.getLastSeq("g_b"), 2);
      assert.equal(await b.conversations.getLastSeq("g_a"), 0, "each engine writes its own environment");
      await assert.rejects(
        a.conversations.commit([{ conversationId: "g_a", append: [message("g_a", 2)] }]),
        /closing/,
      );
    } finally {
      await a.close();
      await b.close();
    }
  });

  it("a write that cannot cross to the write thread fails alone, and the store goes on", async () => {
    const engine = await openFresh();
    try {
      const c = engine.conversations;
      // A caller's bug: a function cannot be cloned to the worker. Thrown where the batch is
      // posted (a microtask), it must reach this caller, not end the process.
      const cursor = {
        conversationId: "g_x",
        deviceId: "dv_a",
        deliveredUpTo: 1,
        readUpTo: 0,
        note: () => 0,
      };
      await assert.rejects(c.saveCursors([cursor], []), /could not be cloned/);
      await c.commit([{ conversationId: "g_x", append: [message("g_x", 1)] }]);
      assert.equal(await c.getLastSeq("g_x"), 1);
    } finally {
      await engine.close();
    }
  });

  it("an environment the write thread cannot open refuses its writes as a storage fault; others go on", async () => {
    const file = join(await tempDir(), "a-file");
    await writeFile(file, "");
    const thread = new WriteThread(file, undefined, () => {});
    const err = await thread
      .run({ op: "floors", floors: [{ deviceId: "dv_a", conversationId: "g_f", floorSeq: 1 }] })
      .catch((e: unknown) => e);
    await thread.close();
    assert.ok(err instanceof StorageFault, String(err));
    assert.match(err.message, /could not be opened for writing/);
    const engine = await openFresh();
    try {
      await engine.conversations.commit([{ conversationId: "g_f", append: [message("g_f", 1)] }]);
      assert.equal(await engine.conversations.getLastSeq("g_f"), 1);
    } finally {
      await engine.close();
    }
  });

  it("a write thread that dies fails what it held as a storage fault, and the next write starts another", async () => {
    const engine = await openFresh();
    try {
      const c = engine.conversations;
      await c.commit([{ conversationId: "g_d", append: [message("g_d", 1)] }]);
      // The worker is told to die, then 200 commits are handed to it in the same turn: it reads
      // its messages in order, so it dies holding them, unapplied.
      assert.equal(crashWriteWorker(), true, "a worker was running");
      const writes = Array.from({ length: 200 }, (_, i) =>
        c.commit([{ conversationId: "g_d", append: [message("g_d", i + 2)] }]),
      );
      const results = await Promise.allSettled(writes);
      for (const r of results) {
        assert.ok(r.status === "rejected", "a write the dead worker held resolved");
        // Refused as a storage fault (retryable), saying the write may have been stored after all:
        // the caller cannot tell a unit the worker had applied from one it had not.
        assert.ok(r.reason instanceof UnavailableError, String(r.reason));
        assert.equal(r.reason.message, "storage is failing: the write may not have been stored; retry");
        assert.ok(r.reason.cause instanceof StorageFault);
        assert.match(
          r.reason.cause.message,
          /the store's write thread stopped: the write thread was told to crash/,
        );
      }
      const last = await c.getLastSeq("g_d");
      assert.equal(last, 1, "nothing the dead worker held was applied");
      // The next write starts another worker, which opens the environment again.
      await c.commit([{ conversationId: "g_d", append: [message("g_d", last + 1)] }]);
      assert.equal(await c.getLastSeq("g_d"), last + 1);
    } finally {
      await engine.close();
    }
  });

  it("a write the write thread does not answer in time is refused as a storage fault of unknown outcome", {
    timeout: 30_000,
  }, async () => {
    const path = await tempDir();
    await (await openLmdbStore({ path })).close();
    // Another process holds LMDB's write lock, as a disk whose fsync hangs holds the worker
    // inside its commit: the worker blocks there until the lock is let go.
    const holder = await holdWriteLock(path);
    const thread = new WriteThread(path, undefined, () => {}, 200);
    try {
      const err = await thread
        .run({ op: "floors", floors: [{ deviceId: "dv_late", conversationId: "g_l", floorSeq: 7 }] })
        .catch((e: unknown) => e);
      assert.ok(err instanceof StorageFault, String(err));
      assert.equal(err.outcomeUnknown, true);
      assert.match(err.message, /has not answered a write in 200 ms/);
    } finally {
      await holder.release();
    }
    // The worker went on once the lock was let go: later writes are answered...
    await thread.run({ op: "floors", floors: [{ deviceId: "dv_next", conversationId: "g_l", floorSeq: 8 }] });
    await thread.close();
    // ...and the refused write was stored after all, which is why its outcome was unknown.
    const engine = await openLmdbStore({ path });
    try {
      assert.equal(await engine.conversations.getDeviceFloor("dv_late", "g_l"), 7);
      assert.equal(await engine.conversations.getDeviceFloor("dv_next", "g_l"), 8);
    } finally {
      await engine.close();
    }
  });

  it("refuses a directory written with another key layout", async () => {
    const path = await tempDir();
    const raw = open({ path });
    await raw.openDB({ name: "meta" }).put("layout", 99);
    await raw.close();
    await assert.rejects(openLmdbStore({ path }), /layout 99/);
  });

  it("every commit that resolved survives a SIGKILL of the writer", { timeout: 60_000 }, async () => {
    const path = await tempDir();
    const conversationId = "g_crash";
    const printed = await runAndKill(path, conversationId, 2000);
    assert.ok(printed.length >= 2000, `writer printed only ${printed.length} seqs`);
    // Resolutions come in commit order, so the printed seqs are exactly 1..n.
    const max = Math.max(...printed);
    assert.deepEqual(
      [...printed].sort((a, b) => a - b),
      Array.from({ length: max }, (_, i) => i + 1),
    );

    // The writer moved its idempotency log into the index as it went (the kill may find the
    // log empty or not).
    assert.ok((await onDisk(path)).index.length > 0, "no idempotency records were moved before the kill");
    const engine = await openLmdbStore({ path });
    try {
      const last = await engine.conversations.getLastSeq(conversationId);
      assert.ok(last >= max, `store ends at seq ${last}, but seq ${max} was acknowledged`);
      const entries = await engine.conversations.readEntries(conversationId, 0, last + 10);
      assert.deepEqual(
        entries.map((e) => Number(e.seq)),
        Array.from({ length: last }, (_, i) => i + 1),
      );
      for (const e of entries) {
        const body = e.body.case === "message" ? e.body.value.payload : undefined;
        assert.deepEqual(body, new Uint8Array(64).fill(Number(e.seq) % 251), `payload of seq ${e.seq}`);
      }
      // Every committed send's idempotency record, in the index or read back from the log.
      for (let seq = 1; seq <= last; seq++) {
        assert.equal(await engine.conversations.getIdempotency(conversationId, "dv_crash", `m${seq}`), seq);
      }
    } finally {
      await engine.close();
    }
  });
});

describe("LMDB idempotency log", () => {
  // Moved only when a test says so.
  const manual = { intervalMs: 3_600_000, maxRecords: 1_000_000, maxBytes: 1024 * 1024 * 1024 };
  const send = (conversationId: string, seq: number, deviceId: string, clientMsgId: string) => ({
    conversationId,
    append: [message(conversationId, seq)],
    idempotency: [{ deviceId, clientMsgId, seq }],
  });

  it("a commit's records wait in the log, are found there and read back after a reopen, and a move puts them in the index", async () => {
    const path = await tempDir();
    let engine = await openLmdbStore({ path, idempotencyLog: manual });
    await engine.conversations.commit([send("g_i", 1, "dv_a", "m1"), send("g_j", 1, "dv_b", "m1")]);
    await engine.conversations.commit([send("g_i", 2, "dv_a", "m2")]);
    assert.equal(await engine.conversations.getIdempotency("g_i", "dv_a", "m2"), 2);
    await engine.close();
    assert.deepEqual(await onDisk(path), {
      log: [
        [
          1,
          [
            ["g_i", "dv_a", "m1", 1],
            ["g_j", "dv_b", "m1", 1],
          ],
        ],
        [2, [["g_i", "dv_a", "m2", 2]]],
      ],
      index: [],
      byTime: 0,
    });

    engine = await openLmdbStore({ path, idempotencyLog: manual });
    try {
      const c = engine.conversations;
      assert.equal(await c.getIdempotency("g_j", "dv_b", "m1"), 1);
      assert.equal(await c.getIdempotency("g_j", "dv_b", "m2"), undefined);
      // Log ids go on after those read back.
      await c.commit([send("g_i", 3, "dv_a", "m3")]);
      await c.moveIdempotencyLog();
      for (const [id, device, msg, seq] of [
        ["g_i", "dv_a", "m1", 1],
        ["g_j", "dv_b", "m1", 1],
        ["g_i", "dv_a", "m2", 2],
        ["g_i", "dv_a", "m3", 3],
      ] as const) {
        assert.equal(await c.getIdempotency(id, device, msg), seq, `${id} ${msg}`);
      }
    } finally {
      await engine.close();
    }
    const after = await onDisk(path);
    assert.deepEqual(after.log, []);
    assert.deepEqual(after.index, [
      [["g_i", "dv_a", "m1"], 1],
      [["g_i", "dv_a", "m2"], 2],
      [["g_i", "dv_a", "m3"], 3],
      [["g_j", "dv_b", "m1"], 1],
    ]);
    assert.equal(after.byTime, 4);
  });

  it("a commit refused while its outcome is unknown, then applied late, still gives its seq to a retry", {
    timeout: 30_000,
  }, async () => {
    const path = await tempDir();
    const engine = await openLmdbStore({ path, writeDeadlineMs: 200, idempotencyLog: manual });
    const c = engine.conversations;
    try {
      // The worker opens the environment with a first write, then another process takes LMDB's
      // write lock, as a disk whose fsync hangs holds the worker inside its commit.
      await c.commit([send("g_u", 1, "dv_u", "first")]);
      const holder = await holdWriteLock(path);
      try {
        const err = await c.commit([send("g_u", 2, "dv_u", "late")]).catch((e: unknown) => e);
        assert.ok(err instanceof UnavailableError, String(err));
        assert.match(err.message, /may not have been stored/);
        assert.equal(await c.getIdempotency("g_u", "dv_u", "late"), undefined, "not applied yet");
      } finally {
        await holder.release();
      }
      // The worker applies units in order: once a later write is answered, the late one is in.
      await c.commit([{ conversationId: "g_v", append: [message("g_v", 1)] }]);
      assert.equal(await c.getLastSeq("g_u"), 2);
      assert.equal(await c.getIdempotency("g_u", "dv_u", "late"), 2, "found in the log");
      await c.moveIdempotencyLog();
      assert.equal(await c.getIdempotency("g_u", "dv_u", "late"), 2, "found in the index");
    } finally {
      await engine.close();
    }
    assert.deepEqual((await onDisk(path)).log, []);
  });

  it("a move started while a commit is unanswered leaves that commit's records for the next", async () => {
    const path = await tempDir();
    let engine = await openLmdbStore({ path, idempotencyLog: manual });
    try {
      const c = engine.conversations;
      await c.commit([send("g_f", 1, "dv_f", "m1")]);
      const pending = c.commit([send("g_f", 2, "dv_f", "m2")]);
      const moved = c.moveIdempotencyLog();
      await Promise.all([pending, moved]);
      assert.equal(await c.getIdempotency("g_f", "dv_f", "m1"), 1);
      assert.equal(await c.getIdempotency("g_f", "dv_f", "m2"), 2);
    } finally {
      await engine.close();
    }
    assert.deepEqual((await onDisk(path)).log, [[2, [["g_f", "dv_f", "m2", 2]]]]);
    engine = await openLmdbStore({ path, idempotencyLog: manual });
    try {
      assert.equal(await engine.conversations.getIdempotency("g_f", "dv_f", "m2"), 2);
    } finally {
      await engine.close();
    }
  });

  it("a move goes in slices that keep each device's records in one, then trims the log", async () => {
    const path = await tempDir();
    const engine = await openLmdbStore({ path, idempotencyLog: manual });
    const c = engine.conversations;
    // Two devices with more than a slice of records each, and a third with a few.
    const devices = [
      ["dv_1", MOVE_SLICE + 10],
      ["dv_2", MOVE_SLICE - 3],
      ["dv_3", 5],
    ] as const;
    let seq = 0;
    const writes = devices.flatMap(([device, n]) =>
      Array.from({ length: n }, (_, i) => send("g_s", ++seq, device, `m${i}`)),
    );
    const moves: Array<Array<[string, string]>> = [];
    try {
      await c.commit(writes.slice(0, 1000));
      await c.commit(writes.slice(1000));
      // What the move hands to the write thread, seen on its way there.
      const tail = (c as unknown as { tail: { run: (unit: ConversationUnit) => Promise<unknown> } }).tail;
      const run = tail.run;
      tail.run = (unit) => {
        if (unit.op === "indexIdempotency") moves.push(unit.records.map(([, d, m]) => [d, m]));
        return run(unit);
      };
      await c.moveIdempotencyLog();
      for (const [device, n] of devices) {
        for (let i = 0; i < n; i++) assert.ok((await c.getIdempotency("g_s", device, `m${i}`)) !== undefined);
      }
    } finally {
      await engine.close();
    }
    // Each device's records in one slice, each slice over MOVE_SLICE only by its last device's.
    assert.deepEqual(
      moves.map((slice) => [...new Set(slice.map(([d]) => d))]),
      [["dv_1"], ["dv_2", "dv_3"]],
    );
    assert.deepEqual(
      moves.map((slice) => slice.length),
      [MOVE_SLICE + 10, MOVE_SLICE + 2],
    );
    const disk = await onDisk(path);
    assert.deepEqual(disk.log, []);
    assert.equal(disk.index.length, writes.length);
  });

  it("past its bound in bytes, commits write their records to the index directly", async () => {
    const path = await tempDir();
    const engine = await openLmdbStore({ path, idempotencyLog: { ...manual, maxBytes: 1 } });
    try {
      const c = engine.conversations;
      // The first commit is logged (nothing waits yet); the second finds the bound passed.
      await c.commit([send("g_b", 1, "dv_b", "m1")]);
      await c.commit([send("g_b", 2, "dv_b", "m2")]);
      assert.equal(await c.getIdempotency("g_b", "dv_b", "m1"), 1);
      assert.equal(await c.getIdempotency("g_b", "dv_b", "m2"), 2);
    } finally {
      await engine.close();
    }
    const disk = await onDisk(path);
    assert.deepEqual(disk.log, [[1, [["g_b", "dv_b", "m1", 1]]]]);
    assert.deepEqual(disk.index, [[["g_b", "dv_b", "m2"], 2]]);
  });

  it("takes a layout 1 directory (no log) as its own", async () => {
    const path = await tempDir();
    const raw = open({ path });
    await raw.openDB({ name: "meta" }).put("layout", 1);
    await raw.close();
    await (await openLmdbStore({ path })).close();
    const again = open({ path });
    try {
      assert.equal(again.openDB({ name: "meta" }).get("layout"), 2);
    } finally {
      await again.close();
    }
  });
});

/** The idempotency log's rows, the index's records and the expiry index's size, read raw. */
async function onDisk(path: string) {
  const root = open({ path, noSubdir: false, maxDbs: 32 });
  try {
    const log = [...root.openDB({ name: "idempotencyLog" }).getRange()].map(({ key, value }) => [
      key,
      (value as { records: unknown[] }).records,
    ]);
    const index = [...root.openDB({ name: "idempotency" }).getRange()].map(({ key, value }) => [
      key,
      (value as { seq: number }).seq,
    ]);
    const byTime = root.openDB({ name: "idempotencyByTime" }).getKeysCount();
    return { log, index, byTime };
  } finally {
    await root.close();
  }
}

// A process that opens the environment at path and holds LMDB's write lock (inside a synchronous
// transaction) until released; resolves once it holds it.
async function holdWriteLock(path: string): Promise<{ release: () => Promise<void> }> {
  const script = `
    import { readSync, writeSync } from "node:fs";
    import { open } from "lmdb";
    const root = open({ path: process.argv[1], noSubdir: false, maxDbs: 32 });
    root.transactionSync(() => {
      writeSync(1, "locked\\n");
      readSync(0, Buffer.alloc(1));
    });
    await root.close();
  `;
  const cwd = fileURLToPath(new URL("../../..", import.meta.url));
  const child = spawn(process.execPath, ["--input-type=module", "-e", script, path], {
    cwd,
    stdio: ["pipe", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
    stderr += chunk;
  });
  const exited = new Promise<number | null>((resolve) => child.on("close", resolve));
  await new Promise<void>((resolve, reject) => {
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      if (chunk.includes("locked")) resolve();
    });
    void exited.then((code) => reject(new Error(`the lock holder exited (code ${code}): ${stderr}`)));
  });
  return {
    release: async () => {
      child.stdin.end("\n");
      assert.equal(await exited, 0, stderr);
    },
  };
}

// Runs fixtures/crash-writer.ts and SIGKILLs it once it has printed `lines` seqs; returns every seq
// it printed, including those printed between the kill and its death.
async function runAndKill(path: string, conversationId: string, lines: number): Promise<number[]> {
  const fixture = fileURLToPath(new URL("./fixtures/crash-writer.ts", import.meta.url));
  const cwd = fileURLToPath(new URL("../../..", import.meta.url));
  const child = spawn(process.execPath, ["--import", "tsx", fixture, path, conversationId], {
    cwd,
    stdio: ["ignore", "pipe", "pipe"],
  });
  const printed: number[] = [];
  let pending = "";
  let stderr = "";
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
    stderr += chunk;
  });
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
    pending += chunk;
    const parts = pending.split("\n");
    // A line cut by the kill has no newline yet and is not counted.
    pending = parts.pop() ?? "";
    for (const part of parts) printed.push(Number(part));
    if (printed.length >= lines && !child.killed) child.kill("SIGKILL");
  });
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => {
    child.on("close", (c, s) => resolve([c, s]));
  });
  assert.equal(signal, "SIGKILL", `writer exited on its own (code ${code}): ${stderr}`);
  return printed;
}
