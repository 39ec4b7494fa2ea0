import { createWriteStream, mkdirSync, type WriteStream } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { Mesh } from "../services/mesh/launcher.js";
import { PROBE_NODE_ARGS, type ProbeSample, parseProbeLine, RAISED_LIMITS } from "./server.js";

/** One OS process of the benchmarked mesh: a service, nats-server or redis-server. */
export interface BenchMeshProcess {
  /** "gateway-0", "sequencer-1", "accounts", "nats", "redis", ... */
  name: string;
  /** "gateway", "sequencer", "fanout", "accounts" (with notification), "presence", "nats", "redis". */
  role: string;
  pid: number;
  /** A Switchboard process (Node), as opposed to a backend server. */
  node: boolean;
  /** Probe samples so far (bounded); empty for backends and without the probe. */
  samples: ProbeSample[];
}

/** A log line at warn level or above, or a process that died. */
export interface MeshProblem {
  process: string;
  line: string;
}

export interface BenchMesh {
  /** Where every process keeps its data and the bench writes each one's log (`<name>.log`). */
  dir: string;
  /** Where the devices' streams go: the gateways' ports, or their stream ports (streamPorts). */
  gatewayUrls: string[];
  /** Where the set-up's calls go: the first gateway's main port. */
  setupUrl: string;
  processes: BenchMeshProcess[];
  /** Warnings, errors and unexpected exits so far (the first 50), and how many in all. */
  problems: MeshProblem[];
  problemCount(): number;
  /** A full GC in every probed process, then its memory; undefined for those that do not answer. */
  memoryAfterGc(): Promise<Map<string, ProbeSample | undefined>>;
  /** Stops the mesh; removes its directory unless told to keep it (the logs are evidence). */
  stop(keepDir: boolean): Promise<void>;
}

const roleOf = (name: string) => name.replace(/-\d+$/, "");

/**
 * A V8 CPU profile of the process from start to exit, written to DIR as CPU.<role>.<pid>.cpuprofile
 * (the in-thread inspector answers synchronously, so the exit handler can still stop it).
 */
const cpuProfilePreload = (dir: string) => `
import { Session } from "node:inspector";
import { writeFileSync } from "node:fs";
const session = new Session();
session.connect();
session.post("Profiler.enable");
session.post("Profiler.start");
process.on("exit", () => {
  session.post("Profiler.stop", (err, result) => {
    if (err) return;
    const at = process.argv.indexOf("--role");
    const role = (at >= 0 && process.argv[at + 1]) || "node";
    const name = "CPU." + role.replaceAll(",", "+") + "." + process.pid + ".cpuprofile";
    writeFileSync(${JSON.stringify(dir)} + "/" + name, JSON.stringify(result.profile));
  });
});
`;

/**
 * The node flags for NODE_OPTIONS, which refuses --cpu-prof: that flag (with --cpu-prof-dir)
 * becomes a preloaded profiler writing the same kind of file, so --server-node-args="--cpu-prof
 * --cpu-prof-dir=DIR" profiles every service process of the mesh as it does the single server.
 */
function meshNodeOptions(args: string[]): string[] {
  if (!args.includes("--cpu-prof")) return args;
  const dirArg = args.find((a) => a.startsWith("--cpu-prof-dir="));
  const dir = resolve(dirArg?.slice("--cpu-prof-dir=".length) ?? ".");
  mkdirSync(dir, { recursive: true });
  const rest = args.filter((a) => a !== "--cpu-prof" && a !== dirArg);
  return [
    ...rest,
    `--import=data:text/javascript;base64,${Buffer.from(cpuProfilePreload(dir)).toString("base64")}`,
  ];
}

/**
 * Starts the distributed topology (`services/mesh/launcher.ts`: every role its own process, with
 * its own nats-server and redis-server) on a temporary directory, with the same raised limits as
 * the single-process server, and the probe preloaded into every service through NODE_OPTIONS
 * because the launcher owns the command lines.
 */
export async function startMesh(options: {
  gateways: number;
  sequencers: number;
  fanouts: number;
  probe: boolean;
  nodeArgs?: string[];
  /** Each gateway also serves device streams on a stream port; gatewayUrls are those ports. */
  streamPorts?: boolean;
}): Promise<BenchMesh> {
  const dir = await mkdtemp(join(tmpdir(), "switchboard-bench-mesh-"));
  const nodeOptions = [...(options.probe ? PROBE_NODE_ARGS : []), ...meshNodeOptions(options.nodeArgs ?? [])];
  const samples = new Map<string, ProbeSample[]>();
  const gcWaiters = new Map<string, (s: ProbeSample) => void>();
  const logs = new Map<string, WriteStream>();
  const problems: MeshProblem[] = [];
  let problemCount = 0;
  const problem = (process: string, line: string) => {
    problemCount++;
    if (problems.length < 50) problems.push({ process, line: line.slice(0, 600) });
  };
  const samplesOf = (name: string): ProbeSample[] => {
    let list = samples.get(name);
    if (list === undefined) {
      list = [];
      samples.set(name, list);
    }
    return list;
  };
  let stopping = false;
  const onLog = (name: string, line: string) => {
    const s = parseProbeLine(line);
    if (s !== undefined) {
      if (s.kind === "gc") {
        gcWaiters.get(name)?.(s);
        gcWaiters.delete(name);
        return;
      }
      const list = samplesOf(name);
      if (list.length < 100_000) list.push(s);
      return;
    }
    let sink = logs.get(name);
    if (sink === undefined) {
      sink = createWriteStream(join(dir, `${name}.log`), { flags: "a" });
      logs.set(name, sink);
    }
    sink.write(`${line}\n`);
    // Pino levels: 40 warn, 50 error, 60 fatal; anything that is not JSON is a crash or a stack.
    const level = /^\{"level":(\d+)/.exec(line)?.[1];
    if (level === undefined || Number(level) >= 40) problem(name, line);
  };
  let mesh: Mesh;
  try {
    mesh = await Mesh.start({
      dir,
      gateways: options.gateways,
      sequencers: options.sequencers,
      fanouts: options.fanouts,
      gatewayStreamPorts: options.streamPorts === true,
      env: {
        ...RAISED_LIMITS,
        SWITCHBOARD_LOG_LEVEL: "warn",
        // Replaces whatever the bench itself was started with (a profiler, say).
        NODE_OPTIONS: nodeOptions.join(" "),
      },
      onLog,
    });
  } catch (err) {
    for (const sink of logs.values()) sink.end();
    throw new Error(`mesh did not start (logs kept in ${dir}): ${err instanceof Error ? err.message : err}`);
  }
  const processes: BenchMeshProcess[] = [...mesh.processes.values()].map((p) => ({
    name: p.name,
    role: roleOf(p.name),
    pid: p.child!.pid!,
    node: true,
    samples: samplesOf(p.name),
  }));
  if (mesh.nats) processes.push({ name: "nats", role: "nats", pid: mesh.nats.pid, node: false, samples: [] });
  if (mesh.redis)
    processes.push({ name: "redis", role: "redis", pid: mesh.redis.pid, node: false, samples: [] });
  for (const p of mesh.processes.values()) {
    p.child?.once("exit", (code, signal) => {
      // Exits during stop() are the orderly shutdown.
      if (!stopping) problem(p.name, `process exited (code ${code}, signal ${signal})`);
    });
  }
  return {
    dir,
    gatewayUrls: options.streamPorts ? mesh.gatewayStreamUrls : mesh.gatewayUrls,
    setupUrl: mesh.gatewayUrls[0]!,
    processes,
    problems,
    problemCount: () => problemCount,
    async memoryAfterGc() {
      const out = new Map<string, ProbeSample | undefined>();
      if (!options.probe) return out;
      await Promise.all(
        processes
          .filter((p) => p.node)
          .map(
            (p) =>
              new Promise<void>((resolve) => {
                const timer = setTimeout(() => {
                  gcWaiters.delete(p.name);
                  resolve();
                }, 10_000);
                gcWaiters.set(p.name, (s) => {
                  clearTimeout(timer);
                  out.set(p.name, s);
                  resolve();
                });
                try {
                  process.kill(p.pid, "SIGUSR2");
                } catch {
                  clearTimeout(timer);
                  gcWaiters.delete(p.name);
                  resolve();
                }
              }),
          ),
      );
      return out;
    },
    async stop(keepDir) {
      stopping = true;
      await mesh.stop();
      await Promise.all([...logs.values()].map((s) => new Promise<void>((resolve) => s.end(resolve))));
      if (!keepDir) await rm(dir, { recursive: true, force: true });
    },
  };
}
