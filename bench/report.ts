import type { LatencySummary } from "./histogram.js";
import type { MemorySnapshot } from "./measure.js";
import type { Report } from "./summary.js";

/** The human-readable report of a load run. */

export const mib = (bytes: number) => bytes / (1024 * 1024);
export const fixed = (n: number, digits = 1) => n.toFixed(digits);

/** Prints the report on stdout. */
export function printReport(r: Report): void {
  const t = r.throughput;
  const lat = (s: LatencySummary) =>
    `p50 ${fixed(s.p50, 2)}  p90 ${fixed(s.p90, 2)}  p99 ${fixed(s.p99, 2)}  max ${fixed(s.max, 2)} ms  (n=${s.count})`;
  const pct = (n: number | undefined) => (n === undefined ? "n/a" : `${fixed(n)} %`);
  const c = r.correctness;
  const cp = r.cpuPercent;
  const out = [
    "",
    `switchboard bench: ${r.options.mode}${r.options.mode === "group" ? ` (groups of ${r.options.groupSize})` : ""}, ${r.devices} devices, ${r.conversations} conversations, payload ${r.options.payload} B, client ${r.options.client}, ${r.options.workers} ${r.options.workerProcesses ? "load process(es)" : "worker(s)"}${r.options.pin ? ", server main thread pinned to CPU 0 (--pin)" : ""}${r.options.benchNice !== 0 ? `, load generators at nice ${r.options.benchNice}` : ""}`,
    `machine: ${r.machine.cpus} x ${r.machine.cpuModel}, ${fixed(r.machine.memoryGiB)} GiB, node ${r.machine.node}; server build: ${r.server.build}`,
    "",
    `target rate      ${t.targetRate === 0 ? (r.options.mode === "idle" ? "idle" : `max (${r.options.inflight} in flight/device)`) : `${t.targetRate} msgs/s`}`,
    `sent             ${fixed(t.sentPerSecond, 0)} msgs/s${t.skippedSends > 0 ? `  (${t.skippedSends} sends skipped: every device at its in-flight limit)` : ""}${t.resentSends > 0 ? `  (${t.resentSends} refused sends sent again after their retry hint)` : ""}`,
    `acked            ${fixed(t.ackedPerSecond, 0)} msgs/s`,
    `delivered        ${fixed(t.deliveredPerSecond, 0)} entries/s to other devices (+${fixed(t.echoesPerSecond, 0)}/s echoes to senders, ${fixed(t.receiptsPerSecond, 0)}/s receipts, ${fixed(t.ackFramesPerSecond, 0)}/s ack frames)`,
    `send -> ack      ${lat(r.sendAckMs)}`,
    `send -> deliver  ${lat(r.deliveryMs)}`,
    ...(t.resentSends > 0
      ? [
          `  from the accepted attempt (refused sends were written again): send -> ack ${lat(r.acceptedSendAckMs)}`,
          `  send -> deliver ${lat(r.acceptedDeliveryMs)}`,
        ]
      : []),
    `ack -> deliver   ${lat(r.ackToDeliverMs)}${r.deliveredBeforeAck > 0 ? `  (${r.deliveredBeforeAck} deliveries came before their ack, which lagged p50 ${fixed(r.ackLagMs.p50)} / p99 ${fixed(r.ackLagMs.p99)} ms: counted as 0)` : ""}`,
    `delivered/owed   ${c.receivedDeliveries}/${c.expectedDeliveries}; unanswered sends ${c.unansweredSends}; duplicates ${c.duplicates}; gaps ${c.gaps}`,
    ...(c.drainCut
      ? [
          `  the drain ended at its deadline (--drain ${r.options.drain}) with sends or deliveries still on their way: what is unanswered or missing may be in flight, not lost (run again with a longer --drain)`,
        ]
      : []),
    ...c.holes.map((h) => `  hole            ${h}`),
    `errors           send_error ${JSON.stringify(c.sendErrors)}${Object.keys(c.sendErrorReasons).length > 0 ? ` ${JSON.stringify(c.sendErrorReasons)}` : ""}; frame errors ${c.frameErrors}; streams ended ${c.streamsEnded}${c.endReasons.length > 0 ? ` (${c.endReasons.join("; ")})` : ""}`,
    `cpu              ${r.mesh ? "mesh (all processes)" : "server"} ${pct(cp.server)} (${r.mesh ? "Node main threads" : "main thread"} ${pct(cp.serverMainThread)}, other threads ${pct(cp.serverOtherThreads)}), bench client ${pct(cp.benchClient)}; machine ${pct(cp.machineBusy)} of ${cp.machineCapacity} % (other programs ${pct(cp.other)})${cp.serverSwitchesPerMessage === undefined ? "" : `; ${fixed(cp.serverSwitchesPerMessage)} context switches${calls(cp.serverReadsPerMessage, cp.serverWritesPerMessage, "")} per acked message`}`,
    `bench loop       ${benchLoop(r.benchEventLoop)}`,
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
    : `${fixed(mib(s.rss))} MiB (anon ${fixed(mib(s.anon ?? 0))}, file ${fixed(mib(s.file ?? 0))}${s.heapUsed === undefined ? "" : `, JS heap ${fixed(mib(s.heapUsed))}`}${s.heapTotal === undefined ? "" : ` of ${fixed(mib(s.heapTotal))} committed`})`;

/** The generators' own event loops: what of the latencies above may be the bench's. */
function benchLoop(l: Report["benchEventLoop"]): string {
  const of = l.generators === 1 ? "the generator's" : `the busiest of ${l.generators} generators'`;
  const busy =
    l.utilizationMax >= BENCH_LOOP_BUSY
      ? "; the bench is near its own limit, so part of every latency above may be its wait (--bench-nice=-10 gives it a core first)"
      : "";
  const nice =
    l.niceMin === l.niceMax
      ? l.niceMin === 0
        ? ""
        : `, nice ${l.niceMin}`
      : `, nice ${l.niceMin} to ${l.niceMax}`;
  return `${of} event loop utilisation ${fixed(100 * l.utilizationMax)} %, delay p99 ${fixed(l.delayP99MaxMs)} ms, max ${fixed(l.delayMaxMs)} ms${nice}${busy}`;
}

/** A generator's loop busier than this has little left to notice a frame the moment it comes. */
const BENCH_LOOP_BUSY = 0.8;

/** A thread's CPU over the window, and its read and write calls, where /proc gave them. */
const threadCpu = (t: {
  cpuPercent?: number;
  systemPercent?: number;
  readsPerMessage?: number | undefined;
  writesPerMessage?: number | undefined;
}) =>
  t.cpuPercent === undefined
    ? ""
    : `; CPU ${fixed(t.cpuPercent)} % (system ${fixed(t.systemPercent ?? 0)} %)${calls(t.readsPerMessage, t.writesPerMessage, " a message")}`;

/** Read and write calls per acked message (server.ts, ioCalls), where /proc gave them. */
function calls(reads: number | undefined, writes: number | undefined, per: string): string {
  return reads === undefined || writes === undefined
    ? ""
    : `, ${fixed(reads, 2)} reads and ${fixed(writes, 2)} writes${per}`;
}

function singleServerLines(r: Report): string[] {
  const m = r.serverMemory;
  const el = r.serverEventLoop;
  const d = m.perConnectedDevice;
  return [
    el === undefined
      ? "event loop       n/a (no probe)"
      : `event loop       server main thread utilisation ${fixed(100 * el.utilization)} %, delay p99 up to ${fixed(el.delayP99MaxMs)} ms, max ${fixed(el.delayMaxMs)} ms${threadCpu(el)}`,
    ...r.serverWorkerEventLoops.map(
      (w) =>
        `                 worker thread ${w.thread}: utilisation ${fixed(100 * w.utilization)} %, delay p99 up to ${fixed(w.delayP99MaxMs)} ms, max ${fixed(w.delayMaxMs)} ms${threadCpu(w)}`,
    ),
    `server memory    before connect ${mem(m.beforeConnect)}, connected ${mem(m.afterConnect)}, end ${mem(m.end)}, peak RSS ${m.peakRssBytes === undefined ? "n/a" : `${fixed(mib(m.peakRssBytes))} MiB`}${m.beforeConnect?.afterGc ? " (snapshots after a full GC and a compaction)" : ""}`,
    d
      ? `per device       ${perDevice(d)} per connected device (growth from before the first stream)`
      : "per device       n/a (no server pid)",
    ...(m.perDeviceSecondHalf === undefined
      ? []
      : [
          `second half      ${perDevice(m.perDeviceSecondHalf)} per device, over the ${m.secondHalfDevices} streams opened after the first half's snapshot: what one more stream costs`,
        ]),
  ];
}

function perDevice(d: {
  rssBytes: number;
  anonBytes: number | undefined;
  heapBytes: number | undefined;
  heapCommittedBytes: number | undefined;
}): string {
  return `${fixed(d.rssBytes / 1024)} KiB RSS${d.anonBytes === undefined ? "" : ` (${fixed(d.anonBytes / 1024)} KiB anon)`}${d.heapBytes === undefined ? "" : `, ${fixed(d.heapBytes / 1024)} KiB JS heap`}${d.heapCommittedBytes === undefined ? "" : ` (committed heap ${fixed(d.heapCommittedBytes / 1024)} KiB)`}`;
}

/** A role's read and write calls together per acked message (the JSON report has them apart). */
function ioPerMessage(x: { readsPerMessage: number | undefined; writesPerMessage: number | undefined }) {
  return x.readsPerMessage === undefined || x.writesPerMessage === undefined
    ? undefined
    : x.readsPerMessage + x.writesPerMessage;
}

function meshLines(r: Report): string[] {
  const m = r.mesh!;
  const o = r.options.mesh!;
  const num = (n: number | undefined, digits = 1) => (n === undefined ? "n/a" : fixed(n, digits));
  const pad = (s: string, n: number) => s.padStart(n);
  const mibOf = (n: number | undefined) => (n === undefined ? "n/a" : fixed(mib(n), 0));
  const lines = [
    `mesh             ${o.gateways} gateways, ${o.sequencers} sequencers, ${o.fanouts} fanouts (+ accounts, presence, nats-server, redis-server): ${num(m.cpuMsPerMessage, 3)} ms CPU per acked message in all`,
    `  ${"role".padEnd(10)}${pad("procs", 6)}${pad("cpu %", 8)}${pad("main %", 8)}${pad("ms/msg", 8)}${pad("µs/dlv", 8)}${pad("ELU max", 9)}${pad("sw/msg", 8)}${pad("io/msg", 8)}   RSS MiB connected / end / peak`,
    ...m.roles.map(
      (x) =>
        `  ${x.role.padEnd(10)}${pad(String(x.processes), 6)}${pad(num(x.cpuPercent), 8)}${pad(num(x.mainThreadPercent), 8)}${pad(num(x.cpuMsPerMessage, 3), 8)}${pad(num(x.cpuUsPerDelivery, 0), 8)}${pad(x.eventLoopUtilizationMax === undefined ? "n/a" : `${fixed(100 * x.eventLoopUtilizationMax, 0)} %`, 9)}${pad(num(x.switchesPerMessage), 8)}${pad(num(ioPerMessage(x)), 8)}   ${mibOf(x.rssConnectedBytes)} / ${mibOf(x.rssEndBytes)} / ${mibOf(x.peakRssBytes)}`,
    ),
    `  per process cpu % (ELU): ${m.processes.map((p) => `${p.name} ${num(p.cpuPercent, 0)}${p.eventLoopUtilization === undefined ? "" : ` (${fixed(100 * p.eventLoopUtilization, 0)})`}`).join(", ")}`,
  ];
  if (m.budgets.length > 0)
    lines.push(
      `  cpu budgets (--cpu-quota): ${m.budgets
        .map(
          (b) =>
            `${b.name} ${b.cores} CPU, throttled in ${b.throttledShare === undefined ? "n/a" : `${fixed(100 * b.throttledShare, 0)} %`} of its periods`,
        )
        .join(", ")}`,
    );
  const gw = m.roles.find((x) => x.role === "gateway");
  if (gw?.rssPerConnectedDeviceBytes !== undefined)
    lines.push(
      `per device       ${fixed(gw.rssPerConnectedDeviceBytes / 1024)} KiB gateway RSS per connected device (sum over gateways)` +
        (gw.rssPerStreamSecondHalfBytes === undefined
          ? ""
          : `; ${fixed(gw.rssPerStreamSecondHalfBytes / 1024)} KiB RSS (${gw.heapPerStreamSecondHalfBytes === undefined ? "n/a" : fixed(gw.heapPerStreamSecondHalfBytes / 1024)} KiB JS heap, committed heap ${gw.heapCommittedPerStreamSecondHalfBytes === undefined ? "n/a" : fixed(gw.heapCommittedPerStreamSecondHalfBytes / 1024)} KiB) per stream opened after the first half's snapshot`),
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
