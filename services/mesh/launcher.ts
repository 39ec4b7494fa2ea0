import { type ChildProcess, spawn } from "node:child_process";
import { createWriteStream, existsSync, type WriteStream } from "node:fs";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { environment } from "../common/config.js";
import { newSecret } from "../common/ids.js";
import { waitForListening } from "./listening.js";
import { type BackendServer, freePort, startNatsServer, startRedisServer } from "./servers.js";

/**
 * The checkout (or image) root: the directory above this file that holds bin/switchboard.js. From
 * the sources that is two levels up; from the compiled build (dist/services/mesh) three.
 */
function findRoot(): string {
  for (const up of ["../../", "../../../"]) {
    const dir = new URL(up, import.meta.url).pathname;
    if (existsSync(join(dir, "bin/switchboard.js"))) return dir;
  }
  throw new Error("cannot find bin/switchboard.js above services/mesh");
}

const root = findRoot();

/** How many of each service the mesh runs, and where it keeps its files. */
export interface MeshOptions {
  /** Working directory: each process's data directory and log file live under it. */
  dir: string;
  /** Gateways (default 2). */
  gateways?: number;
  /** Sequencer replicas (default 2). */
  sequencers?: number;
  /** Fanout workers (default 2). */
  fanouts?: number;
  /** Logical shards (default 16). */
  shards?: number;
  /** An existing NATS server; without one the mesh starts its own nats-server with JetStream. */
  natsUrl?: string;
  /** An existing Redis; without one the mesh starts its own redis-server. */
  redisUrl?: string;
  /** Extra settings for every process (limits, log level, SCYLLA_* for the ScyllaDB store). */
  env?: Record<string, string>;
  /** The gateways' ports; free ports when absent. */
  gatewayPorts?: number[];
  /** Where each process's stderr (its JSON log) goes: files under dir (default) or this callback. */
  onLog?: (process: string, line: string) => void;
  /** Subject prefix and stream name on a shared NATS, so meshes can share one server. */
  natsPrefix?: string;
}

/** One service process of the mesh. */
export interface MeshProcess {
  /** "gateway-0", "sequencer-1", "fanout-0", "accounts", "presence". */
  name: string;
  /** The roles it runs. */
  roles: string;
  /** Its RPC URL. */
  url: string;
  /** Its admin URL (/healthz, /readyz). */
  adminUrl: string;
  /** The running child, if any. */
  child: ChildProcess | undefined;
  /** The last lines of its log, for failure messages. */
  recent: string[];
}

interface Spec {
  name: string;
  roles: string;
  port: number;
  adminPort: number;
  env: Record<string, string>;
}

/**
 * The whole distributed topology on one machine: every service in its own OS process, linked by
 * gRPC and NATS JetStream, with routes and rate limits in Redis, exactly as the Helm chart runs it
 * (minus Kubernetes). Used by `switchboard mesh`, the multi-process test suite and the benchmark.
 */
export class Mesh {
  readonly processes = new Map<string, MeshProcess>();
  nats: BackendServer | undefined;
  redis: BackendServer | undefined;
  natsUrl = "";
  redisUrl = "";
  private readonly specs = new Map<string, Spec>();
  private readonly exits = new Map<string, Promise<void>>();
  private readonly logs = new Map<string, WriteStream>();
  private natsDir = "";
  private stopped = false;

  private constructor(private readonly options: MeshOptions) {}

  /** Starts the backends (unless given) and every service process; resolves once all listen. */
  static async start(options: MeshOptions): Promise<Mesh> {
    const mesh = new Mesh(options);
    try {
      await mesh.boot();
    } catch (err) {
      await mesh.stop();
      throw err;
    }
    return mesh;
  }

  /** The gateways' URLs, for devices. */
  get gatewayUrls(): string[] {
    return [...this.processes.values()].filter((p) => p.name.startsWith("gateway-")).map((p) => p.url);
  }

  private async boot(): Promise<void> {
    const o = this.options;
    await mkdir(o.dir, { recursive: true });
    if (o.natsUrl) this.natsUrl = o.natsUrl;
    else {
      this.natsDir = join(o.dir, "nats");
      this.nats = await startNatsServer({ storeDir: this.natsDir });
      this.natsUrl = this.nats.url;
    }
    if (o.redisUrl) this.redisUrl = o.redisUrl;
    else {
      this.redis = await startRedisServer({});
      this.redisUrl = this.redis.url;
    }

    const sequencers = o.sequencers ?? 2;
    const ports = async (n: number, fixed?: number[]) =>
      Promise.all(Array.from({ length: n }, (_, i) => (fixed?.[i] !== undefined ? fixed[i]! : freePort())));
    const seqPorts = await ports(sequencers);
    const [accountsPort, presencePort] = await ports(2);
    const url = (port: number) => `http://127.0.0.1:${port}`;
    const common: Record<string, string> = {
      SWITCHBOARD_TOKEN_KEY: newSecret(32),
      SWITCHBOARD_BUS: "nats",
      SWITCHBOARD_NATS_URL: this.natsUrl,
      SWITCHBOARD_ROUTES: "redis",
      SWITCHBOARD_REDIS_URL: this.redisUrl,
      SWITCHBOARD_SHARDS: String(o.shards ?? 16),
      SWITCHBOARD_SEQUENCER_REPLICAS: String(sequencers),
      SWITCHBOARD_SEQUENCER_URLS: seqPorts.map(url).join(","),
      SWITCHBOARD_ACCOUNTS_URL: url(accountsPort!),
      SWITCHBOARD_NOTIFICATION_URL: url(accountsPort!),
      SWITCHBOARD_MEDIA_URL: url(accountsPort!),
      // Each process that runs media serves its presigned URLs on a port of its own.
      SWITCHBOARD_MEDIA_PORT: "0",
      SWITCHBOARD_PRESENCE_URL: url(presencePort!),
      ...(o.natsPrefix && {
        SWITCHBOARD_NATS_SUBJECT_PREFIX: o.natsPrefix,
        SWITCHBOARD_NATS_STREAM: `${o.natsPrefix.toUpperCase().replace(/[^A-Z0-9]/g, "_")}_EVENTS`,
      }),
      ...o.env,
    };
    if (common.SCYLLA_CONTACT_POINTS) {
      common.SWITCHBOARD_STORE = "scylla";
      common.SWITCHBOARD_MIGRATE = "true";
    }
    const specs: Spec[] = [];
    const add = async (name: string, roles: string, port: number, env: Record<string, string> = {}) => {
      specs.push({ name, roles, port, adminPort: await freePort(), env: { ...common, ...env } });
    };
    // Stateful services first: the others call them as soon as they start.
    await add("accounts", "accounts,notification,media", accountsPort!);
    await add("presence", "presence", presencePort!);
    for (let i = 0; i < sequencers; i++) {
      await add(`sequencer-${i}`, "sequencer", seqPorts[i]!, { SWITCHBOARD_SEQUENCER_ORDINAL: String(i) });
    }
    const fanoutPorts = await ports(o.fanouts ?? 2);
    for (const [i, p] of fanoutPorts.entries()) {
      specs.push({ name: `fanout-${i}`, roles: "fanout", port: p, adminPort: 0, env: common });
    }
    const gatewayPorts = await ports(o.gateways ?? 2, o.gatewayPorts);
    for (const [i, p] of gatewayPorts.entries()) {
      specs.push({ name: `gateway-${i}`, roles: "gateway", port: p, adminPort: 0, env: common });
    }
    for (const spec of specs) {
      if (spec.adminPort === 0) spec.adminPort = await freePort();
      this.specs.set(spec.name, spec);
    }
    // The stateful tier must listen before the tiers that call it.
    const stateful = specs.filter((s) => !s.name.startsWith("fanout-") && !s.name.startsWith("gateway-"));
    await Promise.all(stateful.map((s) => this.launch(s.name)));
    await Promise.all(specs.filter((s) => !stateful.includes(s)).map((s) => this.launch(s.name)));
  }

  /** Starts (or restarts) one service process on its own port and data directory. */
  async launch(name: string): Promise<MeshProcess> {
    const spec = this.specs.get(name);
    if (spec === undefined) throw new Error(`no mesh process named ${name}`);
    const dataDir = join(this.options.dir, name);
    const child = spawn(
      process.execPath,
      [
        join(root, "bin/switchboard.js"),
        "start",
        "--role",
        spec.roles,
        "--port",
        String(spec.port),
        "--admin-port",
        String(spec.adminPort),
        "--data-dir",
        dataDir,
      ],
      {
        cwd: root,
        env: {
          ...environment(),
          SWITCHBOARD_LOG_LEVEL: "info",
          SWITCHBOARD_INSTANCE_ID: name,
          ...spec.env,
        },
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    const recent: string[] = [];
    const proc: MeshProcess = {
      name,
      roles: spec.roles,
      url: `http://127.0.0.1:${spec.port}`,
      adminUrl: `http://127.0.0.1:${spec.adminPort}`,
      child,
      recent,
    };
    this.processes.set(name, proc);
    this.exits.set(name, new Promise<void>((resolve) => child.once("exit", () => resolve())));
    let sink = this.logs.get(name);
    if (sink === undefined && this.options.onLog === undefined) {
      sink = createWriteStream(join(this.options.dir, `${name}.log`), { flags: "a" });
      this.logs.set(name, sink);
    }
    let partial = "";
    child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
      const lines = (partial + chunk).split("\n");
      partial = lines.pop() ?? "";
      for (const line of lines) {
        if (line === "") continue;
        recent.push(line);
        if (recent.length > 50) recent.shift();
        if (this.options.onLog) this.options.onLog(name, line);
        else sink?.write(`${line}\n`);
      }
    });
    await waitForListening(child, () => [`${name}:`, ...recent], 60_000);
    return proc;
  }

  /** Kills one process (SIGKILL by default: a crash, nothing flushed) and waits for it to exit. */
  async kill(name: string, signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const proc = this.processes.get(name);
    const child = proc?.child;
    if (child === undefined) return;
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    await this.exits.get(name);
    proc!.child = undefined;
  }

  /** Kills and starts again on the same port and data directory. */
  async restart(name: string, signal: NodeJS.Signals = "SIGKILL"): Promise<MeshProcess> {
    await this.kill(name, signal);
    return this.launch(name);
  }

  /** Kills the mesh's own nats-server (SIGKILL) and starts it again on the same port and store. */
  async restartNats(downMs = 0): Promise<void> {
    if (this.nats === undefined) throw new Error("this mesh uses an external NATS server");
    const port = this.nats.port;
    await this.nats.stop("SIGKILL");
    if (downMs > 0) await new Promise((resolve) => setTimeout(resolve, downMs));
    this.nats = await startNatsServer({ port, storeDir: this.natsDir });
  }

  /** Kills the mesh's own redis-server and starts an empty one on the same port. */
  async restartRedis(downMs = 0): Promise<void> {
    if (this.redis === undefined) throw new Error("this mesh uses an external Redis");
    const port = this.redis.port;
    await this.redis.stop("SIGKILL");
    if (downMs > 0) await new Promise((resolve) => setTimeout(resolve, downMs));
    this.redis = await startRedisServer({ port });
  }

  /** Stops every process (SIGTERM: gateways drain, sequencers finish commits), then the backends. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    const order = ["gateway-", "fanout-", "presence", "accounts", "sequencer-"];
    for (const prefix of order) {
      const names = [...this.processes.keys()].filter((n) => n.startsWith(prefix));
      await Promise.all(names.map((n) => this.stopOne(n)));
    }
    await this.nats?.stop("SIGTERM");
    await this.redis?.stop("SIGTERM");
    for (const sink of this.logs.values()) sink.end();
  }

  private async stopOne(name: string): Promise<void> {
    const child = this.processes.get(name)?.child;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
    await this.exits.get(name);
    clearTimeout(timer);
  }
}
