/**
 * The publishing client's CPU per JetStream publish: nats.js's `js.publish` against the bus's
 * own acknowledgement matching (services/bus/nats/pub-acks.ts), on a nats-server of its own.
 *
 *   npx tsx bench/jetstream-publish.ts [publishes] [in flight]
 *
 * Each publish is what the sequencer sends for a committed entry: a 200-byte body on
 * `<prefix>.events.<partition>.<conversation>` with a `Nats-Msg-Id` header, into a file-stored
 * stream. The two take turns, twice each, since this VM's speed drifts; each round uses message
 * ids of its own, so nothing is a duplicate. What the server spends is not counted: it is the same
 * message either way.
 */
import { rm } from "node:fs/promises";
import { connect, headers, type NatsConnection, StorageType } from "nats";
import { PubAcks } from "../services/bus/nats/pub-acks.js";
import { startNatsServer } from "../services/mesh/servers.js";

type Kind = "js.publish" | "PubAcks";

const body = new Uint8Array(200);

async function round(
  kind: Kind,
  nc: NatsConnection,
  acks: PubAcks,
  tag: string,
  publishes: number,
  inFlight: number,
) {
  const js = nc.jetstream();
  const publishOne = (i: number): Promise<unknown> => {
    const subject = `bench.events.${i % 24}.c${i % 500}`;
    const msgId = `${tag}:${i}`;
    if (kind === "js.publish") return js.publish(subject, body, { msgID: msgId, timeout: 10_000 });
    const h = headers();
    h.set("Nats-Msg-Id", msgId);
    return acks.publish(subject, body, h, Date.now() + 10_000);
  };
  const cpu = process.cpuUsage();
  const started = performance.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (next < publishes) await publishOne(next++);
    }),
  );
  const elapsed = performance.now() - started;
  const used = process.cpuUsage(cpu);
  return `${kind.padEnd(11)} ${publishes} publishes in ${elapsed.toFixed(0)} ms: client ${((used.user + used.system) / publishes).toFixed(1)} µs CPU per publish`;
}

const publishes = Number(process.argv[2] ?? 40_000);
const inFlight = Number(process.argv[3] ?? 256);
const server = await startNatsServer();
try {
  const nc = await connect({ servers: server.url, noAsyncTraces: true });
  const jsm = await nc.jetstreamManager();
  await jsm.streams.add({ name: "BENCH", subjects: ["bench.events.>"], storage: StorageType.File });
  const acks = new PubAcks(nc);
  console.log(`node ${process.version}, ${server.binary} ${server.version}; ${inFlight} publishes in flight`);
  // Warm both paths up (JIT, the stream's files) before measuring.
  await round("js.publish", nc, acks, "warm-js", 5_000, inFlight);
  await round("PubAcks", nc, acks, "warm-acks", 5_000, inFlight);
  for (let r = 0; r < 2; r++) {
    for (const kind of ["js.publish", "PubAcks"] as const)
      console.log(await round(kind, nc, acks, `${kind}-${r}`, publishes, inFlight));
  }
  await nc.close();
} finally {
  await server.stop();
  await rm(server.storeDir, { recursive: true, force: true });
}
