import { type ChildProcess, spawn } from "node:child_process";
import { createWriteStream, type WriteStream } from "node:fs";
import { chmod, mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { environment, settingVariables } from "../common/config.js";
import { newSecret } from "../common/ids.js";
import { SERVER_NODE_FLAGS } from "../server/node-flags.js";
import { type CassandraServer, startCassandra } from "./cassandra.js";
import { type Coturn, coturnMissing, startCoturn } from "./coturn.js";
import { startMeshDatabase } from "./database.js";
import { waitForListening } from "./listening.js";
import { root, stopBackend, watchPid, withDeadline } from "./process-control.js";
import { type BackendServer, freePort, startNatsServer, startRedisServer } from "./servers.js";
import {
  type BackendSettings,
  describeBackend,
  describeProcess,
  type ProcessSettings,
  secretLines,
} from "./settings.js";
import {
  DEFAULT_RESTART_POLICY,
  type ExitStatus,
  type Incarnation,
  type RestartPolicy,
  type Supervised,
  Supervisor,
} from "./supervisor.js";

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
  /**
   * Give each gateway a stream port too (SWITCHBOARD_STREAM_PORT, on a free port): device streams
   * on a thread of their own (Mesh.gatewayStreamUrls).
   */
  gatewayStreamPorts?: boolean;
  /** Where each process's stderr (its JSON log) goes: files under dir (default) or this callback. */
  onLog?: (process: string, line: string) => void;
  /** Subject prefix and stream name on a shared NATS, so meshes can share one server. */
  natsPrefix?: string;
  /**
   * Restart processes that die (role processes and the nats-server/redis-server the mesh started),
   * with this policy over the defaults; off unless given, so tests that kill processes keep control.
   */
  restart?: Partial<RestartPolicy>;
  /** Where the supervisor's lines go (a death, a restart, giving up); stderr by default. */
  onEvent?: (line: string) => void;
  /**
   * Runs each role process in a process group of its own, so a terminal's Ctrl-C reaches only the
   * launcher, which then stops the processes in order (gateways first) instead of all at once.
   */
  ownProcessGroups?: boolean;
  /**
   * "scylla": the store on a CQL database for every process. The cluster in `env`'s
   * SCYLLA_CONTACT_POINTS if it names one; otherwise the mesh starts a local Apache Cassandra 5.0
   * node (services/mesh/cassandra.ts) with its files in `dir`/cassandra. The schema is migrated
   * once before the processes start. "lmdb": each process's files, whatever `env` says. Without
   * this option, SCYLLA_CONTACT_POINTS in `env` selects the cluster (each process migrates on its own).
   */
  store?: "lmdb" | "scylla";
  /**
   * Start a local TURN relay (coturn, services/mesh/coturn.ts) for calls and give the gateways its
   * address and shared secret, unless `env` names relays already (SWITCHBOARD_TURN_URLS). On by
   * default where Debian's `turnserver` is installed; without it calls get no relay, and the
   * launcher says so.
   */
  relay?: boolean;
  /** Picks a free TCP port for a service (default: servers.ts's freePort). Tests pass their own. */
  pickPort?: () => Promise<number>;
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

/** Starts of the service tier, each on newly picked ports, before a port taken meanwhile fails the mesh. */
const PORT_ATTEMPTS = 3;

/** The settings file and the secrets file the launcher writes in its directory. */
export const SETTINGS_FILE = "settings.txt";
export const SECRETS_FILE = "secrets.env";

/**
 * The whole distributed topology on one machine: every service in its own OS process, linked by
 * gRPC and NATS JetStream, with routes and rate limits in Redis, exactly as the Helm chart runs it
 * (minus Kubernetes). Used by `switchboard mesh`, the multi-process test suite and the benchmark.
 * With `restart`, a process that dies is started again (services/mesh/supervisor.ts), as
 * Kubernetes restarts a pod's container.
 */
export class Mesh {
  readonly processes = new Map<string, MeshProcess>();
  nats: BackendServer | undefined;
  redis: BackendServer | undefined;
  /** The Cassandra node this mesh started for `store: "scylla"`, if it started one. */
  cassandra: CassandraServer | undefined;
  /** The TURN relay this mesh started for calls, if it started one. */
  coturn: Coturn | undefined;
  natsUrl = "";
  redisUrl = "";
  private readonly specs = new Map<string, Spec>();
  private readonly exits = new Map<string, Promise<ExitStatus>>();
  private readonly logs = new Map<string, WriteStream>();
  /** Children stopped on purpose (kill, stop, a start-up that timed out): their exit is no death. */
  private readonly deliberate = new WeakSet<ChildProcess>();
  /** Ends the PID watch of a backend server, by name, before it is stopped on purpose. */
  private readonly backendWatches = new Map<string, () => void>();
  private readonly supervisor: Supervisor | undefined;
  private natsDir = "";
  private stopped = false;
  private stopping: Promise<void> | undefined;

  private constructor(private readonly options: MeshOptions) {
    if (options.restart !== undefined) {
      const say = options.onEvent ?? ((line: string) => process.stderr.write(`${line}\n`));
      this.supervisor = new Supervisor({ ...DEFAULT_RESTART_POLICY, ...options.restart }, say);
    }
  }

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

  /** The gateways' stream ports' URLs (gatewayStreamPorts), in the order of gatewayUrls. */
  get gatewayStreamUrls(): string[] {
    return [...this.specs.values()]
      .filter((s) => s.name.startsWith("gateway-") && s.env.SWITCHBOARD_STREAM_PORT !== undefined)
      .map((s) => `http://127.0.0.1:${s.env.SWITCHBOARD_STREAM_PORT}`);
  }

  /** The processes given up on after too many restarts. */
  get givenUp(): string[] {
    return this.supervisor?.givenUp ?? [];
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
    let scylla: Record<string, string> = {};
    if (o.store === "scylla") {
      const database = await startMeshDatabase(o.dir, o.env ?? {}, (line) => this.say(line));
      this.cassandra = database.cassandra;
      scylla = database.settings;
    }
    this.superviseBackends();
    const relay = await this.startRelay();
    // Ports are picked free, then bound by the processes a moment later: another program on the
    // machine (a test running beside this one, say) can take one in between. Every process is
    // told the others' ports, so the service tier starts again on new ones.
    for (let attempt = 1; ; attempt++) {
      try {
        await this.startServices(relay, scylla);
        return;
      } catch (err) {
        const message = err instanceof Error ? err.message : String(err);
        if (attempt >= PORT_ATTEMPTS || !message.includes("EADDRINUSE")) throw err;
        this.say(`a port was taken before its process listened; starting the services on new ports`);
        await this.stopServices(Date.now() + 30_000);
      }
    }
  }

  /** Picks the services' ports and starts every service process; resolves once all listen. */
  private async startServices(relay: Record<string, string>, scylla: Record<string, string>): Promise<void> {
    const o = this.options;
    const pick = o.pickPort ?? freePort;
    const sequencers = o.sequencers ?? 2;
    const ports = async (n: number, fixed?: number[]) =>
      Promise.all(Array.from({ length: n }, (_, i) => (fixed?.[i] !== undefined ? fixed[i]! : pick())));
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
      ...relay,
      ...o.env,
      ...scylla,
    };
    if (common.SCYLLA_CONTACT_POINTS && o.store === undefined) {
      common.SWITCHBOARD_STORE = "scylla";
      common.SWITCHBOARD_MIGRATE = "true";
    }
    const specs: Spec[] = [];
    const add = async (name: string, roles: string, port: number, env: Record<string, string> = {}) => {
      specs.push({ name, roles, port, adminPort: await pick(), env: { ...common, ...env } });
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
      const env = o.gatewayStreamPorts
        ? { ...common, SWITCHBOARD_STREAM_PORT: String(await pick()) }
        : common;
      specs.push({ name: `gateway-${i}`, roles: "gateway", port: p, adminPort: 0, env });
    }
    for (const spec of specs) {
      if (spec.adminPort === 0) spec.adminPort = await pick();
      this.specs.set(spec.name, spec);
    }
    // The stateful tier must listen before the tiers that call it.
    const stateful = specs.filter((s) => !s.name.startsWith("fanout-") && !s.name.startsWith("gateway-"));
    await Promise.all(stateful.map((s) => this.launch(s.name)));
    await Promise.all(specs.filter((s) => !stateful.includes(s)).map((s) => this.launch(s.name)));
    await this.writeSettings();
  }

  /** Stops the service processes of a start that failed, and forgets them (the backends stay). */
  private async stopServices(deadline: number): Promise<void> {
    await Promise.all([...this.processes.keys()].map((n) => this.stopOne(n, deadline)));
    this.processes.clear();
    this.specs.clear();
    this.exits.clear();
  }

  /** A line for the operator (the supervisor's channel). */
  private say(line: string): void {
    if (this.options.onEvent) this.options.onEvent(line);
    else process.stderr.write(`${line}\n`);
  }

  /** The program, arguments and settings (beyond the inherited environment) of one process. */
  private commandOf(spec: Spec): { argv: string[]; env: Record<string, string>; dataDir: string } {
    const dataDir = join(this.options.dir, spec.name);
    const argv = [
      process.execPath,
      ...SERVER_NODE_FLAGS,
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
    ];
    return {
      argv,
      env: { SWITCHBOARD_LOG_LEVEL: "info", SWITCHBOARD_INSTANCE_ID: spec.name, ...spec.env },
      dataDir,
    };
  }

  /**
   * Starts (or restarts) one service process on its own port and data directory. On a mesh that
   * restarts processes, it is watched from then on (again, if it was killed on purpose before).
   */
  async launch(name: string): Promise<MeshProcess> {
    const { proc, incarnation } = await this.spawnProcess(name);
    this.supervisor?.watch(this.unitOf(name), incarnation);
    return proc;
  }

  /** What the supervisor restarts for a role process. */
  private unitOf(name: string): Supervised {
    return {
      name,
      start: async () => {
        const { incarnation } = await this.spawnProcess(name);
        await this.writeSettings();
        return incarnation;
      },
    };
  }

  private async spawnProcess(name: string): Promise<{ proc: MeshProcess; incarnation: Incarnation }> {
    const spec = this.specs.get(name);
    if (spec === undefined) throw new Error(`no mesh process named ${name}`);
    const { argv, env } = this.commandOf(spec);
    const child = spawn(argv[0]!, argv.slice(1), {
      cwd: root,
      env: { ...environment(), ...env },
      stdio: ["ignore", "pipe", "pipe"],
      detached: this.options.ownProcessGroups === true,
    });
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
    const exited = new Promise<ExitStatus>((resolve) =>
      child.once("exit", (code, signal) =>
        resolve({ code, signal, deliberate: this.stopped || this.deliberate.has(child) }),
      ),
    );
    this.exits.set(name, exited);
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
    try {
      await waitForListening(child, () => [`${name}:`, ...recent], 60_000);
    } catch (err) {
      // Still running but not listening: a failed start leaves nothing behind.
      if (child.exitCode === null && child.signalCode === null) {
        this.deliberate.add(child);
        child.kill("SIGKILL");
        await exited;
      }
      throw err;
    }
    return { proc, incarnation: { pid: child.pid!, exited } };
  }

  /** Watches the backends this mesh started (nats-server, redis-server, Cassandra), restarting them when they die. */
  private superviseBackends(): void {
    const supervisor = this.supervisor;
    if (supervisor === undefined) return;
    const running: Array<["nats-server" | "redis-server" | "cassandra", { pid: number } | undefined]> = [
      ["cassandra", this.cassandra],
      ["nats-server", this.nats],
      ["redis-server", this.redis],
    ];
    for (const [name, server] of running) {
      if (server === undefined || supervisor.isWatching(name)) continue;
      supervisor.watch({ name, start: () => this.startBackend(name) }, this.watchBackend(name, server));
    }
  }

  private watchBackend(name: string, server: { pid: number }): Incarnation {
    const watch = watchPid(server.pid);
    this.backendWatches.set(name, watch.cancel);
    return { pid: server.pid, exited: watch.exited };
  }

  /**
   * Starts nats-server (same port and JetStream store), redis-server (same port, empty) or the
   * Cassandra node (same ports and files) again.
   */
  private async startBackend(name: "nats-server" | "redis-server" | "cassandra"): Promise<Incarnation> {
    const old = this.cassandra;
    const server =
      name === "nats-server"
        ? await startNatsServer({ port: this.nats!.port, storeDir: this.natsDir })
        : name === "redis-server"
          ? await startRedisServer({ port: this.redis!.port })
          : await startCassandra({ dir: old!.dir, port: old!.port, storagePort: old!.storagePort });
    if (this.stopped) {
      await server.stop("SIGTERM");
      throw new Error("the mesh is stopping");
    }
    if (name === "nats-server") this.nats = server as BackendServer;
    else if (name === "redis-server") this.redis = server as BackendServer;
    else this.cassandra = server as CassandraServer;
    await this.writeSettings();
    return this.watchBackend(name, server);
  }

  /** Kills one process (SIGKILL by default: a crash, nothing flushed) and waits for it to exit. */
  async kill(name: string, signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const proc = this.processes.get(name);
    const child = proc?.child;
    if (child === undefined) return;
    this.deliberate.add(child);
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
    this.backendWatches.get("nats-server")?.();
    await this.nats.stop("SIGKILL");
    if (downMs > 0) await new Promise((resolve) => setTimeout(resolve, downMs));
    this.nats = await startNatsServer({ port, storeDir: this.natsDir });
    this.superviseBackends();
  }

  /** Kills the mesh's own redis-server and starts an empty one on the same port. */
  async restartRedis(downMs = 0): Promise<void> {
    if (this.redis === undefined) throw new Error("this mesh uses an external Redis");
    const port = this.redis.port;
    this.backendWatches.get("redis-server")?.();
    await this.redis.stop("SIGKILL");
    if (downMs > 0) await new Promise((resolve) => setTimeout(resolve, downMs));
    this.redis = await startRedisServer({ port });
    this.superviseBackends();
  }

  /** Every process's settings and the backends', with current PIDs. */
  settings(): { processes: ProcessSettings[]; backends: BackendSettings[] } {
    const processes = [...this.specs.values()].map((spec): ProcessSettings => {
      const { argv, env, dataDir } = this.commandOf(spec);
      return {
        name: spec.name,
        roles: spec.roles,
        pid: this.processes.get(spec.name)?.child?.pid,
        port: spec.port,
        adminPort: spec.adminPort,
        dataDir,
        logFile: this.options.onLog ? undefined : join(this.options.dir, `${spec.name}.log`),
        cwd: root,
        argv,
        env: settingVariables({ ...environment(), ...env }),
      };
    });
    const backends: BackendSettings[] = [];
    if (this.nats) {
      backends.push({ name: "nats-server", pid: this.nats.pid, url: this.nats.url, dataDir: this.natsDir });
    } else backends.push({ name: "nats (external)", pid: undefined, url: this.natsUrl });
    if (this.redis) backends.push({ name: "redis-server", pid: this.redis.pid, url: this.redis.url });
    else backends.push({ name: "redis (external)", pid: undefined, url: this.redisUrl });
    const c = this.cassandra;
    if (c) backends.push({ name: "cassandra", pid: c.pid, url: `cql://${c.contactPoint}`, dataDir: c.dir });
    if (this.coturn)
      backends.push({ name: "coturn (turnserver)", pid: this.coturn.pid, url: this.coturn.url });
    return { processes, backends };
  }

  /** The local TURN relay's settings for every process, when the mesh runs one (see relay). */
  private async startRelay(): Promise<Record<string, string>> {
    const o = this.options;
    if (o.relay === false || o.env?.SWITCHBOARD_TURN_URLS) return {};
    const missing = coturnMissing();
    if (missing !== false) {
      if (o.relay === true) throw new Error(`relay: ${missing}`);
      this.say(`no TURN relay for calls: ${missing}`);
      return {};
    }
    this.coturn = await startCoturn(newSecret(24));
    return { SWITCHBOARD_TURN_URLS: this.coturn.url, SWITCHBOARD_TURN_SECRET: this.coturn.secret };
  }

  /**
   * Writes every process's settings (secrets redacted) to settings.txt in the mesh directory, and
   * the secrets to secrets.env, readable by its owner only. Rewritten after each restart (new PIDs).
   */
  async writeSettings(): Promise<void> {
    const { processes, backends } = this.settings();
    const secrets = join(this.options.dir, SECRETS_FILE);
    const text = [
      `# switchboard mesh, ${new Date().toISOString()}; launcher pid ${process.pid}`,
      `# Values shown as <redacted> are in ${secrets} (mode 0600): \`set -a; . ${secrets}; set +a\``,
      "# before a command below starts that process again by hand.",
      ...backends.map(describeBackend),
      "",
      ...processes.map((p) => `${describeProcess(p)}\n`),
    ].join("\n");
    await writeFile(secrets, `${secretLines(processes).join("\n")}\n`, { mode: 0o600 });
    await chmod(secrets, 0o600);
    await writeFile(join(this.options.dir, SETTINGS_FILE), text);
  }

  /**
   * Stops every process by its PID (SIGTERM: gateways drain, sequencers finish commits), then the
   * backends, restarting nothing. What has not exited when `deadlineMs` is reached is SIGKILLed.
   */
  stop(deadlineMs = 30_000): Promise<void> {
    this.stopping ??= this.stopAll(Date.now() + deadlineMs);
    return this.stopping;
  }

  private async stopAll(deadline: number): Promise<void> {
    this.stopped = true;
    // Cancels pending restarts now; a restart already starting a process is awaited below.
    const restarting = this.supervisor?.stop();
    for (const cancel of this.backendWatches.values()) cancel();
    const order = ["gateway-", "fanout-", "presence", "accounts", "sequencer-"];
    for (const prefix of order) {
      const names = [...this.processes.keys()].filter((n) => n.startsWith(prefix));
      await Promise.all(names.map((n) => this.stopOne(n, deadline)));
    }
    await withDeadline(restarting ?? Promise.resolve(), deadline);
    await Promise.all([this.nats, this.redis].map((b) => b && stopBackend(b, deadline)));
    // The database last: the processes that wrote to it are gone.
    if (this.cassandra) await stopBackend(this.cassandra, deadline);
    if (this.coturn) await withDeadline(this.coturn.stop(), deadline);
    for (const sink of this.logs.values()) sink.end();
  }

  /** SIGKILLs every process and backend at once (a second Ctrl-C), without waiting. */
  killAll(): void {
    this.stopped = true;
    void this.supervisor?.stop();
    for (const proc of this.processes.values()) {
      const child = proc.child;
      if (child && child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    }
    for (const b of [this.nats, this.redis, this.cassandra]) if (b) void b.stop("SIGKILL");
    void this.coturn?.stop();
  }

  private async stopOne(name: string, deadline: number): Promise<void> {
    const child = this.processes.get(name)?.child;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    this.deliberate.add(child);
    child.kill("SIGTERM");
    const timer = setTimeout(
      () => child.kill("SIGKILL"),
      Math.max(0, Math.min(10_000, deadline - Date.now())),
    );
    await this.exits.get(name);
    clearTimeout(timer);
  }
}
