import { cpus, totalmem } from "node:os";
import { parseArgs } from "node:util";
import { Worker } from "node:worker_threads";
import { Histogram, type LatencySummary } from "./histogram.js";
import { clock, Load, type LoadInput, type LoadStats, type RunPlan, sleep } from "./load.js";
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
  --server-node-args=S     node flags for the spawned server, e.g. --server-node-args="--cpu-prof --cpu-prof-dir=/tmp/prof"
  --probe on|off       preload the bench's probe into the spawned server (event-loop use, GC'd memory), default on
  --json               print one JSON object instead of the report
`;

interface Options {
  url: string | undefined;
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
  return {
    url: values.url?.replace(/\/$/, ""),
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
  url: string,
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
      url,
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
  client: number;
  machine: ReturnType<typeof readMachineCpu>;
}

function cpuMark(pid: number | undefined): CpuMark {
  const u = process.cpuUsage();
  return {
    at: clock(),
    server: pid === undefined ? undefined : readCpuSeconds(pid),
    client: (u.user + u.system) / 1e6,
    machine: readMachineCpu(),
  };
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
  const opts = parseOptions();
  const log = (line: string) => {
    if (!opts.json) process.stderr.write(`${line}\n`);
  };
  let server: BenchServer | undefined;
  let url = opts.url;
  let pid = opts.serverPid;
  if (url === undefined) {
    server = await spawnServer({
      probe: opts.probe,
      ...(opts.serverNodeArgs && { nodeArgs: opts.serverNodeArgs }),
    });
    url = server.url;
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
  try {
    const setupStart = clock();
    const convMode = opts.mode === "group" ? "group" : "direct";
    const { devices, conversations } = await setUp(url, opts.devices, convMode, opts.groupSize);
    log(
      `registered ${devices.length} users and ${conversations.length} ${convMode} conversations in ${fixed((clock() - setupStart) / 1000)} s`,
    );

    await sleep(1000);
    const memBefore = await memorySnapshot(server, pid);
    const inputs = split(opts, devices, conversations, url);
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
    const sampler = setInterval(() => {
      const m = pid === undefined ? undefined : readMemory(pid);
      if (m !== undefined && m.rss > peakRss) peakRss = m.rss;
    }, 500);
    const marks = [
      setTimeout(() => (cpuStart = cpuMark(pid)), windowStart - clock()),
      setTimeout(() => (cpuEnd = cpuMark(pid)), windowEnd - clock()),
    ];
    log(
      opts.mode === "idle"
        ? `holding ${connectedDevices} idle streams for ${opts.warmup + opts.duration} s`
        : `sending ${opts.rate === 0 ? `as fast as possible (${opts.inflight} in flight per device)` : `${opts.rate} msgs/s`} for ${opts.warmup} s warm-up + ${opts.duration} s measured`,
    );
    const results = await Promise.all(generators.map((g) => g.run(plan)));
    clearInterval(sampler);
    for (const m of marks) clearTimeout(m);
    cpuEnd ??= cpuMark(pid);
    cpuStart ??= cpuEnd;
    const memEnd = await memorySnapshot(server, pid);
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
    });
    if (opts.json) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    else printReport(report);
  } finally {
    await Promise.all(generators.map((g) => g.close().catch(() => {})));
    if (server !== undefined) {
      const code = await server.stop();
      if (code !== 0) process.stderr.write(`server exited with code ${code}\n`);
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
  const serverCpu = cpu(ctx.cpuStart.server?.all, ctx.cpuEnd.server?.all);
  const serverMain = cpu(ctx.cpuStart.server?.main, ctx.cpuEnd.server?.main);
  const clientCpu = cpu(ctx.cpuStart.client, ctx.cpuEnd.client);
  const machineBusy = cpu(ctx.cpuStart.machine?.busy, ctx.cpuEnd.machine?.busy);
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
  const m = r.serverMemory;
  const mem = (s: MemorySnapshot | undefined) =>
    s === undefined
      ? "n/a"
      : `${fixed(mib(s.rss))} MiB (anon ${fixed(mib(s.anon ?? 0))}, file ${fixed(mib(s.file ?? 0))}${s.heapUsed === undefined ? "" : `, JS heap ${fixed(mib(s.heapUsed))}`})`;
  const c = r.correctness;
  const cp = r.cpuPercent;
  const el = r.serverEventLoop;
  const d = m.perConnectedDevice;
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
    `delivered/owed   ${c.receivedDeliveries}/${c.expectedDeliveries}; unanswered sends ${c.unansweredSends}; duplicates ${c.duplicates}; gaps ${c.gaps}`,
    `errors           send_error ${JSON.stringify(c.sendErrors)}; frame errors ${c.frameErrors}; streams ended ${c.streamsEnded}${c.endReasons.length > 0 ? ` (${c.endReasons.join("; ")})` : ""}`,
    `cpu              server ${pct(cp.server)} (main thread ${pct(cp.serverMainThread)}, other threads ${pct(cp.serverOtherThreads)}), bench client ${pct(cp.benchClient)}; machine ${pct(cp.machineBusy)} of ${cp.machineCapacity} % (other programs ${pct(cp.other)})`,
    el === undefined
      ? "event loop       n/a (no probe)"
      : `event loop       server main thread utilisation ${fixed(100 * el.utilization)} %, delay p99 up to ${fixed(el.delayP99MaxMs)} ms, max ${fixed(el.delayMaxMs)} ms`,
    `server memory    before connect ${mem(m.beforeConnect)}, connected ${mem(m.afterConnect)}, end ${mem(m.end)}, peak RSS ${m.peakRssBytes === undefined ? "n/a" : `${fixed(mib(m.peakRssBytes))} MiB`}${m.beforeConnect?.afterGc ? " (snapshots after a full GC)" : ""}`,
    d
      ? `per device       ${fixed(d.rssBytes / 1024)} KiB RSS${d.anonBytes === undefined ? "" : ` (${fixed(d.anonBytes / 1024)} KiB anon)`}${d.heapBytes === undefined ? "" : `, ${fixed(d.heapBytes / 1024)} KiB JS heap`} per connected device`
      : "per device       n/a (no server pid)",
    "",
    `per second (sent/acked/delivered): ${r.timeline.sent.map((s, i) => `${s}/${r.timeline.acked[i]}/${r.timeline.delivered[i]}`).join(" ")}`,
    "",
  ];
  process.stdout.write(out.join("\n"));
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
