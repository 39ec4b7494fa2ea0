import { type ChildProcess, spawn } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildIsCurrent } from "../bin/build-state.js";
import { waitForListening } from "../services/mesh/listening.js";
import { SERVER_NODE_FLAGS } from "../services/server/node-flags.js";

const root = new URL("../", import.meta.url).pathname;

/**
 * Limits the benchmark raises so it measures the server's capacity rather than the per-device
 * flood protection (20 sends/s per device would cap 200 devices at 4,000 msgs/s).
 */
export const RAISED_LIMITS: Record<string, string> = {
  SWITCHBOARD_SENDS_PER_SECOND: "1000000",
  SWITCHBOARD_SEND_BURST: "1000000",
  SWITCHBOARD_MAX_SENDS_IN_FLIGHT: "4096",
  SWITCHBOARD_FRAMES_PER_SECOND: "1000000",
  SWITCHBOARD_FRAME_BURST: "1000000",
  SWITCHBOARD_OUTBOUND_QUEUE_FRAMES: "8192",
  // Every simulated device connects from 127.0.0.1: per-address bounds would measure themselves.
  SWITCHBOARD_MAX_CONNECTIONS_PER_ADDRESS: "1000000",
  SWITCHBOARD_MAX_REQUESTS_IN_FLIGHT_PER_ADDRESS: "1000000",
  SWITCHBOARD_MAX_REQUESTS_IN_FLIGHT: "1000000",
  // Benchmarks register thousands of users from one address and fetch many bundles.
  SWITCHBOARD_REGISTRATIONS_PER_ADDRESS_PER_HOUR: "100000000",
  SWITCHBOARD_REGISTRATIONS_PER_HOUR: "100000000",
  SWITCHBOARD_LOOKUPS_PER_MINUTE: "100000000",
  SWITCHBOARD_BUNDLE_FETCHES_PER_MINUTE: "100000000",
};

/**
 * How the probe settles the heap before a memory snapshot. A full collection frees the garbage but
 * moves only the pages it picks, so a heap that has just taken thousands of connections keeps
 * hundreds of half-empty pages: a mesh gateway at 10,000 idle streams held 197 MiB of old space
 * for 108 MiB live, and its RSS per stream read 38-41 KiB, where an idle gateway settles at about
 * 30 once V8's memory reducer has compacted it, 37-48 s later (docs/benchmarks.md, "Thirty-sixth
 * pass"). So the probe runs a second collection with V8's --stress-compaction flag on, which moves
 * every live object, and reports SETTLE_MS later: V8 returns the emptied pages to the system on a
 * background thread, which took under a second at 10,000 streams. The flag is on for that one
 * collection only; the pause (0.3-0.7 s at 10,000 streams) falls outside the measured window.
 */
const SETTLE_MS = 1000;

/**
 * Preloaded into the spawned server with --import (no server code changes): once a second it
 * reports its thread's event-loop utilisation and delay and the process's memory on stderr; on
 * SIGUSR2 it runs a full GC (the server gets --expose-gc), compacts the heap, and reports memory a
 * second later, so memory per device is neither garbage that merely has not been collected yet nor
 * heap pages left half empty by it (SETTLE_MS, above). Worker threads inherit
 * --import, so the probe runs in each of them too (the store's write thread, the stream thread):
 * every line names its thread, and the main thread's figures are its own lines alone. On Linux a
 * line also carries the thread's id in the kernel, so its CPU can be read from /proc (Node 20 names
 * every thread "node" there, and only the thread itself knows which one it is).
 */
const PROBE = `
import { readlinkSync } from "node:fs";
import { monitorEventLoopDelay, performance } from "node:perf_hooks";
import { setFlagsFromString } from "node:v8";
import { isMainThread, threadId } from "node:worker_threads";
let tid;
try { tid = Number(readlinkSync("/proc/thread-self").split("/").pop()); } catch {}
const delay = monitorEventLoopDelay({ resolution: 10 });
delay.enable();
let last = performance.eventLoopUtilization();
const report = (kind) => {
  const m = process.memoryUsage();
  const line = { kind, thread: threadId, tid, t: performance.timeOrigin + performance.now(), rss: m.rss, heapUsed: m.heapUsed, heapTotal: m.heapTotal, external: m.external };
  if (kind === "tick") {
    const now = performance.eventLoopUtilization();
    line.elu = performance.eventLoopUtilization(now, last).utilization;
    last = now;
    // Node records the time between two samples: the 10 ms interval is not delay.
    line.delayP99 = Math.max(0, delay.percentile(99) / 1e6 - 10);
    line.delayMax = Math.max(0, delay.max / 1e6 - 10);
    delay.reset();
  }
  process.stderr.write("@@probe " + JSON.stringify(line) + "\\n");
};
setInterval(() => report("tick"), 1000).unref();
if (isMainThread) process.on("SIGUSR2", () => {
  if (typeof globalThis.gc === "function") {
    globalThis.gc();
    setFlagsFromString("--stress-compaction");
    try { globalThis.gc(); } finally { setFlagsFromString("--no-stress-compaction"); }
  }
  setTimeout(() => report("gc"), ${SETTLE_MS});
});
`;

/** Node flags that load the probe; also valid in NODE_OPTIONS, which is how mesh processes get it. */
export const PROBE_NODE_ARGS = [
  "--expose-gc",
  `--import=data:text/javascript;base64,${Buffer.from(PROBE).toString("base64")}`,
];

/** Whether a sample is the main thread's (its event loop, not a worker thread's). */
export function onMainThread(s: ProbeSample): boolean {
  return (s.thread ?? 0) === 0;
}

/**
 * The stretch a run's event-loop figures cover: the measured window, and nothing reported after the
 * run's results were in (closedAt). Right after that the bench takes its closing memory snapshot,
 * whose full GC and compaction the probe forces; a forced collection is atomic, not incremental
 * like the collector's own, and at 10,000 devices the two pause the main thread for 0.3-0.7 s
 * (the full GC alone 42-140 ms: docs/benchmarks.md, "Twenty-eighth pass"), which is the bench's
 * pause, not the server's.
 */
export interface ProbeWindow {
  start: number;
  end: number;
  closedAt: number;
}

/**
 * Whether a probe tick reports on the window: the second it covers, (t - 1000, t], is at least half
 * inside it, and the tick was written before the window closed.
 */
export function inProbeWindow(s: ProbeSample, w: ProbeWindow): boolean {
  return s.t > w.start + 500 && s.t <= w.end + 500 && s.t <= w.closedAt;
}

/** The probe's sample if the stderr line is one. */
export function parseProbeLine(line: string): ProbeSample | undefined {
  return line.startsWith("@@probe ") ? (JSON.parse(line.slice(8)) as ProbeSample) : undefined;
}

/** One line from the probe. */
export interface ProbeSample {
  kind: "tick" | "gc";
  /** The thread that reported: 0 is the main thread, others are worker threads (absent: 0). */
  thread?: number;
  /** Its id in the kernel (Linux), for its CPU in /proc/PID/task/TID/stat. */
  tid?: number;
  /** performance.timeOrigin + performance.now() in the server, in ms. */
  t: number;
  rss: number;
  heapUsed: number;
  /**
   * The V8 heap's committed pages: what is live plus the room the heap keeps after a collection
   * (absent from older probes). RSS counts them all.
   */
  heapTotal?: number;
  external: number;
  /** The thread's event-loop utilisation over the last second (0..1). */
  elu?: number;
  /** Event-loop delay over the last second, in ms. */
  delayP99?: number;
  delayMax?: number;
}

export interface BenchServer {
  url: string;
  pid: number;
  dataDir: string;
  /**
   * Whether bin/switchboard.js found dist/ current when the server started and ran it; otherwise
   * it ran the sources through tsx, which costs CPU and memory the deployed server does not.
   */
  compiled: boolean;
  /** Probe samples so far (bounded). */
  samples: ProbeSample[];
  /** Full GC in the server, then its memory; undefined if the probe does not answer. */
  memoryAfterGc(): Promise<ProbeSample | undefined>;
  stop(): Promise<number | null>;
}

/**
 * Compiles the server (`npm run build`: scripts/build.mjs) so that bin/switchboard.js, for the
 * spawned server and for every process of a mesh, runs dist/ as the container image does. The
 * sources through tsx are not what is deployed: tsx compiles with esbuild's keepNames, which
 * names every function the code creates with a defineProperty call (CPU on the hot path, and
 * closures in dictionary mode: about 2 KB of heap per idle stream).
 */
export function buildServer(): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(root, "scripts/build.mjs")], {
      cwd: root,
      stdio: ["ignore", "ignore", "pipe"],
    });
    const stderr: string[] = [];
    child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
      if (stderr.length < 100) stderr.push(chunk);
    });
    child.once("error", reject);
    child.once("exit", (code) => {
      if (code === 0) resolve();
      else reject(new Error(`npm run build failed (exit ${code}): ${stderr.join("").slice(-2000)}`));
    });
  });
}

/** Starts `switchboard start` as its own process on a temporary data directory. */
export async function spawnServer(options: {
  nodeArgs?: string[];
  env?: Record<string, string>;
  probe?: boolean;
}): Promise<BenchServer> {
  const dataDir = await mkdtemp(join(tmpdir(), "switchboard-bench-"));
  const env: Record<string, string | undefined> = {
    ...process.env,
    ...RAISED_LIMITS,
    SWITCHBOARD_LOG_LEVEL: "warn",
    // The attachment server on a free port, so a bench never collides with a running server.
    SWITCHBOARD_MEDIA_PORT: "0",
    ...options.env,
  };
  // Flags meant for the bench process (a profiler, say) are not the server's.
  delete env.NODE_OPTIONS;
  const probe = options.probe === false ? [] : PROBE_NODE_ARGS;
  // What bin/switchboard.js is about to decide: a source edited after the last build (even a
  // comment) makes the run measure the sources through tsx.
  const compiled = buildIsCurrent(root);
  const child: ChildProcess = spawn(
    process.execPath,
    [
      ...probe,
      // The server as `npm start` and the image run it; --server-node-args come after, so they win.
      ...SERVER_NODE_FLAGS,
      ...(options.nodeArgs ?? []),
      join(root, "bin/switchboard.js"),
      "start",
      "--data-dir",
      dataDir,
      "--port",
      "0",
      "--log-level",
      "warn",
    ],
    { cwd: root, env, stdio: ["ignore", "pipe", "pipe"] },
  );
  const stderr: string[] = [];
  const samples: ProbeSample[] = [];
  let gcWaiter: ((s: ProbeSample) => void) | undefined;
  let partial = "";
  child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
    const lines = (partial + chunk).split("\n");
    partial = lines.pop() ?? "";
    for (const line of lines) {
      const s = parseProbeLine(line);
      if (s !== undefined) {
        if (s.kind === "gc") {
          gcWaiter?.(s);
          gcWaiter = undefined;
        } else if (samples.length < 100_000) samples.push(s);
        continue;
      }
      stderr.push(line);
      if (stderr.length > 200) stderr.shift();
    }
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const url = await waitForListening(child, () => stderr, 30_000);
  return {
    url,
    pid: child.pid!,
    dataDir,
    compiled,
    samples,
    memoryAfterGc() {
      if (options.probe === false || child.exitCode !== null) return Promise.resolve(undefined);
      return new Promise((resolve) => {
        const timer = setTimeout(() => {
          gcWaiter = undefined;
          resolve(undefined);
        }, 10_000);
        gcWaiter = (s) => {
          clearTimeout(timer);
          resolve(s);
        };
        child.kill("SIGUSR2");
      });
    },
    async stop() {
      if (child.exitCode === null) child.kill("SIGTERM");
      const kill = setTimeout(() => child.kill("SIGKILL"), 15_000);
      const code = await exited;
      clearTimeout(kill);
      await rm(dataDir, { recursive: true, force: true });
      if (code !== 0 && stderr.length > 0) {
        process.stderr.write(`server stderr (tail):\n${stderr.join("\n").slice(-4000)}\n`);
      }
      return code;
    },
  };
}

/** Resident memory of a process from /proc, in bytes; undefined when it cannot be read. */
export function readMemory(pid: number): { rss: number; anon: number; file: number } | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const kb = (name: string) =>
      Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? "0") * 1024;
    return { rss: kb("VmRSS"), anon: kb("RssAnon"), file: kb("RssFile") + kb("RssShmem") };
  } catch {
    return undefined;
  }
}

// Linux reports times in clock ticks; 100 per second on every distribution Node supports.
const TICKS_PER_SECOND = 100;

/** User and system CPU time from a /proc stat file, in seconds. */
function statCpu(path: string): ThreadCpu | undefined {
  try {
    const stat = readFileSync(path, "utf8");
    // The command name may contain spaces; fields are counted after its closing parenthesis.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return { user: Number(fields[11]) / TICKS_PER_SECOND, system: Number(fields[12]) / TICKS_PER_SECOND };
  } catch {
    return undefined;
  }
}

/**
 * Read and write calls from a /proc io file: syscr and syscw, the calls of the read and write
 * families (read, pread, readv; write, pwrite, writev), whatever they read or wrote: sockets,
 * pipes, files. A socket written with sendmsg, an fsync and an epoll wait are not counted.
 * Undefined where the file cannot be read (another user's process, or not Linux).
 */
function ioCalls(path: string): { reads: number; writes: number } | undefined {
  try {
    const io = readFileSync(path, "utf8");
    const reads = /^syscr:\s+(\d+)$/m.exec(io)?.[1];
    const writes = /^syscw:\s+(\d+)$/m.exec(io)?.[1];
    return reads === undefined || writes === undefined
      ? undefined
      : { reads: Number(reads), writes: Number(writes) };
  } catch {
    return undefined;
  }
}

/** CPU time one thread (or process) has used, in seconds, and its read and write calls so far. */
export interface ThreadCpu {
  user: number;
  system: number;
  /** Its read and write calls (ioCalls), where /proc gives them. */
  reads?: number;
  writes?: number;
}

/**
 * CPU time (user + system) a process has used, in seconds: all threads, and its main thread;
 * each live thread's, by its id in the kernel; how many times its threads were switched off a
 * core so far (voluntary and not; threads that have exited are not counted); and the read and
 * write calls of all its threads, exited ones included, where /proc gives them.
 */
export function readCpuSeconds(pid: number):
  | {
      all: number;
      main: number;
      threads: Map<number, ThreadCpu>;
      switches: number;
      io: { reads: number; writes: number } | undefined;
    }
  | undefined {
  const all = statCpu(`/proc/${pid}/stat`);
  const main = statCpu(`/proc/${pid}/task/${pid}/stat`);
  if (all === undefined || main === undefined) return undefined;
  const { threads, switches } = readThreads(pid);
  return {
    all: all.user + all.system,
    main: main.user + main.system,
    threads,
    switches,
    io: ioCalls(`/proc/${pid}/io`),
  };
}

/**
 * Each thread's CPU and read and write calls, and the context switches of all of them. Each
 * time a thread waits (for a socket, a message from another thread, a lock, an fsync) and is
 * woken is one switch; on a VM each wake-up costs CPU of its own (docs/benchmarks.md,
 * "Thirteenth pass"), so they count what hand-offs cost. A call into the kernel costs too, and
 * a write to a loopback socket does the receiving side's TCP work in the writer's call: the
 * calls say where a thread's system time goes (forty-first pass).
 */
function readThreads(pid: number): { threads: Map<number, ThreadCpu>; switches: number } {
  const threads = new Map<number, ThreadCpu>();
  let switches = 0;
  let tasks: string[];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return { threads, switches };
  }
  for (const tid of tasks) {
    try {
      const status = readFileSync(`/proc/${pid}/task/${tid}/status`, "utf8");
      for (const m of status.matchAll(/^(?:non)?voluntary_ctxt_switches:\s+(\d+)$/gm))
        switches += Number(m[1]);
      const cpu = statCpu(`/proc/${pid}/task/${tid}/stat`);
      if (cpu !== undefined) threads.set(Number(tid), { ...cpu, ...ioCalls(`/proc/${pid}/task/${tid}/io`) });
    } catch {
      // The thread exited between the listing and the read.
    }
  }
  return { threads, switches };
}

/** Busy and total CPU time of the whole machine, in seconds, to see load from other programs. */
export function readMachineCpu(): { busy: number; total: number } | undefined {
  try {
    const line = readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "";
    const v = line.trim().split(/\s+/).slice(1).map(Number);
    const total = v.reduce((a, b) => a + b, 0);
    const idle = (v[3] ?? 0) + (v[4] ?? 0);
    return { busy: (total - idle) / TICKS_PER_SECOND, total: total / TICKS_PER_SECOND };
  } catch {
    return undefined;
  }
}
