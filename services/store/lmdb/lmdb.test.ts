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
import { type ConversationUnit, conversationDbs, takeUnits } from "./conversation-writes.js";
import { LmdbConversationStore } from "./conversations.js";
import { openLmdbStore } from "./engine.js";
import { openEnvironment } from "./environment.js";
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

/** A member with no cursors yet. */
const member = {
  userId: "u_a",
  role: "admin" as const,
  joinedSeq: 1,
  addedAtMs: 1,
  deliveredUpTo: 0,
  readUpTo: 0,
};

describe("LMDB engine", () => {
  it("keeps every kind of record across close and reopen", async () => {
    // A dot in the name must not turn the directory into a file name.
    const path = join(await tempDir(), "store.lmdb");
    const first = await openLmdbStore({ path, mapSizeBytes: 1 << 20 });
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

  it("walks a retention call over the write thread in units of 500 conversations", async () => {
    const path = await tempDir();
    const root = openEnvironment(path, undefined);
    const thread = new WriteThread(path, undefined, () => root.resetReadTxn());
    const walks: number[] = [];
    const store = new LmdbConversationStore(conversationDbs(root), (unit) => {
      if (unit.op === "prefixes") walks.push(unit.max);
      return thread.run(unit);
    });
    try {
      const day = 86_400_000;
      const now = Date.now();
      const old = (id: string, seq: number, daysAgo: number) =>
        create(EntrySchema, { ...message(id, seq), serverTimeMs: BigInt(now - daysAgo * day) });
      // 1,200 conversations, each with one entry 40 days old and one from today.
      const ids = Array.from({ length: 1200 }, (_, i) => `g_w${String(i).padStart(4, "0")}`);
      await store.commit(ids.map((id) => ({ conversationId: id, append: [old(id, 1, 40), old(id, 2, 0)] })));
      // Nothing older than 50 days: the whole walk, 1,200 conversations, in three units.
      assert.equal(await store.deleteEntriesOlderThan(now - 50 * day, 1000), 0);
      assert.equal(walks.length, 3, "500, 500 and 200 conversations");
      // Older than 30 days: 1,000 at most a call. Two units delete 500 each and the call stops.
      walks.length = 0;
      assert.equal(await store.deleteEntriesOlderThan(now - 30 * day, 1000), 1000);
      assert.deepEqual(
        walks,
        [1000, 500],
        "the second unit may delete what the first left of the call's 1,000",
      );
      // The next call resumes after them and finds the last 200.
      walks.length = 0;
      assert.equal(await store.deleteEntriesOlderThan(now - 30 * day, 1000), 200);
      assert.deepEqual(walks, [1000]);
      for (const id of [ids[0]!, ids[999]!, ids[1000]!, ids[1199]!]) {
        assert.deepEqual(
          (await store.readEntries(id, 0, 10)).map((e) => Number(e.seq)),
          [2],
        );
      }
    } finally {
      await thread.close();
      root.close();
    }
  });

  it("lets commits go ahead of the cursor units a transaction has no room for", async () => {
    const engine = await openFresh();
    try {
      const c = engine.conversations;
      // A gateway's largest UpdateCursors call: 1,000 devices, here over 50 conversations.
      const cursors = (tag: string) =>
        Array.from({ length: 1000 }, (_, i) => ({
          conversationId: `g_c${i % 50}`,
          deviceId: `dv_${tag}${i}`,
          deliveredUpTo: 1,
          readUpTo: 1,
        }));
      const order: string[] = [];
      const before = engine.lastTransactionId();
      // Handed to the write thread in one turn, so in one message: two calls' cursors (four units
      // of 250 each), then a send.
      await Promise.all([
        c.saveCursors(cursors("a"), []).then(() => order.push("cursors a")),
        c.saveCursors(cursors("b"), []).then(() => order.push("cursors b")),
        c.commit([{ conversationId: "g_1", append: [message("g_1", 1)] }]).then(() => order.push("send")),
      ]);
      assert.deepEqual(
        order,
        ["send", "cursors a", "cursors b"],
        "the send waits for one cursor unit, not eight",
      );
      assert.equal(engine.lastTransactionId() - before, 8, "a cursor unit of 250 a transaction");
      assert.equal((await c.getDeviceCursors("g_c49", ["dv_a999", "dv_b999"])).length, 2);
      assert.equal(await c.getLastSeq("g_1"), 1);
    } finally {
      await engine.close();
    }
  });

  it("hands a call's cursors to the write thread in units of 250 rows", async () => {
    const path = await tempDir();
    const root = openEnvironment(path, undefined);
    const units: Array<[number, number]> = [];
    const store = new LmdbConversationStore(conversationDbs(root), async (unit) => {
      if (unit.op === "cursors") units.push([unit.devices.length, unit.members.length]);
    });
    try {
      const device = (i: number) => ({
        conversationId: "g_1",
        deviceId: `dv_${i}`,
        deliveredUpTo: 1,
        readUpTo: 1,
      });
      const memberCursor = (i: number) => ({
        conversationId: "g_1",
        userId: `u_${i}`,
        deliveredUpTo: 1,
        readUpTo: 1,
      });
      await store.saveCursors(
        Array.from({ length: 1000 }, (_, i) => device(i)),
        Array.from({ length: 300 }, (_, i) => memberCursor(i)),
      );
      assert.deepEqual(units, [
        [250, 0],
        [250, 0],
        [250, 0],
        [250, 0],
        [0, 250],
        [0, 50],
      ]);
      units.length = 0;
      await store.saveCursors([], []);
      await store.saveCursors([device(1)], [memberCursor(1)]);
      assert.deepEqual(units, [
        [1, 0],
        [0, 1],
      ]);
    } finally {
      root.close();
    }
  });

  it("takes every unit but the cursor units past a transaction's 250 cursor rows, in order", () => {
    const cursors = (id: number, devices: number, members = 0) => ({
      id,
      unit: {
        op: "cursors" as const,
        devices: Array.from({ length: devices }, (_, i) => ({
          conversationId: "g_1",
          deviceId: `dv_${i}`,
          deliveredUpTo: 1,
          readUpTo: 1,
        })),
        members: Array.from({ length: members }, (_, i) => ({
          conversationId: "g_1",
          userId: `u_${i}`,
          deliveredUpTo: 1,
          readUpTo: 1,
        })),
      },
    });
    const send = (id: number) => ({ id, unit: { op: "commit" as const, writes: [] } });
    const take = (queued: Array<{ id: number; unit: ConversationUnit }>) => {
      const { units, deferred } = takeUnits(queued);
      return { units: units.map((u) => u.id), deferred: deferred.map((u) => u.id) };
    };
    // 200 + 50 rows fit; the next 1 does not, and the 5 after it waits behind it.
    assert.deepEqual(
      take([cursors(1, 100, 100), send(2), cursors(3, 50), cursors(4, 1), send(5), cursors(6, 5)]),
      {
        units: [1, 2, 3, 5],
        deferred: [4, 6],
      },
    );
    // The first cursor unit goes whatever its size.
    assert.deepEqual(take([send(1), cursors(2, 1000, 1000), cursors(3, 1)]), {
      units: [1, 2],
      deferred: [3],
    });
    assert.deepEqual(take([send(1), send(2)]), { units: [1, 2], deferred: [] });
  });

  it("moves a member's stored cursors only forward, so a commit that went ahead keeps its own", async () => {
    const engine = await openFresh();
    try {
      const c = engine.conversations;
      // A promotion committed with the sequencer's cursors as they are now (8 and 7), applied
      // before a cursor unit that was queued earlier with older ones.
      await c.commit([{ conversationId: "g_1", putMembers: [{ ...member, deliveredUpTo: 8, readUpTo: 7 }] }]);
      await c.saveCursors([], [{ conversationId: "g_1", userId: "u_a", deliveredUpTo: 6, readUpTo: 6 }]);
      assert.deepEqual(await c.getMembers("g_1"), [{ ...member, deliveredUpTo: 8, readUpTo: 7 }]);
      await c.saveCursors([], [{ conversationId: "g_1", userId: "u_a", deliveredUpTo: 9, readUpTo: 7 }]);
      assert.deepEqual(await c.getMembers("g_1"), [{ ...member, deliveredUpTo: 9, readUpTo: 7 }]);
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
    } finally {
      await engine.close();
    }
  });
});

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
