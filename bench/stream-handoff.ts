/**
 * CPU per batch of the stream port's hand-off between two threads, on each side: the Outbox that
 * gathers a turn's operations and posts them, and the Inbox that takes them apart on the other
 * thread (services/server/stream-thread-protocol.ts), with nothing else running.
 *
 *   npx tsx bench/stream-handoff.ts [batches] [operations per batch] [bytes per data operation]
 *
 * Each batch is like a turn of the server's at 1,000 devices and 5,000 msgs/s (a dump of the
 * main thread's posts there: about a hundred operations, most of them a stream's bytes): seven
 * in ten operations carry `bytes` bytes, the rest a number, and one batch in a hundred opens a
 * stream (an argument that is not a number). The receiving thread reads each operation's bytes.
 * CPU is each thread's own, from /proc/thread-self/schedstat (Linux). Measured three times,
 * since this VM's speed drifts; the end-to-end bench cannot resolve a cost this small
 * (docs/benchmarks.md, "Twenty-ninth pass").
 */
import { readFileSync } from "node:fs";
import { isMainThread, parentPort, workerData } from "node:worker_threads";
import { moduleWorker } from "../services/common/module-worker.js";
import { type Batch, Inbox, Outbox } from "../services/server/stream-thread-protocol.js";

/** This thread's time on a CPU so far, in microseconds. */
function threadCpuMicros(): number {
  return Number(readFileSync("/proc/thread-self/schedstat", "utf8").split(" ")[0]) / 1000;
}

/** Batches handed over and not yet reported handled, at most: the sender waits past it. */
const WINDOW = 256;
/** The receiver reports every this many batches handled. */
const REPORT_EVERY = 64;

type Report = { handled: number; cpuMicros: number; checksum: number };

function receive(): void {
  const port = parentPort!;
  let handled = 0;
  let checksum = 0;
  const inbox = new Inbox(
    (kind, _id, a, b, { data }) => {
      if (kind === 2) checksum = (checksum + data[(a as number) + b - 1]!) | 0;
      else if (typeof a === "number") checksum = (checksum + a) | 0;
    },
    {
      finished: () => {
        handled++;
        if (handled % REPORT_EVERY === 0) {
          port.postMessage({ handled, cpuMicros: threadCpuMicros(), checksum } satisfies Report);
        }
      },
    },
  );
  port.on("message", (msg: Batch | "report") => {
    if (msg === "report")
      port.postMessage({ handled, cpuMicros: threadCpuMicros(), checksum } satisfies Report);
    else inbox.push(msg);
  });
}

async function measure(batches: number, ops: number, bytes: number): Promise<string> {
  const worker = moduleWorker(new URL(import.meta.url), { workerData: { receiver: true } });
  let last: Report = { handled: 0, cpuMicros: 0, checksum: 0 };
  let wake: (() => void) | undefined;
  worker.on("message", (r: Report) => {
    last = r;
    wake?.();
  });
  const reported = () =>
    new Promise<void>((resolve) => {
      wake = resolve;
    });
  const outbox = new Outbox((batch, transfer) => worker.postMessage(batch, transfer));
  const chunk = Buffer.alloc(bytes, 7);
  const open = ["application/grpc+proto", "Bearer 0123456789abcdef", null, "127.0.0.1"];
  let sent = 0;
  const send = async (count: number): Promise<void> => {
    for (let n = 0; n < count; n++) {
      while (sent - last.handled >= WINDOW) await reported();
      if (sent % 100 === 0) outbox.op(1, sent, open);
      for (let i = 0; i < ops; i++) {
        if (i % 10 < 7) outbox.data(2, i, chunk);
        else outbox.op(5, i, bytes * i);
      }
      outbox.flush();
      sent++;
    }
    while (last.handled < sent) {
      worker.postMessage("report");
      await reported();
    }
  };
  // Warm up both sides (the JIT, the port), then measure from here.
  await send(2_000);
  const receiverBefore = last.cpuMicros;
  const senderBefore = threadCpuMicros();
  const started = performance.now();
  const handledBefore = last.handled;
  await send(batches);
  const elapsed = performance.now() - started;
  const sender = threadCpuMicros() - senderBefore;
  const receiver = last.cpuMicros - receiverBefore;
  const handled = last.handled - handledBefore;
  await worker.terminate();
  const per = (micros: number) => (micros / handled).toFixed(1).padStart(5);
  return `${handled} batches in ${elapsed.toFixed(0)} ms: sender ${per(sender)} µs CPU per batch, receiver ${per(receiver)} µs`;
}

if (!isMainThread && (workerData as { receiver?: boolean } | null)?.receiver) {
  receive();
} else if (isMainThread) {
  const batches = Number(process.argv[2] ?? 20_000);
  const ops = Number(process.argv[3] ?? 100);
  const bytes = Number(process.argv[4] ?? 150);
  console.log(`node ${process.version}; ${ops} operations per batch, ${bytes} bytes per data operation`);
  for (let round = 0; round < 3; round++) console.log(await measure(batches, ops, bytes));
}
