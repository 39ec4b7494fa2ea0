import assert from "node:assert/strict";
import { type ChildProcessByStdio, spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { describe, it } from "node:test";
import { PROBE_NODE_ARGS, type ProbeSample, parseProbeLine, readCpuSeconds } from "./server.js";

/**
 * A process with the bench's probe and one worker thread (from a file: the probe, an --import,
 * runs in workers started from modules): the worker spends 300 ms of its own CPU (by its
 * schedstat, not the clock) and makes 2,000 writes, says so, and both threads then idle until
 * killed.
 */
const MAIN = `
import { Worker } from "node:worker_threads";
const worker = new Worker(new URL("./worker.mjs", import.meta.url));
worker.once("message", () => process.stdout.write("spent\\n"));
setInterval(() => {}, 1000);
`;
const WORKER = `
import { closeSync, openSync, readFileSync, writeSync } from "node:fs";
import { parentPort } from "node:worker_threads";
const ran = () => Number(readFileSync("/proc/thread-self/schedstat", "utf8").split(" ")[0]) / 1e6;
const start = ran();
while (ran() - start < 300);
const devNull = openSync("/dev/null", "w");
for (let i = 0; i < 2000; i++) writeSync(devNull, "x");
closeSync(devNull);
parentPort.postMessage("spent");
setInterval(() => {}, 1000);
`;

/**
 * A process whose old generation is half empty after a full collection: two million small objects
 * promoted, every other one then dropped. A full GC frees them but leaves each page half full, as
 * a burst of connections leaves a gateway's heap; it says how much heap it holds after one.
 */
const HALF_EMPTY = `
import { getHeapStatistics } from "node:v8";
const objects = [];
for (let i = 0; i < 2_000_000; i++) objects.push({ a: i, b: i });
globalThis.gc();
globalThis.gc();
for (let i = 1; i < objects.length; i += 2) objects[i] = undefined;
globalThis.gc();
process.stdout.write(\`collected \${getHeapStatistics().total_heap_size}\\n\`);
setInterval(() => objects.length, 1000);
`;

/** Calls `sample` with each line the probe writes on the child's stderr. */
function onProbeSamples(
  child: ChildProcessByStdio<null, Readable, Readable>,
  sample: (s: ProbeSample) => void,
): void {
  let stderr = "";
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
    stderr += chunk;
    const lines = stderr.split("\n");
    stderr = lines.pop()!;
    for (const line of lines) {
      const s = parseProbeLine(line);
      if (s !== undefined) sample(s);
    }
  });
}

describe("the bench's probe", { skip: process.platform !== "linux" && "reads /proc" }, () => {
  it("compacts the heap before it reports memory, so half-empty pages do not count", async () => {
    const dir = await mkdtemp(join(tmpdir(), "bench-probe-"));
    await writeFile(join(dir, "main.mjs"), HALF_EMPTY);
    const child = spawn(process.execPath, [...PROBE_NODE_ARGS, join(dir, "main.mjs")], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    try {
      const snapshot = new Promise<ProbeSample>((resolve) =>
        onProbeSamples(child, (s) => {
          if (s.kind === "gc") resolve(s);
        }),
      );
      const [said] = (await once(child.stdout.setEncoding("utf8"), "data")) as [string];
      const collected = Number(/^collected (\d+)/.exec(said)?.[1]);
      assert.ok(collected > 0, said);
      child.kill("SIGUSR2");
      const s = await snapshot;
      // A million objects were dropped, every other one; a second full GC gives back almost none
      // of the pages they were on (measured: 135 MiB committed, 134 after it; 98 after a compaction).
      const MIB = 1024 * 1024;
      assert.ok(
        s.heapTotal! < collected - 16 * MIB,
        `committed heap ${(s.heapTotal! / MIB).toFixed(0)} MiB after the probe, ${(collected / MIB).toFixed(0)} after a full GC`,
      );
    } finally {
      child.kill();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("names each thread's id in the kernel, whose CPU and read and write calls the bench then reads apart", async () => {
    const dir = await mkdtemp(join(tmpdir(), "bench-probe-"));
    await writeFile(join(dir, "main.mjs"), MAIN);
    await writeFile(join(dir, "worker.mjs"), WORKER);
    const child = spawn(process.execPath, [...PROBE_NODE_ARGS, join(dir, "main.mjs")], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    try {
      const samples: ProbeSample[] = [];
      onProbeSamples(child, (s) => samples.push(s));
      const [spent] = (await once(child.stdout.setEncoding("utf8"), "data")) as [string];
      assert.equal(spent.trim(), "spent");
      // A tick a second from each thread.
      while (new Set(samples.map((s) => s.thread)).size < 2) await new Promise((r) => setTimeout(r, 100));

      const tidOf = (thread: number) => samples.find((s) => (s.thread ?? 0) === thread)?.tid;
      const main = tidOf(0);
      const worker = tidOf(samples.find((s) => (s.thread ?? 0) !== 0)!.thread!);
      assert.equal(main, child.pid, "the main thread's id is the process's");
      assert.ok(worker !== undefined && worker !== main, `the worker's id: ${worker}`);

      const cpu = readCpuSeconds(child.pid!)!;
      const spentByWorker = cpu.threads.get(worker!)!;
      assert.ok(spentByWorker.user + spentByWorker.system >= 0.25, JSON.stringify(spentByWorker));
      const spentByMain = cpu.threads.get(main!)!;
      assert.ok(
        spentByMain.user + spentByMain.system < spentByWorker.user + spentByWorker.system,
        "the worker's busy loop is its own, not the main thread's",
      );
      // The worker's writes are its own too, and the process's count has them.
      assert.ok(spentByWorker.writes! >= 2000, `the worker's writes: ${spentByWorker.writes}`);
      assert.ok(spentByMain.writes! < 100, `the main thread's writes: ${spentByMain.writes}`);
      assert.ok(cpu.io!.writes >= spentByWorker.writes! + spentByMain.writes!, JSON.stringify(cpu.io));
    } finally {
      child.kill();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
