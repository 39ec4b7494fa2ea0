import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { rm } from "node:fs/promises";
import { after, describe, test } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import { AckPolicy, connect, DeliverPolicy, type JetStreamManager, type NatsConnection } from "nats";
import {
  type BusEvent,
  BusEventSchema,
  type DeliveryBatch,
  DeliveryBatchSchema,
  DeliverySchema,
} from "../../gen/switchboard/internal/v1/events_pb.js";
import { EntrySchema, MessageBodySchema } from "../../gen/switchboard/v1/entry_pb.js";
import {
  type NatsServer,
  pingNats,
  requireNats,
  type Skippable,
  startNatsServer,
  testNatsUrl,
} from "../../test/helpers/backends.js";
import { createLogger } from "../common/log.js";
import { committed, eventually, keyOf, receipt, runBusConformance } from "./conformance.js";
import { committedSubject, conversationToken, PARTITIONS, partitionOf } from "./nats/subjects.js";
import { packRepeated, unpackEvents } from "./nats/wire.js";
import { connectNats, type NatsBusOptions, type NatsEngine } from "./nats.js";

const log = createLogger({ level: "silent" });
const url = testNatsUrl();
// Every stream and subject this file creates carries the run id, so a shared server stays clean.
const run = randomUUID().replaceAll("-", "").slice(0, 12);
let opened = 0;

function isolated(): { stream: string; subjectPrefix: string } {
  const i = opened++;
  return { stream: `SBTEST_${run}_${i}`, subjectPrefix: `sbtest.${run}.${i}` };
}

/** Quick timers, so redeliveries and reconnects happen within a test's patience. */
const QUICK: Partial<NatsBusOptions> = {
  ackWaitMs: 2000,
  nakDelayMs: 50,
  fetchExpiresMs: 1000,
  publishTimeoutMs: 2000,
  reconnectTimeWaitMs: 100,
};

/** Events fetched or waiting, over every partition's consumer of a stream. */
async function outstanding(jsm: JetStreamManager, stream: string): Promise<number> {
  let n = 0;
  for (let p = 0; p < PARTITIONS; p++) {
    try {
      const info = await jsm.consumers.info(stream, `fanout_p${p}`);
      n += info.num_ack_pending + info.num_pending;
    } catch (err) {
      if (!(err instanceof Error && err.message.includes("consumer not found"))) throw err;
    }
  }
  return n;
}

/** Which member holds each partition, from the lease bucket (the id each member writes). */
async function holders(nc: NatsConnection, stream: string): Promise<Array<string | undefined>> {
  const out: Array<string | undefined> = [];
  // Only once a member has written to the bucket: nats-server 2.9.10 crashes on a message get
  // that arrives while the bucket's stream is still being created.
  const written = await (await nc.jetstreamManager()).streams
    .info(`KV_${stream}_fanout_leases`)
    .then((info) => info.state.messages > 0)
    .catch(() => false);
  if (!written) return Array.from({ length: PARTITIONS }, () => undefined);
  const kv = await nc.jetstream().views.kv(`${stream}_fanout_leases`, { bindOnly: true });
  for (let p = 0; p < PARTITIONS; p++) {
    const e = await kv.get(`p.${p}`);
    out.push(e && e.operation === "PUT" ? e.string() : undefined);
  }
  return out;
}

/** Whether two members hold twelve partitions each. */
async function splitInTwo(nc: NatsConnection, stream: string): Promise<boolean> {
  const counts = [...shares(await holders(nc, stream)).values()];
  return counts.length === 2 && counts.every((n) => n === PARTITIONS / 2);
}

/** How many partitions each member holds, by member id. */
function shares(owners: Array<string | undefined>): Map<string, number> {
  const m = new Map<string, number>();
  for (const o of owners) if (o !== undefined) m.set(o, (m.get(o) ?? 0) + 1);
  return m;
}

function conversation(): string {
  return `g_${randomUUID().replaceAll("-", "")}`;
}

const range = (from: number, to: number): number[] =>
  Array.from({ length: to - from + 1 }, (_, i) => from + i);

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve: () => void = () => {};
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

describe("NATS bus parts without a server", () => {
  test("conversation subjects: plain ids as they are, others by their FNV-1a, which must not change", () => {
    assert.equal(conversationToken("g_abc"), "g_abc");
    // A publisher on another version must pick the same subject for the same conversation.
    assert.equal(conversationToken("conversation.with dots"), "_h491fad3c");
    assert.equal(conversationToken("😀"), "_hcb31c4b8");
    // The partition is FNV-1a mod 24: changing either would split a mesh of mixed versions.
    assert.equal(committedSubject("sb", undefined), "sb.events.0._");
    assert.equal(committedSubject("sb", { conversationId: "a.b" }), "sb.events.4._h108bf50c");
    assert.equal(committedSubject("sb", { conversationId: "g_abc" }), "sb.events.13.g_abc");
  });

  test("packs events within the payload limit and unpacks them in order", () => {
    const events = range(1, 20).map((seq) => committed("g_pack", seq));
    const items = events.map((e) => toBinary(BusEventSchema, e));
    const limit = Math.max(...items.map((i) => i.length)) * 3 + 10;
    const payloads = packRepeated(items, limit);
    assert.ok(payloads.length > 1);
    for (const p of payloads) assert.ok(p.length <= limit);
    assert.deepEqual(
      payloads.flatMap((p) => unpackEvents(p)).map((e) => keyOf(e)),
      events.map((e) => keyOf(e)),
    );
    assert.throws(() => packRepeated(items, 8), /exceeds the 8-byte payload limit/);
  });
});

if (!(await pingNats(url))) {
  // Skips here, or fails under CI=true: a missing backend must be visible.
  test("NATS bus (needs nats-server)", async (t) => {
    await requireNats(t, url);
  });
} else {
  const admin: NatsConnection = await connect({ servers: url, name: "switchboard-bus-tests" });
  const jsm = await admin.jetstreamManager();
  const streams = new Set<string>();
  const engines: NatsEngine[] = [];

  async function engine(
    names: { stream: string; subjectPrefix: string },
    options: Partial<NatsBusOptions> = {},
  ) {
    streams.add(names.stream);
    const e = await connectNats({ servers: [url], ...QUICK, ...names, ...options }, log);
    engines.push(e);
    return e;
  }

  after(async () => {
    await Promise.all(engines.map((e) => e.close()));
    for (const stream of streams) {
      await jsm.streams.delete(stream).catch(() => false);
      await jsm.streams.delete(`KV_${stream}_fanout_leases`).catch(() => false);
    }
    await admin.close();
  });

  runBusConformance(
    "NATS JetStream",
    async () => {
      const names = isolated();
      const e = await engine(names);
      return {
        bus: e.bus,
        delivery: e.delivery,
        settle: () => e.flush(),
        outstanding: () => outstanding(jsm, names.stream),
        close: async () => {
          await e.close();
          await jsm.streams.delete(names.stream).catch(() => false);
          await jsm.streams.delete(`KV_${names.stream}_fanout_leases`).catch(() => false);
          streams.delete(names.stream);
        },
      };
    },
    { redeliversOnReject: true },
  );

  describe("NATS bus specifics", () => {
    test("the stream is created with explicit limits and updated when they change", async () => {
      const names = isolated();
      const e = await engine(names, {
        maxAgeMs: 60_000,
        maxBytes: 10 * 1024 * 1024,
        duplicateWindowMs: 30_000,
      });
      const config = (await jsm.streams.info(names.stream)).config;
      assert.equal(config.storage, "file");
      assert.equal(config.retention, "limits");
      assert.equal(config.discard, "old");
      assert.equal(config.max_age, 60_000 * 1e6);
      assert.equal(config.max_bytes, 10 * 1024 * 1024);
      assert.equal(config.duplicate_window, 30_000 * 1e6);
      assert.equal(config.num_replicas, 1);
      assert.deepEqual(config.subjects, [`${names.subjectPrefix}.events.>`]);
      await e.close();
      const again = await engine(names, {
        maxAgeMs: 120_000,
        maxBytes: 10 * 1024 * 1024,
        duplicateWindowMs: 30_000,
      });
      assert.equal((await jsm.streams.info(names.stream)).config.max_age, 120_000 * 1e6);
      await again.ensureConsumers();
      for (let p = 0; p < PARTITIONS; p++) {
        const consumer = (await jsm.consumers.info(names.stream, `fanout_p${p}`)).config;
        assert.equal(consumer.ack_policy, "explicit");
        assert.equal(consumer.ack_wait, 2000 * 1e6);
        assert.equal(consumer.filter_subject, `${names.subjectPrefix}.events.${p}.>`);
        assert.equal(consumer.deliver_policy, "all");
      }
      await again.close();
      const changed = await engine(names, { ackWaitMs: 3000, maxDeliver: 7 });
      await changed.ensureConsumers();
      const updated = (await jsm.consumers.info(names.stream, "fanout_p23")).config;
      assert.equal(updated.ack_wait, 3000 * 1e6);
      assert.equal(updated.max_deliver, 7);
      await changed.close();
    });

    test("the same entry or receipt published twice is stored once", async () => {
      const names = isolated();
      const e = await engine(names);
      const c = conversation();
      await e.bus.publishCommitted([committed(c, 1), receipt(c, "u_bob", 1)]);
      await e.bus.publishCommitted([committed(c, 1), receipt(c, "u_bob", 1), committed(c, 2)]);
      assert.equal((await jsm.streams.info(names.stream)).state.messages, 3);
      assert.equal(e.metrics.published, 5);
      assert.equal(e.metrics.duplicates, 2);
    });

    test("more publishes than maxPublishesInFlight wait for slots and keep their order", async () => {
      const names = isolated();
      const e = await engine(names, { maxPublishesInFlight: 4 });
      const c = conversation();
      await Promise.all([
        e.bus.publishCommitted(range(1, 50).map((s) => committed(c, s))),
        e.bus.publishCommitted(range(51, 60).map((s) => committed(c, s))),
      ]);
      const seen: string[] = [];
      const stop = e.bus.consumeCommitted(async (events) => {
        seen.push(...events.map(keyOf));
      });
      await eventually("every event", () => seen.length >= 60);
      stop();
      assert.deepEqual(
        seen,
        range(1, 60).map((s) => `${c}:${s}`),
      );
    });

    test("without a stream publishes reject, and a consumer waits until a publisher creates it", async () => {
      const names = isolated();
      const consumerOnly = await engine(names, { manageStream: false });
      const c = conversation();
      await assert.rejects(consumerOnly.bus.publishCommitted([committed(c, 1)]));
      assert.equal(consumerOnly.metrics.publishFailures, 1);
      const seen: string[] = [];
      const stop = consumerOnly.bus.consumeCommitted(async (events) => {
        seen.push(...events.map(keyOf));
      });
      const publisher = await engine(names);
      await publisher.bus.publishCommitted([committed(c, 1)]);
      await eventually("the event at the waiting consumer", () => seen.length >= 1);
      stop();
      assert.deepEqual(seen, [`${c}:1`]);
    });

    test("a publish nothing answers fails at its deadline, and the ones after it are not held", async () => {
      const names = isolated();
      // No stream takes these subjects, but a plain subscriber does: the server has a responder
      // to hand the publish to, so no 503 comes, and nothing ever answers.
      const e = await engine(names, { manageStream: false, publishTimeoutMs: 600 });
      const silent = admin.subscribe(`${names.subjectPrefix}.events.>`);
      await admin.flush();
      const c = conversation();
      const started = Date.now();
      const first = e.bus.publishCommitted([committed(c, 1), committed(c, 2)]);
      const second = e.bus.publishCommitted([committed(c, 3)]);
      await assert.rejects(first, /deadline/);
      await assert.rejects(second, /deadline/);
      const waited = Date.now() - started;
      assert.ok(waited >= 590 && waited < 3_000, `failed after ${waited} ms`);
      assert.equal(e.metrics.publishFailures, 3);
      assert.equal(silent.getReceived(), 3, "every publish was sent");
      silent.unsubscribe();
    });

    test("an error the stream answers fails the publish with the stream's description", async () => {
      const names = isolated();
      const e = await engine(names);
      const c = conversation();
      await e.bus.publishCommitted([committed(c, 1)]);
      const config = (await jsm.streams.info(names.stream)).config;
      await jsm.streams.update(names.stream, { ...config, max_msg_size: 16 });
      await assert.rejects(e.bus.publishCommitted([committed(c, 2)]), /message size exceeds maximum allowed/);
      assert.equal(e.metrics.published, 1);
      assert.equal(e.metrics.publishFailures, 1);
    });

    test("a publish still waiting for its answer when the bus closes is failed, not left waiting", async () => {
      const names = isolated();
      const e = await connectNats(
        { servers: [url], ...QUICK, ...names, manageStream: false, publishTimeoutMs: 60_000 },
        log,
      );
      const silent = admin.subscribe(`${names.subjectPrefix}.events.>`);
      await admin.flush();
      const waiting = e.bus.publishCommitted([committed(conversation(), 1)]);
      await eventually("the publish at the silent subscriber", () => silent.getReceived() === 1);
      const started = Date.now();
      await e.close();
      await assert.rejects(waiting, /closed/);
      assert.ok(Date.now() - started < 10_000, "failed when the bus closed, not at its deadline");
      silent.unsubscribe();
    });

    test("an undecodable message is terminated, never redelivered", async () => {
      const names = isolated();
      const e = await engine(names);
      const c = conversation();
      await admin
        .jetstream()
        .publish(
          committedSubject(names.subjectPrefix, { conversationId: c }),
          new Uint8Array([0xff, 0xff, 0xff]),
        );
      await e.bus.publishCommitted([committed(c, 1)]);
      const seen: string[] = [];
      const stop = e.bus.consumeCommitted(async (events) => {
        seen.push(...events.map(keyOf));
      });
      await eventually("the valid event", () => seen.length >= 1);
      await eventually("nothing outstanding", async () => (await outstanding(jsm, names.stream)) === 0);
      stop();
      assert.deepEqual(seen, [`${c}:1`]);
      assert.equal(e.metrics.terminated, 1);
    });

    test("a delivery batch over the server's payload limit arrives as several, in order", async () => {
      const e = await engine(isolated());
      const c = conversation();
      const big = new Uint8Array(64 * 1024).fill(7);
      const batch = create(DeliveryBatchSchema, {
        deliveries: range(1, 40).map((seq) =>
          create(DeliverySchema, {
            deviceIds: [`dv_${seq}`],
            payload: {
              case: "entry",
              value: create(EntrySchema, {
                conversationId: c,
                seq: BigInt(seq),
                body: { case: "message", value: create(MessageBodySchema, { payload: big }) },
              }),
            },
          }),
        ),
      });
      const received: DeliveryBatch[] = [];
      const stop = e.delivery.listen("gw_big", (b) => received.push(b));
      await e.flush();
      await e.delivery.deliver("gw_big", batch);
      await eventually("every delivery", () => received.reduce((n, b) => n + b.deliveries.length, 0) >= 40);
      stop();
      assert.ok(received.length > 1, "the batch should have been split");
      const joined = create(DeliveryBatchSchema, { deliveries: received.flatMap((b) => b.deliveries) });
      assert.deepEqual(toBinary(DeliveryBatchSchema, joined), toBinary(DeliveryBatchSchema, batch));
    });

    test("two members split the partitions evenly, and each conversation's events reach one of them, in order", async () => {
      const names = isolated();
      const [a, b] = [await engine(names), await engine(names)];
      const gotA: string[] = [];
      const gotB: string[] = [];
      a.bus.consumeCommitted(async (events) => {
        gotA.push(...events.map(keyOf));
      });
      await eventually("the first member holding every partition", async () => {
        const owners = await holders(admin, names.stream);
        return owners.every((o) => o !== undefined) && shares(owners).size === 1;
      });
      b.bus.consumeCommitted(async (events) => {
        gotB.push(...events.map(keyOf));
      });
      await eventually("twelve partitions each once the second joined", () =>
        splitInTwo(admin, names.stream),
      );
      const conversations = range(1, 48).map(() => conversation());
      // Round by round, so that every partition's events interleave with the others'.
      for (const seq of range(1, 20))
        await a.bus.publishCommitted(conversations.map((c) => committed(c, seq)));
      await eventually("every event", () => gotA.length + gotB.length >= 48 * 20);
      for (const c of conversations) {
        const atA = gotA.filter((k) => k.startsWith(`${c}:`));
        const atB = gotB.filter((k) => k.startsWith(`${c}:`));
        assert.ok(
          atA.length === 0 || atB.length === 0,
          `${c} (partition ${partitionOf(c)}) went to one member`,
        );
        assert.deepEqual(
          [...atA, ...atB],
          range(1, 20).map((seq) => `${c}:${seq}`),
        );
      }
      assert.ok(gotA.length > 0 && gotB.length > 0, "both members had events to handle");
    });

    test("a member that stops handles what its last fetches bring, then hands its partitions over long before its leases expire", async () => {
      const names = isolated();
      // Neither expiry nor redelivery can explain events arriving within the test's patience: a
      // handover takes B's last fetch (1 s) and a round of A's (3 s).
      const leaseMs = 9000;
      const options = { leaseMs, ackWaitMs: 30_000, fetchExpiresMs: 1000 };
      const [a, b] = [await engine(names, options), await engine(names, options)];
      const gotA: string[] = [];
      const gotB: string[] = [];
      a.bus.consumeCommitted(async (events) => {
        gotA.push(...events.map(keyOf));
      });
      const stopB = b.bus.consumeCommitted(async (events) => {
        gotB.push(...events.map(keyOf));
      });
      // Balancing takes a few of their rounds: one gives back, then the other takes.
      await eventually("twelve partitions each", () => splitInTwo(admin, names.stream), 4 * leaseMs);
      // One conversation in every partition.
      const byPartition = new Map<number, string>();
      while (byPartition.size < PARTITIONS) {
        const c = conversation();
        byPartition.set(partitionOf(c), c);
      }
      const conversations = [...byPartition.values()];
      const stoppedAt = Date.now();
      const stopping = stopB();
      // Sent while B stops: its pull requests are still open and take B's partitions' events.
      await a.bus.publishCommitted(conversations.map((c) => committed(c, 1)));
      await stopping;
      const settledB = gotB.length;
      await a.bus.publishCommitted(conversations.map((c) => committed(c, 2)));
      await eventually(
        "every event at one member or the other",
        () => conversations.every((c) => [1, 2].every((seq) => [...gotA, ...gotB].includes(`${c}:${seq}`))),
        leaseMs,
      );
      assert.ok(Date.now() - stoppedAt < leaseMs, "handed over, not expired or redelivered");
      assert.equal(gotB.length, settledB, "B took nothing once stopped");
      for (const c of conversations) {
        assert.ok(gotA.includes(`${c}:2`), `${c}'s second event at A`);
        const inA = gotA.filter((k) => k.startsWith(`${c}:`));
        assert.ok(inA.length === 1 || inA[0] === `${c}:1`, `${c}'s events at A in order: ${inA.join(" ")}`);
      }
      const owners = await holders(admin, names.stream);
      assert.equal(shares(owners).size, 1);
      assert.ok(owners.every((o) => o !== undefined));
    });

    test("the backlog counts what waits in every partition, and falls as the members settle it", async () => {
      const names = isolated();
      const e = await engine(names);
      assert.deepEqual(await e.backlog(), { pending: 0, unacknowledged: 0 });
      await e.ensureConsumers();
      const conversations = range(1, 6).map(() => conversation());
      await e.bus.publishCommitted(conversations.flatMap((c) => range(1, 5).map((seq) => committed(c, seq))));
      assert.deepEqual(await e.backlog(), { pending: 30, unacknowledged: 0 });
      const release = deferred();
      let held = 0;
      e.bus.consumeCommitted(async (events) => {
        held += events.length;
        await release.promise;
      });
      await eventually(
        "the members holding some",
        async () => held > 0 && (await e.backlog()).unacknowledged > 0,
      );
      release.resolve();
      await eventually("nothing left", async () => {
        const b = await e.backlog();
        return b.pending + b.unacknowledged === 0;
      });
    });

    test("an unpartitioned consumer of an earlier version is drained, then left alone", async () => {
      const names = isolated();
      const e = await engine(names);
      const old = `${names.subjectPrefix}.events.>`;
      await jsm.consumers.add(names.stream, {
        durable_name: "fanout",
        ack_policy: AckPolicy.Explicit,
        deliver_policy: DeliverPolicy.All,
        filter_subject: old,
      });
      const c = conversation();
      // Published before the upgrade: only the old consumer delivers these.
      await e.bus.publishCommitted(range(1, 10).map((seq) => committed(c, seq)));
      const seen: string[] = [];
      e.bus.consumeCommitted(async (events) => {
        seen.push(...events.map(keyOf));
      });
      await eventually(
        "the partitions' consumers",
        async () =>
          (await outstanding(jsm, names.stream)) === 0 &&
          (await jsm.consumers.info(names.stream, `fanout_p${partitionOf(c)}`).then(
            () => true,
            () => false,
          )),
      );
      await e.bus.publishCommitted(range(11, 20).map((seq) => committed(c, seq)));
      await eventually("every event, from the old consumer and the partitions", () =>
        range(1, 20).every((seq) => seen.includes(`${c}:${seq}`)),
      );
      const partition = await jsm.consumers.info(names.stream, `fanout_p${partitionOf(c)}`);
      assert.equal(partition.config.deliver_policy, "by_start_sequence");
      assert.equal(partition.config.opt_start_seq, 11);
      await eventually("the old consumer settled up to where the partitions start", async () => {
        const info = await jsm.consumers.info(names.stream, "fanout");
        return info.ack_floor.stream_seq >= 10 && info.num_waiting === 0;
      });
      await e.bus.publishCommitted(range(21, 30).map((seq) => committed(c, seq)));
      await eventually("the events after the drain", () => seen.includes(`${c}:30`));
      // Nobody pulls from the old consumer any more; an operator deletes it.
      const left = await jsm.consumers.info(names.stream, "fanout");
      assert.ok(left.num_pending >= 10, `the old consumer has ${left.num_pending} pending`);
      assert.equal(left.num_waiting, 0);
      // At least once, and in order by first arrival.
      assert.deepEqual(
        [...new Set(seen)],
        range(1, 30).map((seq) => `${c}:${seq}`),
      );
    });

    test("gateway ids that are not subject tokens are refused", async () => {
      const e = await engine(isolated());
      const empty = create(DeliveryBatchSchema);
      await assert.rejects(e.delivery.deliver("gw.a", empty), RangeError);
      await assert.rejects(e.delivery.deliver("gw_>", empty), RangeError);
      assert.throws(() => e.delivery.listen("*", () => {}), RangeError);
    });

    test("each ephemeral event goes to one worker of the group; broadcasts go to every process", async () => {
      const names = isolated();
      const [a, b, sender] = [await engine(names), await engine(names), await engine(names)];
      const typingA: BusEvent[] = [];
      const typingB: BusEvent[] = [];
      a.bus.consumeEphemeral((events) => typingA.push(...events));
      b.bus.consumeEphemeral((events) => typingB.push(...events));
      const broadcastA: BusEvent[] = [];
      const broadcastB: BusEvent[] = [];
      a.bus.onBroadcast((events) => broadcastA.push(...events));
      b.bus.onBroadcast((events) => broadcastB.push(...events));
      await Promise.all([a.flush(), b.flush()]);
      const c = conversation();
      // Committed-shaped events are enough here: the core subjects carry any BusEvent.
      for (const seq of range(1, 40)) sender.bus.publishEphemeral([committed(c, seq)]);
      sender.bus.broadcast([committed(c, 100)]);
      await eventually("every typing event", () => typingA.length + typingB.length >= 40);
      await eventually("both broadcasts", () => broadcastA.length >= 1 && broadcastB.length >= 1);
      await Promise.all([a.flush(), b.flush(), sender.flush()]);
      const keys = [...typingA, ...typingB].map(keyOf).sort();
      assert.deepEqual(
        keys,
        range(1, 40)
          .map((s) => `${c}:${s}`)
          .sort(),
      );
      assert.deepEqual(broadcastA.map(keyOf), [`${c}:100`]);
      assert.deepEqual(broadcastB.map(keyOf), [`${c}:100`]);
    });
  });
}

/** A nats-server of the test's own; skips (or fails under CI=true) when the binary is missing. */
async function ownServer(
  t: Skippable,
  options: { port?: number; storeDir?: string } = {},
): Promise<NatsServer | undefined> {
  try {
    return await startNatsServer(options);
  } catch (err) {
    if (process.env.CI === "true" || !(err instanceof Error) || !err.message.startsWith("cannot run"))
      throw err;
    t.skip(err.message);
    return undefined;
  }
}

describe("NATS bus faults (own nats-server)", () => {
  test("a killed member's partitions go to the other when its leases expire, and its batch with them", async (t) => {
    const server = await ownServer(t);
    if (server === undefined) return;
    const stuck = deferred();
    const names = isolated();
    const options = {
      servers: [server.url],
      ...QUICK,
      ...names,
      ackWaitMs: 1000,
      batchSize: 10,
      leaseMs: 1000,
    };
    const a = await connectNats(options, log);
    const b = await connectNats(options, log);
    const probe = await connect({ servers: server.url });
    try {
      const gotA: string[] = [];
      const gotB: string[] = [];
      a.bus.consumeCommitted((events) => {
        gotA.push(...events.map(keyOf));
        // A member that dies mid-batch: it never settles.
        return stuck.promise;
      });
      b.bus.consumeCommitted(async (events) => {
        gotB.push(...events.map(keyOf));
      });
      await eventually("twelve partitions each", () => splitInTwo(probe, names.stream));
      const conversations = range(1, 16).map(() => conversation());
      await a.bus.publishCommitted(conversations.flatMap((c) => range(1, 10).map((s) => committed(c, s))));
      await eventually("member A's batch", () => gotA.length > 0);
      await a.connection.close();
      const all = conversations.flatMap((c) => range(1, 10).map((s) => `${c}:${s}`));
      await eventually("every event at member B", () => all.every((k) => gotB.includes(k)));
      assert.ok(
        gotA.every((k) => gotB.includes(k)),
        "member A's events were redelivered to B",
      );
      assert.ok(b.metrics.redelivered >= gotA.length);
      const owners = await holders(probe, names.stream);
      assert.ok(owners.every((o) => o !== undefined) && shares(owners).size === 1, "B holds every partition");
      const probeJsm = await probe.jetstreamManager();
      await eventually("nothing outstanding", async () => (await outstanding(probeJsm, names.stream)) === 0);
    } finally {
      stuck.resolve();
      await Promise.all([a.close(), b.close(), probe.close()]);
      await server.stop();
      await rm(server.storeDir, { recursive: true, force: true });
    }
  });

  test("a nats-server killed and restarted: publishes fail fast, then resume, and nothing is lost", async (t) => {
    const first = await ownServer(t);
    if (first === undefined) return;
    let server = first;
    const names = isolated();
    const e = await connectNats(
      { servers: [server.url], ...QUICK, ...names, ackWaitMs: 1000, publishTimeoutMs: 1000 },
      log,
    );
    try {
      const c = conversation();
      const got: string[] = [];
      const handler = async (events: readonly BusEvent[]): Promise<void> => {
        got.push(...events.map(keyOf));
      };
      const stopFirst = e.bus.consumeCommitted(handler);
      await e.bus.publishCommitted(range(1, 10).map((s) => committed(c, s)));
      await eventually("the first events", () => got.length >= 10);
      stopFirst();
      // Stored, never delivered: these must survive the crash.
      await e.bus.publishCommitted(range(11, 20).map((s) => committed(c, s)));

      await server.stop("SIGKILL");
      await eventually("the disconnect noticed", () => !e.ready());
      await assert.rejects(e.bus.publishCommitted([committed(c, 21)]));
      // A worker started during the outage waits for the server instead of giving up.
      e.bus.consumeCommitted(handler);

      server = await startNatsServer({ port: server.port, storeDir: server.storeDir });
      await eventually("the reconnect", () => e.ready());
      // The sequencer's recovery loop retries like this until the bus takes the events.
      await eventually("a publish after the restart", () =>
        e.bus.publishCommitted(range(21, 30).map((s) => committed(c, s))).then(
          () => true,
          () => false,
        ),
      );
      const wanted = range(11, 30).map((s) => `${c}:${s}`);
      await eventually("every event from before and after the crash", () =>
        wanted.every((k) => got.includes(k)),
      );
      const probe = await connect({ servers: server.url });
      try {
        const info = await (await probe.jetstreamManager()).consumers.info(
          names.stream,
          `fanout_p${partitionOf(c)}`,
        );
        assert.equal(info.config.durable_name, `fanout_p${partitionOf(c)}`);
      } finally {
        await probe.close();
      }
    } finally {
      await e.close();
      await server.stop();
      await rm(server.storeDir, { recursive: true, force: true });
    }
  });
});
