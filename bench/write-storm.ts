/**
 * What the sends committed during a reconnect storm wait for: the embedded store alone (the LMDB
 * engine and its write thread), taking sends the way a sequencer's shards hand them over, while
 * now and then thousands of devices' cursors are saved at once, as when a gateway's streams
 * reconnect and catch up together.
 *
 *   npx tsx bench/write-storm.ts [--rate 5000] [--storm 6000] [--storms 6] [--conversations 5000]
 *
 * Sends arrive every millisecond (rate / 1,000 of them), each to a random one of the direct
 * conversations, and wait in their shard's batch (16 shards, by conversation); a shard commits its
 * batch as soon as its previous commit is durable, one in flight at a time, as the sequencer does.
 * A send's time is from its arrival to its commit's answer. Every 2 s after a 3 s warm-up, a storm
 * saves `--storm` device cursors (one device per conversation and member, the same devices each
 * storm, cursors moving forward) in calls of 1,000, all handed over in one turn: a gateway's flush
 * split into UpdateCursors calls of 1,000, each one store write (services/sequencer/receipts.ts).
 *
 * It prints the sends that arrived during a storm (from its start until its last cursor was
 * durable) apart from the others, each storm's time, and the write transactions it spanned.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { create } from "@bufbuild/protobuf";
import { EntrySchema, MessageBodySchema } from "../gen/switchboard/v1/entry_pb.js";
import { openLmdbStore } from "../services/store/lmdb/engine.js";
import type { ConversationWrite, DeviceCursor } from "../services/store/types.js";
import { Histogram } from "./histogram.js";

const { values } = parseArgs({
  options: {
    rate: { type: "string", default: "5000" },
    storm: { type: "string", default: "6000" },
    storms: { type: "string", default: "6" },
    conversations: { type: "string", default: "5000" },
  },
});
const RATE = Number(values.rate);
const STORM = Number(values.storm);
const STORMS = Number(values.storms);
const CONVERSATIONS = Number(values.conversations);
const SHARDS = 16;
const CALL_DEVICES = 1000;
const WARMUP_MS = 3000;
const STORM_EVERY_MS = 2000;
if (![RATE, STORM, STORMS, CONVERSATIONS].every((n) => Number.isInteger(n) && n > 0)) {
  throw new Error("--rate, --storm, --storms and --conversations take positive integers");
}

const dir = await mkdtemp(join(tmpdir(), "switchboard-write-storm-"));
const engine = await openLmdbStore({ path: join(dir, "store") });
const store = engine.conversations;
const ids = Array.from({ length: CONVERSATIONS }, (_, i) => `d_${String(i).padStart(26, "0")}`);
const lastSeq = new Array<number>(CONVERSATIONS).fill(0);
for (let i = 0; i < CONVERSATIONS; i += 500) {
  await store.commit(
    ids.slice(i, i + 500).map((id) => ({
      conversationId: id,
      conversation: { id, kind: "direct" as const, title: "", createdAtMs: 1, membersVersion: 1 },
      putMembers: ["a", "b"].map((m) => ({
        userId: `u_${m}${id}`,
        role: "member" as const,
        joinedSeq: 1,
        addedAtMs: 1,
        deliveredUpTo: 0,
        readUpTo: 0,
      })),
    })),
  );
}

/** A shard's sends waiting for its next commit, and whether a commit of it is in flight. */
interface ShardQueue {
  waiting: Array<{ conversation: number; arrivedAt: number }>;
  committing: boolean;
}
const shards: ShardQueue[] = Array.from({ length: SHARDS }, () => ({ waiting: [], committing: false }));
const payload = new Uint8Array(64);
const sends: Array<{ arrivedAt: number; ms: number }> = [];
let failures = 0;

function commitShard(shard: ShardQueue): void {
  if (shard.committing || shard.waiting.length === 0) return;
  const batch = shard.waiting;
  shard.waiting = [];
  shard.committing = true;
  const writes = new Map<number, ConversationWrite>();
  for (const { conversation } of batch) {
    const id = ids[conversation]!;
    const seq = ++lastSeq[conversation]!;
    let write = writes.get(conversation);
    if (write === undefined) {
      write = { conversationId: id, append: [], idempotency: [] };
      writes.set(conversation, write);
    }
    write.append!.push(
      create(EntrySchema, {
        conversationId: id,
        seq: BigInt(seq),
        serverTimeMs: BigInt(Date.now()),
        senderDeviceId: `dv_a${id}`,
        clientMsgId: `c${seq}`,
        body: { case: "message", value: create(MessageBodySchema, { payload }) },
      }),
    );
    write.idempotency!.push({ deviceId: `dv_a${id}`, clientMsgId: `c${seq}`, seq });
  }
  store
    .commit([...writes.values()])
    .then(
      () => {
        const now = performance.now();
        for (const s of batch) sends.push({ arrivedAt: s.arrivedAt, ms: now - s.arrivedAt });
      },
      (err: unknown) => {
        failures += batch.length;
        console.error("commit failed:", (err as Error).message);
      },
    )
    .finally(() => {
      shard.committing = false;
      commitShard(shard);
    });
}

const started = performance.now();
let owed = 0;
let lastTick = started;
const ticker = setInterval(() => {
  // Sends owed since the last tick: a late timer sends the ones it missed.
  const now = performance.now();
  owed += ((now - lastTick) * RATE) / 1000;
  lastTick = now;
  for (; owed >= 1; owed--) {
    const conversation = Math.floor(Math.random() * CONVERSATIONS);
    shards[conversation % SHARDS]!.waiting.push({ conversation, arrivedAt: now });
  }
  for (const shard of shards) commitShard(shard);
}, 1);

const storms: Array<{ from: number; to: number; transactions: number }> = [];
await new Promise((resolve) => setTimeout(resolve, WARMUP_MS));
for (let round = 1; round <= STORMS; round++) {
  const devices: DeviceCursor[] = [];
  for (let j = 0; j < STORM; j++) {
    const conversation = Math.floor(j / 2) % CONVERSATIONS;
    const seq = Math.max(1, lastSeq[conversation]!);
    devices.push({
      conversationId: ids[conversation]!,
      deviceId: `dv_${j % 2 === 0 ? "a" : "b"}${ids[conversation]}`,
      deliveredUpTo: seq,
      readUpTo: seq,
    });
  }
  const transactionsBefore = engine.lastTransactionId();
  const from = performance.now();
  const calls: Array<Promise<void>> = [];
  for (let i = 0; i < devices.length; i += CALL_DEVICES) {
    calls.push(store.saveCursors(devices.slice(i, i + CALL_DEVICES), []));
  }
  await Promise.all(calls);
  storms.push({ from, to: performance.now(), transactions: engine.lastTransactionId() - transactionsBefore });
  await new Promise((resolve) => setTimeout(resolve, STORM_EVERY_MS));
}
clearInterval(ticker);
while (shards.some((s) => s.committing || s.waiting.length > 0)) {
  for (const shard of shards) commitShard(shard);
  await new Promise((resolve) => setTimeout(resolve, 10));
}
await engine.close();
await rm(dir, { recursive: true, force: true });

const during = new Histogram();
const quiet = new Histogram();
for (const s of sends) {
  if (s.arrivedAt - started < WARMUP_MS / 2) continue;
  const inStorm = storms.some((t) => s.arrivedAt >= t.from && s.arrivedAt <= t.to);
  (inStorm ? during : quiet).recordMs(s.ms);
}
const figures = (h: Histogram) => ({
  sends: h.count,
  p50Ms: +h.percentileMs(50).toFixed(2),
  p99Ms: +h.percentileMs(99).toFixed(2),
  maxMs: +(h.max / 1000).toFixed(2),
});
console.log(
  JSON.stringify({
    machine: `${cpus()[0]?.model ?? "unknown"}, ${cpus().length} CPUs, Node ${process.version}`,
    rate: RATE,
    storm: STORM,
    conversations: CONVERSATIONS,
    stormsMs: storms.map((t) => +(t.to - t.from).toFixed(1)),
    stormTransactions: storms.map((t) => t.transactions),
    duringStorms: figures(during),
    otherwise: figures(quiet),
    failures,
  }),
);
