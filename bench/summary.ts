import { cpus, totalmem } from "node:os";
import type { Throttling } from "./cpu-quota.js";
import { Histogram, type LatencySummary } from "./histogram.js";
import type { LoadStats } from "./load.js";
import type { CpuMark, MemorySnapshot } from "./measure.js";
import type { BenchMeshProcess } from "./mesh.js";
import type { Options } from "./options.js";
import { inProbeWindow, onMainThread, type ProbeSample, type ProbeWindow, RAISED_LIMITS } from "./server.js";

/** A load run's figures, gathered from the generators' stats and the measurements around them. */

/** What was measured around the run (memory, CPU, the probe, the mesh). */
export interface Context {
  connectedDevices: number;
  connectFailed: number;
  /** Seconds from the first stream opened to the last one caught up (50 opening at a time per generator). */
  connectSeconds: number;
  conversations: number;
  url: string;
  spawned: boolean;
  /** For a spawned server: whether it ran dist/ (else the sources through tsx). */
  compiled?: boolean;
  memBefore: MemorySnapshot | undefined;
  /** Idle runs: the snapshot after the first half of the streams opened, and how many did. */
  memHalf?: MemorySnapshot | undefined;
  halfDevices?: number;
  memConnected: MemorySnapshot | undefined;
  memEnd: MemorySnapshot | undefined;
  peakRss: number;
  cpuStart: CpuMark;
  cpuEnd: CpuMark;
  /** The server's probe ticks in probeWindow. */
  probe: ProbeSample[];
  /** What the event-loop figures cover (the mesh's processes' ticks are filtered to it here). */
  probeWindow: ProbeWindow;
  mesh:
    | {
        processes: BenchMeshProcess[];
        before: Map<string, MemorySnapshot>;
        /** Idle runs: after the first half of the streams opened (halfDevices of them). */
        half?: Map<string, MemorySnapshot> | undefined;
        connected: Map<string, MemorySnapshot>;
        end: Map<string, MemorySnapshot>;
        peakRss: Map<string, number>;
        problems: { process: string; line: string }[];
        problemCount: number;
        dir: string;
        /** The processes held to a CPU budget (--cpu-quota), with their throttling at the window's ends. */
        budgets: {
          name: string;
          cores: number;
          start: Throttling | undefined;
          end: Throttling | undefined;
        }[];
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
  const processes = m.processes.map((p) => {
    const a = ctx.cpuStart.mesh.get(p.name);
    const b = ctx.cpuEnd.mesh.get(p.name);
    const cpuSeconds = a && b ? b.all - a.all : undefined;
    const mainSeconds = a && b && p.node ? b.main - a.main : undefined;
    const switches = a && b ? b.switches - a.switches : undefined;
    const io = callsBetween(a?.io, b?.io);
    const ticks = p.samples.filter((s) => onMainThread(s) && inProbeWindow(s, ctx.probeWindow));
    return {
      name: p.name,
      role: p.role,
      pid: p.pid,
      cpuSeconds,
      cpuPercent: cpuSeconds === undefined || seconds <= 0 ? undefined : (100 * cpuSeconds) / seconds,
      mainThreadPercent:
        mainSeconds === undefined || seconds <= 0 ? undefined : (100 * mainSeconds) / seconds,
      switches,
      /** Read and write calls of all the process's threads in the window (server.ts, ioCalls). */
      reads: io?.reads,
      writes: io?.writes,
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
    const secondHalf =
      ctx.halfDevices === undefined ? 0 : ctx.connectedDevices - ctx.connectFailed - ctx.halfDevices;
    /** The gateways' growth in one figure over the second half's streams, per stream. */
    const gatewayGrowth = (of: (s: MemorySnapshot | undefined) => number | undefined) => {
      const atHalf = m.half === undefined ? undefined : add(ps.map((p) => of(m.half?.get(p.name))));
      const atEnd = add(ps.map((p) => of(p.memoryConnected)));
      return role === "gateway" && atHalf !== undefined && atEnd !== undefined && secondHalf > 0
        ? (atEnd - atHalf) / secondHalf
        : undefined;
    };
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
      /** Context switches of all the role's threads per acked message. */
      switchesPerMessage: perMessage(add(ps.map((p) => p.switches)), acked),
      /** Read and write calls of all the role's threads per acked message. */
      readsPerMessage: perMessage(add(ps.map((p) => p.reads)), acked),
      writesPerMessage: perMessage(add(ps.map((p) => p.writes)), acked),
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
      /**
       * What one more stream costs the gateways: their growth over the streams opened after the
       * half's snapshot. The growth from before the first stream also counts what the setup's
       * calls left behind (they all went to the first gateway).
       */
      rssPerStreamSecondHalfBytes: gatewayGrowth((s) => s?.rss),
      heapPerStreamSecondHalfBytes: gatewayGrowth((s) => s?.heapUsed),
      /** The V8 heap's committed growth: what is live and the room the heap keeps beside it. */
      heapCommittedPerStreamSecondHalfBytes: gatewayGrowth((s) => s?.heapTotal),
    };
  });
  const cpuSeconds = add(processes.map((p) => p.cpuSeconds));
  return {
    dir: m.dir,
    cpuPercent: add(processes.map((p) => p.cpuPercent)),
    mainThreadPercent: add(processes.map((p) => p.mainThreadPercent)),
    cpuMsPerMessage: cpuSeconds === undefined || acked === 0 ? undefined : (1000 * cpuSeconds) / acked,
    switchesPerMessage: perMessage(add(processes.map((p) => p.switches)), acked),
    readsPerMessage: perMessage(add(processes.map((p) => p.reads)), acked),
    writesPerMessage: perMessage(add(processes.map((p) => p.writes)), acked),
    roles,
    processes,
    /** Per budgeted process: its budget, and the share of the window's periods it spent waiting out. */
    budgets: m.budgets.map((b) => {
      const periods = b.start && b.end ? b.end.periods - b.start.periods : undefined;
      const throttled = b.start && b.end ? b.end.throttled - b.start.throttled : undefined;
      return {
        name: b.name,
        cores: b.cores,
        periods,
        throttledShare:
          periods === undefined || throttled === undefined || periods === 0 ? undefined : throttled / periods,
        throttledSeconds: b.start && b.end ? b.end.throttledSeconds - b.start.throttledSeconds : undefined,
      };
    }),
    problemCount: m.problemCount,
    problems: m.problems,
  };
}

function perMessage(n: number | undefined, acked: number): number | undefined {
  return n === undefined || acked === 0 ? undefined : n / acked;
}

/** The read and write calls made between two readings, where both have them. */
function callsBetween(
  a: { reads?: number; writes?: number } | undefined,
  b: { reads?: number; writes?: number } | undefined,
): { reads: number; writes: number } | undefined {
  if (a?.reads === undefined || a.writes === undefined || b?.reads === undefined || b.writes === undefined)
    return undefined;
  return { reads: b.reads - a.reads, writes: b.writes - a.writes };
}

/** The report of a run: what --json prints and printReport formats. */
export function summarize(opts: Options, results: LoadStats[], ctx: Context) {
  const sum = (pick: (s: LoadStats) => number) => results.reduce((n, s) => n + pick(s), 0);
  const ack = new Histogram();
  const delivery = new Histogram();
  for (const r of results) {
    ack.merge(r.ackLatency);
    delivery.merge(r.deliveryLatency);
  }
  const sendErrors: Record<string, number> = {};
  const sendErrorReasons: Record<string, number> = {};
  for (const r of results) {
    for (const [k, v] of Object.entries(r.sendErrors)) sendErrors[k] = (sendErrors[k] ?? 0) + v;
    for (const [k, v] of Object.entries(r.sendErrorReasons))
      sendErrorReasons[k] = (sendErrorReasons[k] ?? 0) + v;
  }
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
  const serverCalls = callsBetween(ctx.cpuStart.server?.io, ctx.cpuEnd.server?.io);
  const clientCpu = cpu(ctx.cpuStart.client, ctx.cpuEnd.client);
  const machineBusy = cpu(ctx.cpuStart.machine?.busy, ctx.cpuEnd.machine?.busy);
  const ackToDelivery = new Histogram();
  const ackLag = new Histogram();
  const acceptedAck = new Histogram();
  const acceptedDelivery = new Histogram();
  for (const r of results) {
    ackToDelivery.merge(r.ackToDeliveryLatency);
    ackLag.merge(r.ackLagLatency);
    acceptedAck.merge(r.acceptedAckLatency);
    acceptedDelivery.merge(r.acceptedDeliveryLatency);
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
  const { memBefore, memHalf, memConnected } = ctx;
  const connectedNow = ctx.connectedDevices - ctx.connectFailed;
  const perDevice = growthPerDevice(memBefore, memConnected, ctx.connectedDevices);
  const perDeviceSecondHalf =
    memHalf === undefined || ctx.halfDevices === undefined
      ? undefined
      : growthPerDevice(memHalf, memConnected, connectedNow - ctx.halfDevices);
  const mainProbe = ctx.probe.filter(onMainThread);
  // A thread's CPU over the window, as a percentage of a core: all of it, and its system time;
  // and its read and write calls per acked message.
  const threadCpu = (tid: number | undefined) => {
    const a = tid === undefined ? undefined : ctx.cpuStart.server?.threads.get(tid);
    const b = tid === undefined ? undefined : ctx.cpuEnd.server?.threads.get(tid);
    if (a === undefined || b === undefined || seconds <= 0) return undefined;
    const io = callsBetween(a, b);
    return {
      cpuPercent: (100 * (b.user + b.system - a.user - a.system)) / seconds,
      systemPercent: (100 * (b.system - a.system)) / seconds,
      readsPerMessage: perMessage(io?.reads, acked),
      writesPerMessage: perMessage(io?.writes, acked),
    };
  };
  const elu = mainProbe.map((s) => s.elu ?? 0);
  const loops = results.map((r) => r.eventLoop);
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
      /** What the spawned server ran: the compiled build, or what bin/switchboard.js picked. */
      build:
        opts.url !== undefined
          ? "the running server's"
          : opts.build
            ? "compiled (dist/, built for this run)"
            : ctx.compiled === undefined
              ? "dist/ if current, else the sources through tsx"
              : ctx.compiled
                ? "dist/ (current)"
                : "the sources through tsx (dist/ was older than them)",
    },
    devices: ctx.connectedDevices,
    connectFailures: ctx.connectFailed,
    connectSeconds: ctx.connectSeconds,
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
      /** Refused sends written again after their retry hint, as the SDK does (not counted in sent). */
      resentSends: sum((s) => s.resent),
    },
    sendAckMs: ack.summary() satisfies LatencySummary,
    deliveryMs: delivery.summary() satisfies LatencySummary,
    /** From the attempt the server took, for sends refused and written again (LoadStats.acceptedAckLatency). */
    acceptedSendAckMs: acceptedAck.summary() satisfies LatencySummary,
    acceptedDeliveryMs: acceptedDelivery.summary() satisfies LatencySummary,
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
      holes: results.flatMap((r) => r.holes).slice(0, 5),
      drainCut: results.some((r) => r.drainCut),
      sendErrors,
      sendErrorReasons,
      frameErrors: sum((s) => s.frameErrors),
      streamsEnded: sum((s) => s.streamsEnded),
      endReasons: results.flatMap((r) => r.endReasons).slice(0, 5),
    },
    /**
     * The bench's own event loops over the window, the busiest generator's figures: every
     * latency above was timed on one of these loops, so their delay is in it.
     */
    benchEventLoop: {
      generators: loops.length,
      utilizationMax: Math.max(0, ...loops.map((l) => l.utilization)),
      delayP99MaxMs: Math.max(0, ...loops.map((l) => l.delayP99Ms)),
      delayMaxMs: Math.max(0, ...loops.map((l) => l.delayMaxMs)),
      /** The generators' threads' nice values as they read them back, least and most. */
      niceMin: loops.length === 0 ? 0 : Math.min(...loops.map((l) => l.nice)),
      niceMax: loops.length === 0 ? 0 : Math.max(...loops.map((l) => l.nice)),
    },
    cpuPercent: {
      server: serverCpu,
      serverMainThread: serverMain,
      serverOtherThreads:
        serverCpu !== undefined && serverMain !== undefined ? serverCpu - serverMain : undefined,
      benchClient: clientCpu,
      machineBusy,
      machineCapacity: cpus().length * 100,
      /** Context switches of every server thread (every mesh process) per acked message. */
      serverSwitchesPerMessage: mesh
        ? mesh.switchesPerMessage
        : perMessage(
            ctx.cpuStart.server && ctx.cpuEnd.server
              ? ctx.cpuEnd.server.switches - ctx.cpuStart.server.switches
              : undefined,
            acked,
          ),
      /** Read and write calls of every server thread (every mesh process) per acked message. */
      serverReadsPerMessage: mesh ? mesh.readsPerMessage : perMessage(serverCalls?.reads, acked),
      serverWritesPerMessage: mesh ? mesh.writesPerMessage : perMessage(serverCalls?.writes, acked),
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
            delayP99MaxMs: Math.max(...mainProbe.map((s) => s.delayP99 ?? 0)),
            delayMaxMs: Math.max(...mainProbe.map((s) => s.delayMax ?? 0)),
            ...threadCpu(mainProbe.find((s) => s.tid !== undefined)?.tid),
          },
    serverWorkerEventLoops: workerLoops(ctx.probe, threadCpu),
    serverMemory: {
      beforeConnect: memBefore,
      afterConnect: memConnected,
      end: ctx.memEnd,
      peakRssBytes: ctx.peakRss || undefined,
      perConnectedDevice: perDevice,
      /** Idle runs: the growth from the first half of the streams to all of them, per stream. */
      perDeviceSecondHalf,
      secondHalfDevices: ctx.halfDevices === undefined ? undefined : connectedNow - ctx.halfDevices,
    },
    timeline,
  };
}

/** A run's report. */
export type Report = ReturnType<typeof summarize>;

/**
 * The worker threads' event loops, one line each: the store's write thread, and the stream
 * thread with SWITCHBOARD_STREAM_PORT. A write thread's loop is "delayed" by its own commits (it
 * applies them synchronously, fsync included), so its delay is its commit time, not a stall of
 * anything a device waits on; the stream thread's delay is one.
 */
function workerLoops(
  probe: readonly ProbeSample[],
  threadCpu: (tid: number | undefined) =>
    | {
        cpuPercent: number;
        systemPercent: number;
        readsPerMessage: number | undefined;
        writesPerMessage: number | undefined;
      }
    | undefined,
) {
  const byThread = new Map<number, ProbeSample[]>();
  for (const s of probe) {
    if (onMainThread(s)) continue;
    const list = byThread.get(s.thread!) ?? [];
    list.push(s);
    byThread.set(s.thread!, list);
  }
  return [...byThread].map(([thread, samples]) => ({
    thread,
    utilization: samples.reduce((n, s) => n + (s.elu ?? 0), 0) / samples.length,
    delayP99MaxMs: Math.max(...samples.map((s) => s.delayP99 ?? 0)),
    delayMaxMs: Math.max(...samples.map((s) => s.delayMax ?? 0)),
    ...threadCpu(samples.find((s) => s.tid !== undefined)?.tid),
  }));
}

/** The growth from one memory snapshot to a later one, per device connected between them. */
function growthPerDevice(from: MemorySnapshot | undefined, to: MemorySnapshot | undefined, devices: number) {
  if (from === undefined || to === undefined || devices <= 0) return undefined;
  const per = (a: number | undefined, b: number | undefined) =>
    a === undefined || b === undefined ? undefined : (b - a) / devices;
  return {
    rssBytes: (to.rss - from.rss) / devices,
    anonBytes: per(from.anon, to.anon),
    heapBytes: per(from.heapUsed, to.heapUsed),
    heapCommittedBytes: per(from.heapTotal, to.heapTotal),
    afterGc: from.afterGc && to.afterGc,
  };
}
