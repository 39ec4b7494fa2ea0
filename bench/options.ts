import { parseArgs } from "node:util";
import { parseCpuQuota } from "./cpu-quota.js";
import type { ClientKind } from "./stream.js";

/** The load run's command line: its usage text and the options parsed from it. */

export const USAGE = `npm run bench -- [options]

  --url URL            use a running server (default: spawn one on a temp dir with raised limits)
  --mesh               spawn the distributed mesh instead (every role its own process, own nats-server
                       and redis-server, raised limits); device i connects to gateway i mod G
  --gateways N         with --mesh: gateway processes, default 2
  --sequencers N       with --mesh: sequencer replicas, default 2
  --fanouts N          with --mesh: fanout workers, default 2
  --cpu-quota ROLE=CORES[,ROLE=CORES...]
                       with --mesh: when the send phase starts, hold each process of those roles to that much of one
                       CPU (say gateway=0.25,sequencer=0.25), a cgroup each (Linux, as root): roles with cores of
                       their own, scaled down to fit a small machine (bench/cpu-quota.ts)
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
  --payload B          payload bytes (at least 16: the first and this attempt's send times), default 64
  --workers N          load generator worker threads; 0 runs it on the main thread, default 1
  --worker-processes   run the N load generators as child processes instead of threads: each has an open-file
                       limit of its own, and a device holds one socket (for more devices than one process may open)
  --client C           raw (gRPC on node:http2) | connect (@connectrpc/connect-node), default raw
  --ack-interval MS    how often receivers send cumulative acks, default 20
  --connect-concurrency N  streams each load generator opens at a time before the run, default 50
  --echo on|off        on: the server pushes each sender's own entries back to it; off (default): streams open
                       with omit_own_sends, as the SDK's do, and a device files its own at send_ack
  --stream-port on|off on: the spawned server (with --mesh: each gateway) also serves device streams on a
                       stream thread's port (SWITCHBOARD_STREAM_PORT), and the devices' streams go there;
                       off (default): the main port
  --server-node-args=S     node flags for the spawned server (with --mesh: every service process, through NODE_OPTIONS;
                       --cpu-prof there becomes a preloaded profiler writing DIR/CPU.<role>.<pid>.cpuprofile at exit),
                       e.g. --server-node-args="--cpu-prof --cpu-prof-dir=/tmp/prof"
  --build on|off       compile the server first (npm run build), so the spawned server (or mesh) runs dist/ as the
                       image does; off: bin/switchboard.js runs dist/ if it is current, else the sources through tsx
                       (whose keepNames wraps every function the code creates), default on
  --probe on|off       preload the bench's probe into the spawned server (event-loop use, GC'd memory), default on
  --bench-nice=N       run each load generator's thread at nice N (-20..19, default 0; below 0 needs root or
                       CAP_SYS_NICE, and the = since the value starts with a dash): at -10 a generator on the
                       server's machine is not kept waiting for a core by the server it measures, a wait that
                       otherwise lands in every latency past capacity (the report's bench loop line)
  --pin                when the send phase starts, pin the spawned server's main thread alone to CPU 0 and every
                       other thread (the server's and the bench's) to CPU 1: the server's own latency, without the
                       bench on its core (Linux, taskset, two CPUs or more)
  --json               print one JSON object instead of the report
  --attack NAME        run a hostile client instead and report server RSS and a bystander's round trips
                       (half-open | idle | slow-reader | all; --attack --help for its options)
`;

/** A load run, as the command line asked for it. */
export interface Options {
  url: string | undefined;
  mesh:
    | {
        gateways: number;
        sequencers: number;
        fanouts: number;
        keepDir: boolean;
        /** Role -> CPUs each of its processes may use (bench/cpu-quota.ts); empty for no budgets. */
        cpuQuota: Record<string, number>;
      }
    | undefined;
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
  /** Load generators in child processes, each with its own open-file limit, instead of threads. */
  workerProcesses: boolean;
  client: ClientKind;
  ackInterval: number;
  connectConcurrency: number;
  /** Ask the server to push each sender's own entries back (no omit_own_sends), as before the SDK filed its own. */
  echo: boolean;
  /** Spawn the server with a stream port and open the devices' streams on it. */
  streamPort: boolean;
  serverNodeArgs: string[] | undefined;
  probe: boolean;
  /** Compile the server before spawning it (`npm run build`). */
  build: boolean;
  /** Pin the spawned server's main thread to a CPU of its own (bench/pin.ts). */
  pin: boolean;
  /** The nice value of each load generator's thread (LoadInput.nice). */
  benchNice: number;
  json: boolean;
}

/** Parses process.argv; prints the usage and exits on --help. */
export function parseOptions(): Options {
  const { values } = parseArgs({
    options: {
      url: { type: "string" },
      mesh: { type: "boolean", default: false },
      gateways: { type: "string", default: "2" },
      sequencers: { type: "string", default: "2" },
      fanouts: { type: "string", default: "2" },
      "keep-mesh-dir": { type: "boolean", default: false },
      "cpu-quota": { type: "string" },
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
      "worker-processes": { type: "boolean", default: false },
      client: { type: "string", default: "raw" },
      "ack-interval": { type: "string", default: "20" },
      "connect-concurrency": { type: "string", default: "50" },
      echo: { type: "string", default: "off" },
      "stream-port": { type: "string", default: "off" },
      "server-node-args": { type: "string" },
      probe: { type: "string", default: "on" },
      build: { type: "string", default: "on" },
      pin: { type: "boolean", default: false },
      "bench-nice": { type: "string", default: "0" },
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
  if (values.echo !== "on" && values.echo !== "off") throw new Error("--echo: on or off");
  const streamPort = values["stream-port"];
  if (streamPort !== "on" && streamPort !== "off") throw new Error("--stream-port: on or off");
  if (values.build !== "on" && values.build !== "off") throw new Error("--build: on or off");
  if (values.url !== undefined && !/^http:\/\/(127\.0\.0\.1|localhost|\[::1\]):\d+\/?$/.test(values.url)) {
    throw new Error("--url: only a local server (http://127.0.0.1:PORT) is benchmarked");
  }
  if (values.mesh && (values.url !== undefined || values["server-pid"] !== undefined))
    throw new Error("--mesh spawns its own processes; it does not combine with --url or --server-pid");
  if (values["cpu-quota"] !== undefined && !values.mesh)
    throw new Error("--cpu-quota budgets the mesh's processes; it needs --mesh");
  if (values.pin && (values.mesh || values.url !== undefined))
    throw new Error("--pin pins the server the bench spawns; it does not combine with --mesh or --url");
  return {
    url: values.url?.replace(/\/$/, ""),
    mesh: values.mesh
      ? {
          gateways: Math.floor(num("gateways", values.gateways, 1, 64)),
          sequencers: Math.floor(num("sequencers", values.sequencers, 1, 64)),
          fanouts: Math.floor(num("fanouts", values.fanouts, 1, 64)),
          keepDir: values["keep-mesh-dir"],
          cpuQuota: Object.fromEntries(
            values["cpu-quota"] === undefined ? [] : parseCpuQuota(values["cpu-quota"]),
          ),
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
    payload: Math.floor(num("payload", values.payload, 16, 60_000)),
    drain: num("drain", values.drain, 0, 600),
    workers: Math.floor(num("workers", values.workers, values["worker-processes"] ? 1 : 0, 16)),
    workerProcesses: values["worker-processes"],
    client,
    ackInterval: num("ack-interval", values["ack-interval"], 1, 10_000),
    connectConcurrency: num("connect-concurrency", values["connect-concurrency"], 1, 100_000),
    echo: values.echo === "on",
    streamPort: streamPort === "on",
    serverNodeArgs: values["server-node-args"]?.split(/\s+/).filter(Boolean),
    probe: values.probe !== "off",
    build: values.build !== "off",
    pin: values.pin,
    benchNice: Math.floor(num("bench-nice", values["bench-nice"], -20, 19)),
    json: values.json,
  };
}
