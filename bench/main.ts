import { cpus, totalmem } from "node:os";
import { parseArgs } from "node:util";
import { Worker } from "node:worker_threads";
import { Histogram, type LatencySummary } from "./histogram.js";
import { clock, Load, type LoadInput, type LoadStats, type RunPlan, sleep } from "./load.js";
import { type BenchMesh, type BenchMeshProcess, startMesh } from "./mesh.js";
import {
  type BenchServer,
  type ProbeSample,
  RAISED_LIMITS,
  readCpuSeconds,
  readMachineCpu,
  readMemory,
  spawnServer,
} from "./server.js";
import { type BenchConversation, setUp } from "./setup.js";
import type { ClientKind } from "./stream.js";
import type { WorkerRequest } from "./worker.js";

const USAGE = `npm run bench -- [options]

  --url URL            use a running server (default: spawn one on a temp dir with raised limits)
  --mesh               spawn the distributed mesh instead (every role its own process, own nats-server
                       and redis-server, raised limits); device i connects to gateway i mod G
  --gateways N         with --mesh: gateway processes, default 2
  --sequencers N       with --mesh: sequencer replicas, default 2
  --fanouts N          with --mesh: fanout workers, default 2
  --keep-mesh-dir      with --mesh: keep the mesh's directory (data and each process's log) after the run;
                       it is kept anyway when a process logged a warning or error or deliveries were lost
  --server-pid PID     with --url: the server's pid, for memory and CPU figures
  --devices N          devices (one user each), default 200
  --mode M             direct | group | idle (idle: connect and hold streams, send nothing), default direct
  --group-size N       members per group in group mode, default 8
  --rate R             target sends/s over all devices; 0 = as fast as --inflight allows, default 5000
  --inflight N         sends in flight per device (the cap in rate mode, the window with --rate 0), default 32
  --duration S         measured seconds, default 10
  --warmup S           seconds of traffic before measuring, default 2
  --drain S            after sending stops, wait up to S seconds for outstanding acks and deliveries, default 10
  --payload B          payload bytes (at least 8: the send timestamp), default 64
  --workers N          load generator worker threads; 0 runs it on the main thread, default 1
  --client C           raw (gRPC on node:http2) | connect (@connectrpc/connect-node), default raw
  --ack-interval MS    how often receivers send cumulative acks, default 20
  --server-node-args=S     node flags for the spawned server (with --mesh: every service process), e.g. --server-node-args="--cpu-prof --cpu-prof-dir=/tmp/prof"
  --probe on|off       preload the bench's probe into the spawned server (event-loop use, GC'd memory), default on
  --json               print one JSON object instead of the report
  --attack NAME        run a hostile client instead and report server RSS and a bystander's round trips
                       (half-open | idle | slow-reader | all; --attack --help for its options)
`;

interface Options {
  url: string | undefined;
  mesh: { gateways: number; sequencers: number; fanouts: number; keepDir: boolean } | undefined;
  serverPid: number | undefined;
  devices: number;
  mode: "direct" | "group" | "idle";
  groupSize: number;
  rate: number;
  inflight: number;
  duration: number;
  warmup: number;
  payload: number;
  drain: number;
  workers: number;
  client: ClientKind;
  ackInterval: number;
  serverNodeArgs: string[] | undefined;
  probe: boolean;
  json: boolean;
}

function parseOptions(): Options {
  const { values } = parseArgs({
    options: {
      url: { type: "string" },
      mesh: { type: "boolean", default: false },
      gateways: { type: "string", default: "2" },
      sequencers: { type: "string", default: "2" },
      fanouts: { type: "string", default: "2" },
      "keep-mesh-dir": { type: "boolean", default: false },
      "server-pid": { type: "string" },
      devices: { type: "string", default: "200" },
      mode: { type: "string", default: "direct" },
      "group-size": { type: "string", default: "8" },
      rate: { type: "string", default: "5000" },
      inflight: { type: "string", default: "32" },
      duration: { type: "string", default: "10" },
      warmup: { type: "string", default: "2" },
      payload: { type: "string", default: "64" },
      drain: { type: "string", default: "10" },
      workers: { type: "string", default: "1" },
      client: { type: "string", default: "raw" },
      "ack-interval": { type: "string", default: "20" },
      "server-node-args": { type: "string" },
      probe: { type: "string", default: "on" },
      json: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  const num = (name: string, raw: string, min: number, max: number): number => {
    const n = Number(raw);
    if (!Number.isFinite(n) || n < min || n > max)
      throw new Error(`--${name}: a number from ${min} to ${max}, got ${raw}`);
    return n;
  };
  const mode = values.mode;
  if (mode !== "direct" && mode !== "group" && mode !== "idle")
    throw new Error("--mode: direct, group or idle");
  const client = values.client;
  if (client !== "raw" && client !== "connect") throw new Error("--client: raw or connect");
  if (values.url !== undefined && !/^http:\/\/(127\.0\.0\.1|localhost|\[::1\]):\d+\/?$/.test(values.url)) {
    throw new Error("--url: only a local server (http://127.0.0.1:PORT) is benchmarked");
  }
  if (values.mesh && (values.url !== undefined || values["server-pid"] !== undefined))
    throw new Error("--mesh spawns its own processes; it does not combine with --url or --server-pid");
  return {
    url: values.url?.replace(/\/$/, ""),
    mesh: values.mesh
      ? {
          gateways: Math.floor(num("gateways", values.gateways, 1, 64)),
          sequencers: Math.floor(num("sequencers", values.sequencers, 1, 64)),
          fanouts: Math.floor(num("fanouts", values.fanouts, 1, 64)),
          keepDir: values["keep-mesh-dir"],
        }
      : undefined,
    serverPid:
      values["server-pid"] === undefined ? undefined : num("server-pid", values["server-pid"], 1, 2 ** 31),
    devices: Math.floor(num("devices", values.devices, 2, 100_000)),
    mode,
    groupSize: Math.floor(num("group-size", values["group-size"], 2, 1024)),
    rate: num("rate", values.rate, 0, 1_000_000),
    inflight: Math.floor(num("inflight", values.inflight, 1, 4096)),
    duration: num("duration", values.duration, 0, 3600),
    warmup: num("warmup", values.warmup, 0, 600),
    payload: Math.floor(num("payload", values.payload, 8, 60_000)),
    drain: num("drain", values.drain, 0, 600),
    workers: Math.floor(num("workers", values.workers, 0, 16)),
    client,
    ackInterval: num("ack-interval", values["ack-interval"], 1, 10_000),
    serverNodeArgs: values["server-node-args"]?.split(/\s+/).filter(Boolean),
    probe: values.probe !== "off",
    json: values.json,
  };
}

/** A load generator on the main thread or in a worker, behind one interface. */
interface Generator {
  connect(): Promise<{ failed: number; reasons: string[] }>;
  run(plan: RunPlan): Promise<LoadStats>;
  close(): Promise<void>;
}

function inlineGenerator(input: LoadInput): Generator {
  const load = new Load(input);
  return { connect: () => load.connect(), run: (plan) => load.run(plan), close: () => load.close() };
}

// Worker threads do not inherit tsx's loader hooks; a small bootstrap registers them first, as
// bin/switchboard.js does, then imports the TypeScript worker.
const WORKER_BOOTSTRAP = `
const { workerData } = require("node:worker_threads");
import(workerData.tsxApi)
  .then(({ register }) => { register(); return import(workerData.workerUrl); })
  .catch((err) => { console.error(err); process.exit(1); });
`;

function workerGenerator(input: LoadInput): Generator {
  const worker = new Worker(WORKER_BOOTSTRAP, {
    eval: true,
    workerData: {
      ...input,
      tsxApi: import.meta.resolve("tsx/esm/api"),
      workerUrl: new URL("./worker.ts", import.meta.url).href,
    },
  });
  let pending: { resolve: (v: unknown) => void; reject: (e: Error) => void } | undefined;
  let dead: Error | undefined;
  const fail = (err: Error) => {
    dead ??= err;
    const p = pending;
    pending = undefined;
    p?.reject(err);
  };
  worker.on("message", (msg: { type: string; result?: unknown; error?: string }) => {
    const p = pending;
    pending = undefined;
    if (msg.error !== undefined) p?.reject(new Error(`worker: ${msg.error}`));
    else p?.resolve(msg.result);
  });
  worker.on("error", fail);
  worker.on("exit", (code) => fail(new Error(`load worker exited with code ${code}`)));
  const call = <T>(req: WorkerRequest): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      if (dead !== undefined) {
        reject(dead);
        return;
      }
      pending = { resolve: resolve as (v: unknown) => void, reject };
      worker.postMessage(req);
    });
  return {
    connect: () => call({ type: "connect" }),
    run: (plan) => call({ type: "run", plan }),
    async close() {
      if (dead === undefined) await call({ type: "close" }).catch(() => {});
      await worker.terminate();
    },
  };
}

/** Splits whole conversations over generators so both ends of each share a clock. */
function split(
  opts: Options,
  devices: Awaited<ReturnType<typeof setUp>>["devices"],
  conversations: BenchConversation[],
  urls: string[],
): LoadInput[] {
  const count = Math.max(1, opts.workers);
  const parts = Array.from({ length: count }, () => ({
    devices: [] as typeof devices,
    conversations: [] as BenchConversation[],
  }));
  conversations.forEach((c, i) => {
    const part = parts[i % count]!;
    const members = c.members.map((m) => {
      part.devices.push(devices[m]!);
      return part.devices.length - 1;
    });
    part.conversations.push({ conversationId: c.conversationId, members });
  });
  const connected = parts.reduce((n, p) => n + p.devices.length, 0);
  return parts
    .filter((p) => p.devices.length > 0)
    .map((p) => ({
      urls,
      client: opts.client,
      devices: p.devices,
      conversations: p.conversations,
      rate: opts.rate === 0 ? 0 : (opts.rate * p.devices.length) / connected,
      inflight: opts.inflight,
      payloadBytes: opts.payload,
      ackIntervalMs: opts.ackInterval,
      idle: opts.mode === "idle",
      connectConcurrency: 50,
    }));
}

interface CpuMark {
  at: number;
  server: { all: number; main: number } | undefined;
  /** Each mesh process by name. */
  mesh: Map<string, { all: number; main: number } | undefined>;
  client: number;
  machine: ReturnType<typeof readMachineCpu>;
}

function cpuMark(pid: number | undefined, mesh: BenchMeshProcess[]): CpuMark {
  const u = process.cpuUsage();
  return {
    at: clock(),
    server: pid === undefined ? undefined : readCpuSeconds(pid),
    mesh: new Map(mesh.map((p) => [p.name, readCpuSeconds(p.pid)])),
    client: (u.user + u.system) / 1e6,
    machine: readMachineCpu(),
  };
}

/** Memory of every mesh process at one moment: after a full GC where the probe answers. */
async function meshMemory(mesh: BenchMesh | undefined): Promise<Map<string, MemorySnapshot>> {
  const out = new Map<string, MemorySnapshot>();
  if (mesh === undefined) return out;
  const probed = await mesh.memoryAfterGc();
  for (const p of mesh.processes) {
    const proc = readMemory(p.pid);
    const gc = probed.get(p.name);
    if (gc !== undefined)
      out.set(p.name, {
        rss: gc.rss,
        anon: proc?.anon,
        file: proc?.file,
        heapUsed: gc.heapUsed,
        afterGc: true,
      });
    else if (proc !== undefined)
      out.set(p.name, {
        rss: proc.rss,
        anon: proc.anon,
        file: proc.file,
        heapUsed: undefined,
        afterGc: false,
      });
  }
  return out;
}

/** Server memory at one moment; after a full GC when the probe is there. */
interface MemorySnapshot {
  rss: number;
  /** Anonymous memory (heaps, malloc) and file-backed pages (code, LMDB's memory map). */
  anon: number | undefined;
  file: number | undefined;
  heapUsed: number | undefined;
  afterGc: boolean;
}

async function memorySnapshot(
  server: BenchServer | undefined,
  pid: number | undefined,
): Promise<MemorySnapshot | undefined> {
  const probed = await server?.memoryAfterGc();
  const proc = pid === undefined ? undefined : readMemory(pid);
  if (probed !== undefined) {
    return { rss: probed.rss, anon: proc?.anon, file: proc?.file, heapUsed: probed.heapUsed, afterGc: true };
  }
  return proc && { rss: proc.rss, anon: proc.anon, file: proc.file, heapUsed: undefined, afterGc: false };
}

const mib = (bytes: number) => bytes / (1024 * 1024);
const fixed = (n: number, digits = 1) => n.toFixed(digits);

async function main(): Promise<void> {
  // Hostile clients have a runner of their own (bench/attack.ts).
  if (process.argv.some((a) => a === "--attack" || a.startsWith("--attack="))) {
    await (await import("./attack.js")).runAttacks(process.argv.slice(2));
    return;
  }
  const opts = parseOptions();
  const log = (line: string) => {
    if (!opts.json) process.stderr.write(`${line}\n`);
  };
  let server: BenchServer | undefined;
  let mesh: BenchMesh | undefined;
  let url = opts.url;
  let urls = url === undefined ? [] : [url];
  let pid = opts.serverPid;
  if (opts.mesh !== undefined) {
    const meshStart = clock();
    mesh = await startMesh({
      ...opts.mesh,
      probe: opts.probe,
      ...(opts.serverNodeArgs && { nodeArgs: opts.serverNodeArgs }),
    });
    urls = mesh.gatewayUrls;
    url = urls[0]!;
    log(
      `started a mesh in ${mesh.dir} in ${fixed((clock() - meshStart) / 1000)} s: ${mesh.processes.map((p) => `${p.name} (pid ${p.pid})`).join(", ")}; gateways ${urls.join(" ")}; raised limits as below`,
    );
  } else if (url === undefined) {
    server = await spawnServer({
      probe: opts.probe,
      ...(opts.serverNodeArgs && { nodeArgs: opts.serverNodeArgs }),
    });
    url = server.url;
    urls = [url];
    pid = server.pid;
    log(
      `spawned server pid ${pid} at ${url}${opts.probe ? " (with the bench's probe)" : ""} and raised limits: ${Object.entries(
        RAISED_LIMITS,
      )
        .map(([k, v]) => `${k}=${v}`)
        .join(" ")}`,
    );
  }
  const generators: Generator[] = [];
  // A run that fails part-way keeps the mesh's logs: they are the evidence.
  let keepMeshDir = mesh !== undefined;
  try {
    const setupStart = clock();
    const convMode = opts.mode === "group" ? "group" : "direct";
    const { devices, conversations } = await setUp(url, opts.devices, convMode, opts.groupSize);
    log(
      `registered ${devices.length} users and ${conversations.length} ${convMode} conversations in ${fixed((clock() - setupStart) / 1000)} s`,
    );

    await sleep(1000);
    const memBefore = await memorySnapshot(server, pid);
    const meshBefore = await meshMemory(mesh);
    const inputs = split(opts, devices, conversations, urls);
    const connectedDevices = inputs.reduce((n, i) => n + i.devices.length, 0);
    for (const input of inputs)
      generators.push(opts.workers === 0 ? inlineGenerator(input) : workerGenerator(input));
    const connectStart = clock();
    const connected = await Promise.all(generators.map((g) => g.connect()));
    const connectFailed = connected.reduce((n, c) => n + c.failed, 0);
    log(
      `opened ${connectedDevices - connectFailed}/${connectedDevices} streams (all caught up) in ${fixed((clock() - connectStart) / 1000)} s` +
        (connectFailed > 0 ? `; failures: ${connected.flatMap((c) => c.reasons).join("; ")}` : ""),
    );
    await sleep(2000);
    const memConnected = await memorySnapshot(server, pid);
    const meshConnected = await meshMemory(mesh);
    const meshProcesses = mesh?.processes ?? [];

    const plan: RunPlan = {
      startAt: clock() + 200,
      warmupMs: opts.warmup * 1000,
      durationMs: opts.duration * 1000,
      drainMs: opts.drain * 1000,
    };
    const windowStart = plan.startAt + plan.warmupMs;
    const windowEnd = windowStart + plan.durationMs;
    let cpuStart: CpuMark | undefined;
    let cpuEnd: CpuMark | undefined;
    let peakRss = 0;
    const meshPeakRss = new Map<string, number>();
    const sampler = setInterval(() => {
      const m = pid === undefined ? undefined : readMemory(pid);
      if (m !== undefined && m.rss > peakRss) peakRss = m.rss;
      for (const p of meshProcesses) {
        const rss = readMemory(p.pid)?.rss ?? 0;
        if (rss > (meshPeakRss.get(p.name) ?? 0)) meshPeakRss.set(p.name, rss);
      }
    }, 500);
    const marks = [
      setTimeout(() => (cpuStart = cpuMark(pid, meshProcesses)), windowStart - clock()),
      setTimeout(() => (cpuEnd = cpuMark(pid, meshProcesses)), windowEnd - clock()),
    ];
    log(
      opts.mode === "idle"
        ? `holding ${connectedDevices} idle streams for ${opts.warmup + opts.duration} s`
        : `sending ${opts.rate === 0 ? `as fast as possible (${opts.inflight} in flight per device)` : `${opts.rate} msgs/s`} for ${opts.warmup} s warm-up + ${opts.duration} s measured`,
    );
    const results = await Promise.all(generators.map((g) => g.run(plan)));
    clearInterval(sampler);
    for (const m of marks) clearTimeout(m);
    cpuEnd ??= cpuMark(pid, meshProcesses);
    cpuStart ??= cpuEnd;
    const memEnd = await memorySnapshot(server, pid);
    const meshEnd = await meshMemory(mesh);
    const probe = (server?.samples ?? []).filter((s) => s.t > windowStart + 500 && s.t <= windowEnd + 500);

    const report = summarize(opts, results, {
      connectedDevices,
      connectFailed,
      conversations: conversations.length,
      url,
      spawned: server !== undefined,
      memBefore,
      memConnected,
      memEnd,
      peakRss,
      cpuStart,
      cpuEnd,
      probe,
      mesh:
        mesh === undefined
          ? undefined
          : {
              processes: meshProcesses,
              before: meshBefore,
              connected: meshConnected,
              end: meshEnd,
              peakRss: meshPeakRss,
              problems: mesh.problems.slice(0, 10),
              problemCount: mesh.problemCount(),
              dir: mesh.dir,
            },
    });
    const lost = report.correctness.receivedDeliveries < report.correctness.expectedDeliveries;
    keepMeshDir =
      mesh !== undefined &&
      (opts.mesh?.keepDir === true ||
        report.mesh!.problemCount > 0 ||
        lost ||
        report.correctness.unansweredSends > 0);
    if (opts.json) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    else printReport(report);
  } finally {
    await Promise.all(generators.map((g) => g.close().catch(() => {})));
    if (server !== undefined) {
      const code = await server.stop();
      if (code !== 0) process.stderr.write(`server exited with code ${code}\n`);
    }
    if (mesh !== undefined) {
      await mesh.stop(keepMeshDir);
      if (keepMeshDir) process.stderr.write(`mesh directory (data and logs) kept in ${mesh.dir}\n`);
    }
  }
}

interface Context {
  connectedDevices: number;
  connectFailed: number;
  conversations: number;
  url: string;
  spawned: boolean;
  memBefore: MemorySnapshot | undefined;
  memConnected: MemorySnapshot | undefined;
  memEnd: MemorySnapshot | undefined;
  peakRss: number;
  cpuStart: CpuMark;
  cpuEnd: CpuMark;
  probe: ProbeSample[];
  mesh:
    | {
        processes: BenchMeshProcess[];
        before: Map<string, MemorySnapshot>;
        connected: Map<string, MemorySnapshot>;
        end: Map<string, MemorySnapshot>;
        peakRss: Map<string, number>;
        problems: { process: string; line: string }[];
        problemCount: number;
        dir: string;
      }
    | undefined;
}

type MeshContext = NonNullable<Context["mesh"]>;

/**
 * CPU, event-loop use and memory of every mesh process over the measured window, and per role.
 * CPU per message divides a role's CPU seconds in the window by the messages acked in it, so it
 * includes everything the role did meanwhile (receipts, cursors, acks), not only the send path.
 */
function meshSummary(m: MeshContext, ctx: Context, seconds: number, acked: number, delivered: number) {
  const windowStart = ctx.cpuStart.at;
  const windowEnd = ctx.cpuEnd.at;
  const processes = m.processes.map((p) => {
    const a = ctx.cpuStart.mesh.get(p.name);
    const b = ctx.cpuEnd.mesh.get(p.name);
    const cpuSeconds = a && b ? b.all - a.all : undefined;
    const mainSeconds = a && b && p.node ? b.main - a.main : undefined;
    const ticks = p.samples.filter((s) => s.t > windowStart + 500 && s.t <= windowEnd + 500);
    return {
      name: p.name,
      role: p.role,
      pid: p.pid,
      cpuSeconds,
      cpuPercent: cpuSeconds === undefined || seconds <= 0 ? undefined : (100 * cpuSeconds) / seconds,
      mainThreadPercent:
        mainSeconds === undefined || seconds <= 0 ? undefined : (100 * mainSeconds) / seconds,
      eventLoopUtilization:
        ticks.length === 0 ? undefined : ticks.reduce((n, s) => n + (s.elu ?? 0), 0) / ticks.length,
      eventLoopDelayMaxMs: ticks.length === 0 ? undefined : Math.max(...ticks.map((s) => s.delayMax ?? 0)),
      memoryBeforeConnect: m.before.get(p.name),
      memoryConnected: m.connected.get(p.name),
      memoryEnd: m.end.get(p.name),
      peakRssBytes: m.peakRss.get(p.name),
    };
  });
  const add = (xs: (number | undefined)[]) =>
    xs.some((x) => x !== undefined) ? xs.reduce<number>((n, x) => n + (x ?? 0), 0) : undefined;
  const roleNames = [...new Set(processes.map((p) => p.role))];
  const roles = roleNames.map((role) => {
    const ps = processes.filter((p) => p.role === role);
    const cpuSeconds = add(ps.map((p) => p.cpuSeconds));
    const connected = add(ps.map((p) => p.memoryConnected?.rss));
    const before = add(ps.map((p) => p.memoryBeforeConnect?.rss));
    return {
      role,
      processes: ps.length,
      cpuSeconds,
      cpuPercent: add(ps.map((p) => p.cpuPercent)),
      mainThreadPercent: add(ps.map((p) => p.mainThreadPercent)),
      /** CPU per acked message and per delivery, in ms and µs. */
      cpuMsPerMessage: cpuSeconds === undefined || acked === 0 ? undefined : (1000 * cpuSeconds) / acked,
      cpuUsPerDelivery:
        cpuSeconds === undefined || delivered === 0 ? undefined : (1e6 * cpuSeconds) / delivered,
      /** The busiest of the role's processes. */
      eventLoopUtilizationMax: ps.some((p) => p.eventLoopUtilization !== undefined)
        ? Math.max(...ps.map((p) => p.eventLoopUtilization ?? 0))
        : undefined,
      rssConnectedBytes: connected,
      rssEndBytes: add(ps.map((p) => p.memoryEnd?.rss)),
      peakRssBytes: add(ps.map((p) => p.peakRssBytes)),
      rssPerConnectedDeviceBytes:
        role === "gateway" && connected !== undefined && before !== undefined && ctx.connectedDevices > 0
          ? (connected - before) / ctx.connectedDevices
          : undefined,
    };
  });
  const cpuSeconds = add(processes.map((p) => p.cpuSeconds));
  return {
    dir: m.dir,
    cpuPercent: add(processes.map((p) => p.cpuPercent)),
    mainThreadPercent: add(processes.map((p) => p.mainThreadPercent)),
    cpuMsPerMessage: cpuSeconds === undefined || acked === 0 ? undefined : (1000 * cpuSeconds) / acked,
    roles,
    processes,
    problemCount: m.problemCount,
    problems: m.problems,
  };
}

function summarize(opts: Options, results: LoadStats[], ctx: Context) {
  const sum = (pick: (s: LoadStats) => number) => results.reduce((n, s) => n + pick(s), 0);
  const ack = new Histogram();
  const delivery = new Histogram();
  for (const r of results) {
    ack.merge(r.ackLatency);
    delivery.merge(r.deliveryLatency);
  }
  const sendErrors: Record<string, number> = {};
  for (const r of results)
    for (const [k, v] of Object.entries(r.sendErrors)) sendErrors[k] = (sendErrors[k] ?? 0) + v;
  const seconds = (ctx.cpuEnd.at - ctx.cpuStart.at) / 1000;
  const cpu = (a: number | undefined, b: number | undefined) =>
    a === undefined || b === undefined || seconds <= 0 ? undefined : (100 * (b - a)) / seconds;
  const acked = sum((s) => s.acked);
  const mesh =
    ctx.mesh &&
    meshSummary(
      ctx.mesh,
      ctx,
      seconds,
      acked,
      sum((s) => s.delivered),
    );
  // For a mesh, "server" is every process of it, nats-server and redis-server included.
  const serverCpu = mesh ? mesh.cpuPercent : cpu(ctx.cpuStart.server?.all, ctx.cpuEnd.server?.all);
  const serverMain = mesh ? mesh.mainThreadPercent : cpu(ctx.cpuStart.server?.main, ctx.cpuEnd.server?.main);
  const clientCpu = cpu(ctx.cpuStart.client, ctx.cpuEnd.client);
  const machineBusy = cpu(ctx.cpuStart.machine?.busy, ctx.cpuEnd.machine?.busy);
  const ackToDelivery = new Histogram();
  const ackLag = new Histogram();
  for (const r of results) {
    ackToDelivery.merge(r.ackToDeliveryLatency);
    ackLag.merge(r.ackLagLatency);
  }
  let timelineLength = Math.max(...results.map((r) => r.timeline.sent.length));
  const line = (pick: (r: LoadStats) => number[]) =>
    Array.from({ length: timelineLength }, (_, i) => results.reduce((n, r) => n + (pick(r)[i] ?? 0), 0));
  const timeline = {
    sent: line((r) => r.timeline.sent),
    acked: line((r) => r.timeline.acked),
    delivered: line((r) => r.timeline.delivered),
  };
  while (
    timelineLength > 0 &&
    timeline.sent[timelineLength - 1] === 0 &&
    timeline.acked[timelineLength - 1] === 0 &&
    timeline.delivered[timelineLength - 1] === 0
  )
    timelineLength--;
  for (const l of Object.values(timeline)) l.length = timelineLength;
  const { memBefore, memConnected } = ctx;
  const perDevice =
    memBefore && memConnected && ctx.connectedDevices > 0
      ? {
          rssBytes: (memConnected.rss - memBefore.rss) / ctx.connectedDevices,
          anonBytes:
            memBefore.anon !== undefined && memConnected.anon !== undefined
              ? (memConnected.anon - memBefore.anon) / ctx.connectedDevices
              : undefined,
          heapBytes:
            memBefore.heapUsed !== undefined && memConnected.heapUsed !== undefined
              ? (memConnected.heapUsed - memBefore.heapUsed) / ctx.connectedDevices
              : undefined,
          afterGc: memBefore.afterGc && memConnected.afterGc,
        }
      : undefined;
  const elu = ctx.probe.map((s) => s.elu ?? 0);
  const duration = opts.duration;
  const rate = (n: number) => (duration > 0 ? n / duration : 0);
  return {
    options: { ...opts, url: ctx.url },
    machine: {
      cpus: cpus().length,
      cpuModel: cpus()[0]?.model ?? "",
      memoryGiB: totalmem() / 2 ** 30,
      node: process.version,
    },
    server: {
      spawned: ctx.spawned,
      limits: ctx.spawned ? RAISED_LIMITS : "as configured by the running server",
    },
    devices: ctx.connectedDevices,
    connectFailures: ctx.connectFailed,
    conversations: ctx.conversations,
    throughput: {
      targetRate: opts.mode === "idle" ? 0 : opts.rate,
      sentPerSecond: rate(sum((s) => s.sent)),
      ackedPerSecond: rate(sum((s) => s.acked)),
      deliveredPerSecond: rate(sum((s) => s.delivered)),
      echoesPerSecond: rate(sum((s) => s.echoes)),
      receiptsPerSecond: rate(sum((s) => s.receipts)),
      ackFramesPerSecond: rate(sum((s) => s.ackFrames)),
      skippedSends: sum((s) => s.skipped),
    },
    sendAckMs: ack.summary() satisfies LatencySummary,
    deliveryMs: delivery.summary() satisfies LatencySummary,
    /** The part of send→deliver after the sender's ack (see LoadStats.ackToDeliveryLatency). */
    ackToDeliverMs: ackToDelivery.summary() satisfies LatencySummary,
    deliveredBeforeAck: sum((s) => s.deliveredBeforeAck),
    /** For deliveries that beat their ack: how much later the ack came. */
    ackLagMs: ackLag.summary() satisfies LatencySummary,
    correctness: {
      expectedDeliveries: sum((s) => s.expectedDeliveries),
      receivedDeliveries: sum((s) => s.receivedDeliveries),
      unansweredSends: sum((s) => s.unanswered),
      duplicates: sum((s) => s.duplicates),
      gaps: sum((s) => s.gaps),
      sendErrors,
      frameErrors: sum((s) => s.frameErrors),
      streamsEnded: sum((s) => s.streamsEnded),
      endReasons: results.flatMap((r) => r.endReasons).slice(0, 5),
    },
    cpuPercent: {
      server: serverCpu,
      serverMainThread: serverMain,
      serverOtherThreads:
        serverCpu !== undefined && serverMain !== undefined ? serverCpu - serverMain : undefined,
      benchClient: clientCpu,
      machineBusy,
      machineCapacity: cpus().length * 100,
      other:
        machineBusy !== undefined && serverCpu !== undefined && clientCpu !== undefined
          ? machineBusy - serverCpu - clientCpu
          : undefined,
    },
    mesh,
    serverEventLoop:
      elu.length === 0
        ? undefined
        : {
            utilization: elu.reduce((a, b) => a + b, 0) / elu.length,
            delayP99MaxMs: Math.max(...ctx.probe.map((s) => s.delayP99 ?? 0)),
            delayMaxMs: Math.max(...ctx.probe.map((s) => s.delayMax ?? 0)),
          },
    serverMemory: {
      beforeConnect: memBefore,
      afterConnect: memConnected,
      end: ctx.memEnd,
      peakRssBytes: ctx.peakRss || undefined,
      perConnectedDevice: perDevice,
    },
    timeline,
  };
}

function printReport(r: ReturnType<typeof summarize>): void {
  const t = r.throughput;
  const lat = (s: LatencySummary) =>
    `p50 ${fixed(s.p50, 2)}  p90 ${fixed(s.p90, 2)}  p99 ${fixed(s.p99, 2)}  max ${fixed(s.max, 2)} ms  (n=${s.count})`;
  const pct = (n: number | undefined) => (n === undefined ? "n/a" : `${fixed(n)} %`);
  const c = r.correctness;
  const cp = r.cpuPercent;
  const out = [
    "",
    `switchboard bench: ${r.options.mode}${r.options.mode === "group" ? ` (groups of ${r.options.groupSize})` : ""}, ${r.devices} devices, ${r.conversations} conversations, payload ${r.options.payload} B, client ${r.options.client}, ${r.options.workers} worker(s)`,
    `machine: ${r.machine.cpus} x ${r.machine.cpuModel}, ${fixed(r.machine.memoryGiB)} GiB, node ${r.machine.node}`,
    "",
    `target rate      ${t.targetRate === 0 ? (r.options.mode === "idle" ? "idle" : `max (${r.options.inflight} in flight/device)`) : `${t.targetRate} msgs/s`}`,
    `sent             ${fixed(t.sentPerSecond, 0)} msgs/s${t.skippedSends > 0 ? `  (${t.skippedSends} sends skipped: every device at its in-flight limit)` : ""}`,
    `acked            ${fixed(t.ackedPerSecond, 0)} msgs/s`,
    `delivered        ${fixed(t.deliveredPerSecond, 0)} entries/s to other devices (+${fixed(t.echoesPerSecond, 0)}/s echoes to senders, ${fixed(t.receiptsPerSecond, 0)}/s receipts, ${fixed(t.ackFramesPerSecond, 0)}/s ack frames)`,
    `send -> ack      ${lat(r.sendAckMs)}`,
    `send -> deliver  ${lat(r.deliveryMs)}`,
    `ack -> deliver   ${lat(r.ackToDeliverMs)}${r.deliveredBeforeAck > 0 ? `  (${r.deliveredBeforeAck} deliveries came before their ack, which lagged p50 ${fixed(r.ackLagMs.p50)} / p99 ${fixed(r.ackLagMs.p99)} ms: counted as 0)` : ""}`,
    `delivered/owed   ${c.receivedDeliveries}/${c.expectedDeliveries}; unanswered sends ${c.unansweredSends}; duplicates ${c.duplicates}; gaps ${c.gaps}`,
    `errors           send_error ${JSON.stringify(c.sendErrors)}; frame errors ${c.frameErrors}; streams ended ${c.streamsEnded}${c.endReasons.length > 0 ? ` (${c.endReasons.join("; ")})` : ""}`,
    `cpu              ${r.mesh ? "mesh (all processes)" : "server"} ${pct(cp.server)} (${r.mesh ? "Node main threads" : "main thread"} ${pct(cp.serverMainThread)}, other threads ${pct(cp.serverOtherThreads)}), bench client ${pct(cp.benchClient)}; machine ${pct(cp.machineBusy)} of ${cp.machineCapacity} % (other programs ${pct(cp.other)})`,
    ...(r.mesh ? meshLines(r) : singleServerLines(r)),
    "",
    `per second (sent/acked/delivered): ${r.timeline.sent.map((s, i) => `${s}/${r.timeline.acked[i]}/${r.timeline.delivered[i]}`).join(" ")}`,
    "",
  ];
  process.stdout.write(out.join("\n"));
}

const mem = (s: MemorySnapshot | undefined) =>
  s === undefined
    ? "n/a"
    : `${fixed(mib(s.rss))} MiB (anon ${fixed(mib(s.anon ?? 0))}, file ${fixed(mib(s.file ?? 0))}${s.heapUsed === undefined ? "" : `, JS heap ${fixed(mib(s.heapUsed))}`})`;

function singleServerLines(r: ReturnType<typeof summarize>): string[] {
  const m = r.serverMemory;
  const el = r.serverEventLoop;
  const d = m.perConnectedDevice;
  return [
    el === undefined
      ? "event loop       n/a (no probe)"
      : `event loop       server main thread utilisation ${fixed(100 * el.utilization)} %, delay p99 up to ${fixed(el.delayP99MaxMs)} ms, max ${fixed(el.delayMaxMs)} ms`,
    `server memory    before connect ${mem(m.beforeConnect)}, connected ${mem(m.afterConnect)}, end ${mem(m.end)}, peak RSS ${m.peakRssBytes === undefined ? "n/a" : `${fixed(mib(m.peakRssBytes))} MiB`}${m.beforeConnect?.afterGc ? " (snapshots after a full GC)" : ""}`,
    d
      ? `per device       ${fixed(d.rssBytes / 1024)} KiB RSS${d.anonBytes === undefined ? "" : ` (${fixed(d.anonBytes / 1024)} KiB anon)`}${d.heapBytes === undefined ? "" : `, ${fixed(d.heapBytes / 1024)} KiB JS heap`} per connected device`
      : "per device       n/a (no server pid)",
  ];
}

function meshLines(r: ReturnType<typeof summarize>): string[] {
  const m = r.mesh!;
  const o = r.options.mesh!;
  const num = (n: number | undefined, digits = 1) => (n === undefined ? "n/a" : fixed(n, digits));
  const pad = (s: string, n: number) => s.padStart(n);
  const mibOf = (n: number | undefined) => (n === undefined ? "n/a" : fixed(mib(n), 0));
  const lines = [
    `mesh             ${o.gateways} gateways, ${o.sequencers} sequencers, ${o.fanouts} fanouts (+ accounts, presence, nats-server, redis-server): ${num(m.cpuMsPerMessage, 3)} ms CPU per acked message in all`,
    `  ${"role".padEnd(10)}${pad("procs", 6)}${pad("cpu %", 8)}${pad("main %", 8)}${pad("ms/msg", 8)}${pad("µs/dlv", 8)}${pad("ELU max", 9)}   RSS MiB connected / end / peak`,
    ...m.roles.map(
      (x) =>
        `  ${x.role.padEnd(10)}${pad(String(x.processes), 6)}${pad(num(x.cpuPercent), 8)}${pad(num(x.mainThreadPercent), 8)}${pad(num(x.cpuMsPerMessage, 3), 8)}${pad(num(x.cpuUsPerDelivery, 0), 8)}${pad(x.eventLoopUtilizationMax === undefined ? "n/a" : `${fixed(100 * x.eventLoopUtilizationMax, 0)} %`, 9)}   ${mibOf(x.rssConnectedBytes)} / ${mibOf(x.rssEndBytes)} / ${mibOf(x.peakRssBytes)}`,
    ),
    `  per process cpu % (ELU): ${m.processes.map((p) => `${p.name} ${num(p.cpuPercent, 0)}${p.eventLoopUtilization === undefined ? "" : ` (${fixed(100 * p.eventLoopUtilization, 0)})`}`).join(", ")}`,
  ];
  const gw = m.roles.find((x) => x.role === "gateway");
  if (gw?.rssPerConnectedDeviceBytes !== undefined)
    lines.push(
      `per device       ${fixed(gw.rssPerConnectedDeviceBytes / 1024)} KiB gateway RSS per connected device (sum over gateways)`,
    );
  lines.push(
    m.problemCount === 0
      ? "mesh logs        no warnings or errors"
      : `mesh logs        ${m.problemCount} warning/error lines or exits; first: ${m.problems
          .slice(0, 3)
          .map((p) => `[${p.process}] ${p.line.slice(0, 300)}`)
          .join(" | ")}`,
  );
  return lines;
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
