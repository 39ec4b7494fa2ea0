/**
 * The ScyllaDB engine against a real CQL database: what a commit costs in round trips and time,
 * how commits scale with concurrency (a deployment's shard count caps it: one commit in flight per
 * shard), what a user-level read (listing, sync state) costs per conversation while writers are
 * busy, and how fast the idempotency sweep runs. Numbers go to docs/benchmarks.md.
 *
 *   npm run bench:scylla                       # starts its own Apache Cassandra 5.0 node (Java 17)
 *   npm run bench:scylla -- --contact-point 127.0.0.1:9042 --local-dc datacenter1
 */
import { randomBytes } from "node:crypto";
import { parseArgs } from "node:util";
import { create } from "@bufbuild/protobuf";
import { type Client, types } from "cassandra-driver";
import { EntrySchema, MessageBodySchema } from "../gen/switchboard/v1/entry_pb.js";
import { type CassandraServer, startCassandra } from "../services/mesh/cassandra.js";
import { openScyllaStore, type ScyllaOptions } from "../services/store/scylla/engine.js";
import { migrateScylla } from "../services/store/scylla/schema.js";
import type { ConversationStore, ConversationWrite } from "../services/store/types.js";
import { Histogram } from "./histogram.js";

const { values: args } = parseArgs({
  options: {
    "contact-point": { type: "string" },
    "local-dc": { type: "string", default: "datacenter1" },
    seconds: { type: "string", default: "5" },
    conversations: { type: "string", default: "500" },
    // As the server opens the engine: its idempotency retention (7 days) as the records' TTL.
    "idempotency-ttl": { type: "string", default: "604800" },
    help: { type: "boolean", default: false },
  },
});
if (args.help) {
  console.log(
    "npm run bench:scylla -- [--contact-point HOST:PORT --local-dc DC] [--seconds S] [--conversations N]\n" +
      "                        [--idempotency-ttl S (0: swept records, as before the TTL)]",
  );
  process.exit(0);
}
const SECONDS = Number(args.seconds);
const LISTED = Number(args.conversations);
const USER = "u_0000000000000000000000bench";
const DEVICE = "dv_000000000000000000000bench";

/** Statements by kind, counted on the driver client: what each operation costs in round trips. */
class Counter {
  lwt = 0;
  serialReads = 0;
  reads = 0;
  writes = 0;
  batches = 0;
  watch(client: Client): void {
    const execute = client.execute.bind(client) as (...a: unknown[]) => Promise<unknown>;
    (client as unknown as { execute: unknown }).execute = (
      query: string,
      params: unknown,
      options: unknown,
    ) => {
      const o = (options ?? {}) as { consistency?: number };
      if (/\bIF\b/.test(query)) this.lwt++;
      else if (/^\s*SELECT/i.test(query))
        o.consistency === types.consistencies.localSerial ? this.serialReads++ : this.reads++;
      else this.writes++;
      return execute(query, params, options);
    };
    const batch = client.batch.bind(client) as (...a: unknown[]) => Promise<unknown>;
    (client as unknown as { batch: unknown }).batch = (
      queries: Array<{ query: string }>,
      options: unknown,
    ) => {
      if (queries.some((q) => /\bIF\b/.test(q.query))) this.lwt++;
      else this.batches++;
      return batch(queries, options);
    };
  }
  snapshot() {
    return {
      lwt: this.lwt,
      serialReads: this.serialReads,
      reads: this.reads,
      writes: this.writes + this.batches,
    };
  }
}

function entry(conversationId: string, seq: number, n: number) {
  return create(EntrySchema, {
    conversationId,
    seq: BigInt(seq),
    senderUserId: USER,
    senderDeviceId: DEVICE,
    clientMsgId: `m-${n}`,
    serverTimeMs: BigInt(Date.now()),
    body: { case: "message", value: create(MessageBodySchema, { payload: randomBytes(64) }) },
  });
}

/** Appends one entry (with its idempotency record) to a conversation whose last seq is `seq - 1`. */
function appendOne(conversationId: string, seq: number): ConversationWrite {
  return {
    conversationId,
    append: [entry(conversationId, seq, seq)],
    idempotency: [{ deviceId: DEVICE, clientMsgId: `m-${seq}`, seq }],
  };
}

/** Sequential commits to each of `parallel` conversations for `seconds`: commits/s and latency. */
async function commitLoad(store: ConversationStore, prefix: string, parallel: number, seconds: number) {
  const latency = new Histogram();
  let commits = 0;
  const until = performance.now() + seconds * 1000;
  await Promise.all(
    Array.from({ length: parallel }, async (_, c) => {
      const id = `g_${prefix}${c.toString().padStart(6, "0")}`;
      let seq = (await store.getLastSeq(id)) + 1;
      while (performance.now() < until) {
        const started = performance.now();
        await store.commit([appendOne(id, seq++)]);
        latency.recordMs(performance.now() - started);
        commits++;
      }
    }),
  );
  return {
    commitsPerSecond: commits / seconds,
    p50: latency.percentileMs(50),
    p99: latency.percentileMs(99),
  };
}

const ms = (n: number) => `${n.toFixed(1)} ms`;

async function main(): Promise<void> {
  const given = args["contact-point"];
  const node: CassandraServer | undefined =
    given === undefined ? await startCassandra({ log: (l) => console.error(l) }) : undefined;
  const contactPoint = given ?? node!.contactPoint;
  const options: ScyllaOptions = {
    contactPoints: [contactPoint],
    localDataCenter: node?.localDataCenter ?? args["local-dc"]!,
    keyspace: `switchboard_bench_${randomBytes(4).toString("hex")}`,
    replicationFactor: 1,
    idempotencyTtlSeconds: Number(args["idempotency-ttl"]),
  };
  try {
    await migrateScylla(options);
    const engine = await openScyllaStore(options);
    const client = (engine as unknown as { client: Client }).client;
    const counter = new Counter();
    counter.watch(client);
    const store = engine.conversations;
    const run = Math.random().toString(36).slice(2, 8);

    // 1. One commit of one entry: round trips by kind, and its latency with nothing else running.
    await commitLoad(store, `${run}w`, 1, 1); // warm-up: prepared statements, connections
    const before = counter.snapshot();
    const single = await commitLoad(store, `${run}s`, 1, SECONDS);
    const after = counter.snapshot();
    const n = single.commitsPerSecond * SECONDS;
    const per = (k: keyof typeof before) => ((after[k] - before[k]) / n).toFixed(2);
    console.log(
      `one conversation, sequential commits of one entry: ${single.commitsPerSecond.toFixed(0)} commits/s, ` +
        `p50 ${ms(single.p50)}, p99 ${ms(single.p99)}; per commit: ${per("lwt")} LWT, ` +
        `${per("serialReads")} LOCAL_SERIAL reads, ${per("reads")} reads, ${per("writes")} writes`,
    );

    // 2. Concurrency: one commit in flight per conversation, as one per shard in the sequencer.
    for (const parallel of [1, 4, 16, 64]) {
      const r = await commitLoad(store, `${run}c${parallel}x`, parallel, SECONDS);
      console.log(
        `${parallel} commits in flight: ${r.commitsPerSecond.toFixed(0)} commits/s, p50 ${ms(r.p50)}, p99 ${ms(r.p99)}`,
      );
    }

    // 3. A user in LISTED conversations: the per-user read a listing or a sync state makes.
    const listed = Array.from({ length: LISTED }, (_, i) => `g_${run}l${i.toString().padStart(6, "0")}`);
    for (let i = 0; i < listed.length; i += 50) {
      await Promise.all(
        listed.slice(i, i + 50).map((id) =>
          store.commit([
            {
              conversationId: id,
              conversation: { id, kind: "group", title: "", createdAtMs: Date.now(), membersVersion: 1 },
              append: [entry(id, 1, 1)],
              putMembers: [
                {
                  userId: USER,
                  role: "admin",
                  joinedSeq: 1,
                  addedAtMs: Date.now(),
                  deliveredUpTo: 0,
                  readUpTo: 0,
                },
              ],
            },
          ]),
        ),
      );
    }
    // Each head read both ways: the serial read that settles pending commits (what listings did)
    // and the ordinary read they do now (peekLastSeq).
    const ways = {
      "serial (getLastSeq)": (id: string) => store.getLastSeq(id),
      "plain (peekLastSeq)": (id: string) => store.peekLastSeq(id),
    };
    for (const [way, head] of Object.entries(ways)) {
      const listing = async () => {
        const started = performance.now();
        const rows = await store.listUserConversations(USER);
        await Promise.all(rows.map((r) => head(r.conversationId)));
        return { ms: performance.now() - started, rows: rows.length };
      };
      await listing();
      const beforeListing = counter.snapshot();
      const quiet = await listing();
      const afterListing = counter.snapshot();
      const busy = commitLoad(store, `${run}b${way.length}`, 16, SECONDS);
      await new Promise((r) => setTimeout(r, 500));
      const contended = await listing();
      const load = await busy;
      console.log(
        `listing a user's ${quiet.rows} conversations, heads read ${way} (` +
          `${afterListing.serialReads - beforeListing.serialReads} LOCAL_SERIAL and ` +
          `${afterListing.reads - beforeListing.reads} plain reads): ${ms(quiet.ms)} quiet, ` +
          `${ms(contended.ms)} beside 16 writers (${load.commitsPerSecond.toFixed(0)} commits/s, p99 ${ms(load.p99)})`,
      );
    }

    // 4. The idempotency sweep over everything written above.
    const sweepStart = performance.now();
    const beforeSweep = counter.snapshot();
    const swept = await store.expireIdempotency(Date.now() + 3_600_000);
    const afterSweep = counter.snapshot();
    console.log(
      `idempotency sweep: ${swept} records in ${ms(performance.now() - sweepStart)} ` +
        `(${afterSweep.reads - beforeSweep.reads} reads, ${afterSweep.writes - beforeSweep.writes} writes)`,
    );
    await engine.close();
  } finally {
    await node?.stop();
  }
}

await main();
