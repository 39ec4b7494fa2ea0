import { freePort } from "../services/mesh/servers.js";
import { CpuQuotas, findCpuController, type Throttling } from "./cpu-quota.js";
import { type Generator, inlineGenerator, processGenerator, split, workerGenerator } from "./generators.js";
import { clock, type RunPlan, sleep } from "./load.js";
import { type CpuMark, cpuMark, memorySnapshot, meshMemory } from "./measure.js";
import { type BenchMesh, startMesh } from "./mesh.js";
import { parseOptions } from "./options.js";
import { checkPinnable, pinServerMainThread } from "./pin.js";
import { fixed, printReport } from "./report.js";
import {
  type BenchServer,
  buildServer,
  inProbeWindow,
  RAISED_LIMITS,
  readMemory,
  spawnServer,
} from "./server.js";
import { setUp } from "./setup.js";
import { summarize } from "./summary.js";

/**
 * `npm run bench`: a load run against a spawned server, a spawned mesh or a running server, or
 * (--attack) a hostile client. The parts: options.ts (the command line), setup.ts (users and
 * conversations), generators.ts (the load, in workers), measure.ts (CPU and memory),
 * summary.ts (the figures) and report.ts (their printout); attack.ts runs the attacks.
 */

async function main(): Promise<void> {
  // Hostile clients have a runner of their own (bench/attack.ts).
  if (process.argv.some((a) => a === "--attack" || a.startsWith("--attack="))) {
    await (await import("./attack.js")).runAttacks(process.argv.slice(2));
    return;
  }
  const opts = parseOptions();
  if (opts.pin) checkPinnable();
  const budgets = new Map(Object.entries(opts.mesh?.cpuQuota ?? {}));
  // Before the mesh and the registration, not after them.
  if (budgets.size > 0 && findCpuController() === undefined)
    throw new Error(
      "--cpu-quota: no cgroup cpu controller (cgroup v1's cpu or v2's cpu.max) under /sys/fs/cgroup",
    );
  const log = (line: string) => {
    if (!opts.json) process.stderr.write(`${line}\n`);
  };
  let server: BenchServer | undefined;
  let mesh: BenchMesh | undefined;
  let quotas: CpuQuotas | undefined;
  let url = opts.url;
  let urls = url === undefined ? [] : [url];
  let pid = opts.serverPid;
  if (opts.build && url === undefined) {
    const buildStart = clock();
    await buildServer();
    log(
      `compiled the server (npm run build) in ${fixed((clock() - buildStart) / 1000)} s: it runs dist/, as deployed`,
    );
  }
  if (opts.mesh !== undefined) {
    const meshStart = clock();
    mesh = await startMesh({
      ...opts.mesh,
      probe: opts.probe,
      ...(opts.serverNodeArgs && { nodeArgs: opts.serverNodeArgs }),
      streamPorts: opts.streamPort,
    });
    urls = mesh.gatewayUrls;
    url = mesh.setupUrl;
    log(
      `started a mesh in ${mesh.dir} in ${fixed((clock() - meshStart) / 1000)} s: ${mesh.processes.map((p) => `${p.name} (pid ${p.pid})`).join(", ")}; gateways ${urls.join(" ")}; raised limits as below`,
    );
  } else if (url === undefined) {
    const streamPort = opts.streamPort ? await freePort() : undefined;
    server = await spawnServer({
      probe: opts.probe,
      ...(opts.serverNodeArgs && { nodeArgs: opts.serverNodeArgs }),
      ...(streamPort !== undefined && { env: { SWITCHBOARD_STREAM_PORT: String(streamPort) } }),
    });
    url = server.url;
    // The setup's calls go to the main port; the devices' streams to the stream port, if any.
    urls = [streamPort === undefined ? url : `http://127.0.0.1:${streamPort}`];
    pid = server.pid;
    log(
      `spawned server pid ${pid} at ${url}${opts.probe ? " (with the bench's probe)" : ""}, running ${server.compiled ? "dist/" : "the sources through tsx (dist/ is older than them: not the server as deployed)"}, and raised limits: ${Object.entries(
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
    // Idle runs open their streams in two halves, with a snapshot between: the second half's
    // growth is what a stream costs. The growth from before the first stream also counts the
    // registration's freed heap and malloc pages, which the first streams reuse, so it reads low
    // or high with how much garbage the registration left (and with V8's heap flags).
    const phases =
      opts.mode === "idle" && conversations.length > 1
        ? [
            conversations.slice(0, Math.ceil(conversations.length / 2)),
            conversations.slice(Math.ceil(conversations.length / 2)),
          ]
        : [conversations];
    let connectedDevices = 0;
    let connectFailed = 0;
    let connectSeconds = 0;
    const reasons: string[] = [];
    let half: { devices: number; memory: Awaited<ReturnType<typeof memorySnapshot>> } | undefined;
    let meshHalf: Awaited<ReturnType<typeof meshMemory>> | undefined;
    for (const [i, phase] of phases.entries()) {
      if (i > 0) {
        await sleep(2000);
        half = { devices: connectedDevices - connectFailed, memory: await memorySnapshot(server, pid) };
        meshHalf = await meshMemory(mesh);
      }
      const phaseGenerators = await Promise.all(
        split(opts, devices, phase, urls).map((input) => {
          connectedDevices += input.devices.length;
          if (opts.workerProcesses) return processGenerator(input);
          return opts.workers === 0 ? inlineGenerator(input) : workerGenerator(input);
        }),
      );
      generators.push(...phaseGenerators);
      const connectStart = clock();
      const connected = await Promise.all(phaseGenerators.map((g) => g.connect()));
      connectSeconds += (clock() - connectStart) / 1000;
      for (const c of connected) {
        connectFailed += c.failed;
        reasons.push(...c.reasons);
      }
    }
    log(
      `opened ${connectedDevices - connectFailed}/${connectedDevices} streams (all caught up) in ${fixed(connectSeconds)} s` +
        (phases.length > 1 ? ` (in two halves, a memory snapshot between them)` : "") +
        (connectFailed > 0 ? `; failures: ${reasons.join("; ")}` : ""),
    );
    await sleep(2000);
    const memConnected = await memorySnapshot(server, pid);
    const meshConnected = await meshMemory(mesh);
    const meshProcesses = mesh?.processes ?? [];
    const generatorPids = generators.flatMap((g) => (g.pid === undefined ? [] : [g.pid]));

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
    let throttledStart: Map<string, Throttling> | undefined;
    let throttledEnd: Map<string, Throttling> | undefined;
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
      setTimeout(() => {
        cpuStart = cpuMark(pid, meshProcesses, generatorPids);
        throttledStart = quotas?.throttling();
      }, windowStart - clock()),
      setTimeout(() => {
        cpuEnd = cpuMark(pid, meshProcesses, generatorPids);
        throttledEnd = quotas?.throttling();
      }, windowEnd - clock()),
    ];
    if (opts.pin && pid !== undefined) log(pinServerMainThread(pid));
    if (budgets.size > 0) {
      quotas = CpuQuotas.apply(budgets, meshProcesses);
      log(quotas.describe());
    }
    log(
      opts.mode === "idle"
        ? `holding ${connectedDevices} idle streams for ${opts.warmup + opts.duration} s`
        : `sending ${opts.rate === 0 ? `as fast as possible (${opts.inflight} in flight per device)` : `${opts.rate} msgs/s`} for ${opts.warmup} s warm-up + ${opts.duration} s measured`,
    );
    const results = await Promise.all(generators.map((g) => g.run(plan)));
    const probeWindow = { start: windowStart, end: windowEnd, closedAt: clock() };
    clearInterval(sampler);
    for (const m of marks) clearTimeout(m);
    cpuEnd ??= cpuMark(pid, meshProcesses, generatorPids);
    cpuStart ??= cpuEnd;
    throttledEnd ??= quotas?.throttling();
    throttledStart ??= throttledEnd;
    const memEnd = await memorySnapshot(server, pid);
    const meshEnd = await meshMemory(mesh);
    const probe = (server?.samples ?? []).filter((s) => inProbeWindow(s, probeWindow));

    const report = summarize(opts, results, {
      connectedDevices,
      connectFailed,
      connectSeconds,
      conversations: conversations.length,
      url,
      spawned: server !== undefined,
      ...(server !== undefined && { compiled: server.compiled }),
      memBefore,
      ...(half !== undefined && { memHalf: half.memory, halfDevices: half.devices }),
      memConnected,
      memEnd,
      peakRss,
      cpuStart,
      cpuEnd,
      probe,
      probeWindow,
      mesh:
        mesh === undefined
          ? undefined
          : {
              processes: meshProcesses,
              before: meshBefore,
              half: meshHalf,
              connected: meshConnected,
              end: meshEnd,
              peakRss: meshPeakRss,
              problems: mesh.problems.slice(0, 10),
              problemCount: mesh.problemCount(),
              dir: mesh.dir,
              budgets: (quotas?.budgeted ?? []).map((b) => ({
                name: b.name,
                cores: b.cores,
                start: throttledStart?.get(b.name),
                end: throttledEnd?.get(b.name),
              })),
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
    try {
      if (mesh !== undefined) {
        await mesh.stop(keepMeshDir);
        if (keepMeshDir) process.stderr.write(`mesh directory (data and logs) kept in ${mesh.dir}\n`);
      }
    } finally {
      // After the processes are gone, so their cgroups are empty.
      quotas?.release();
    }
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
