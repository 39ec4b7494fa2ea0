import { appendFileSync, existsSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { ConnectError } from "@connectrpc/connect";
import { Command, InvalidArgumentError } from "commander";
import { registerClientCommands } from "../../sdk/cli/commands.js";
// Start-up loads only what defines the commands (each command starts in well under half a second,
// docs/benchmarks.md): the server, the mesh, the configuration's schemas (zod) and the logger are
// imported inside the actions that use them, and these two come from their own small files rather
// than the configuration module's barrel. test/release/startup.test.ts checks what --help loads.
import { ConfigurationError } from "../common/config/error.js";
import { ROLES } from "../common/config/roles.js";
import { registerAdminCommands } from "./admin.js";
import { handleClosedOutput, keepRunningOnClosedOutput } from "./closed-output.js";

handleClosedOutput();

/** This release's version, from the package.json above the sources (services/cli) or the build (dist/services/cli). */
function version(): string {
  for (const up of ["../../package.json", "../../../package.json"]) {
    const path = new URL(up, import.meta.url);
    if (!existsSync(path)) continue;
    const pkg = JSON.parse(readFileSync(path, "utf8")) as { name?: string; version?: string };
    if (pkg.name === "switchboard" && pkg.version !== undefined) return pkg.version;
  }
  return "unknown";
}

function port(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 65535)
    throw new InvalidArgumentError("a port number from 0 to 65535");
  return n;
}

const program = new Command("switchboard")
  .description("Switchboard: an open-source messaging backend")
  .version(version())
  .showHelpAfterError();

program
  .command("start")
  .description(
    "run Switchboard: every service in one process on embedded storage, or the services named by --role",
  )
  .option(
    "--role <roles>",
    `comma-separated services to run: ${ROLES.join(", ")} (env SWITCHBOARD_ROLES; default all)`,
  )
  .option("--config <file>", "a JSON file of settings, by their environment names; the environment wins")
  .option("--data-dir <dir>", "where the embedded store keeps its files (env SWITCHBOARD_DATA_DIR)")
  .option("--host <host>", "address to listen on (env SWITCHBOARD_HOST)")
  .option("--port <port>", "port to listen on, 0 for any free port (env SWITCHBOARD_PORT)", port)
  .option("--admin-port <port>", "HTTP/1.1 port for /healthz and /readyz (env SWITCHBOARD_ADMIN_PORT)", port)
  .option("--log-level <level>", "fatal, error, warn, info, debug or silent (env SWITCHBOARD_LOG_LEVEL)")
  .action(
    async (opts: {
      role?: string;
      config?: string;
      dataDir?: string;
      host?: string;
      port?: number;
      adminPort?: number;
      logLevel?: string;
    }) => {
      // `switchboard start | head -1` reads the listening line; the server keeps serving.
      keepRunningOnClosedOutput();
      const [{ settingsEnvironment }, { startServer }] = await Promise.all([
        import("../common/config.js"),
        import("../server/index.js"),
      ]);
      const env = await settingsEnvironment(opts.config);
      if (opts.role !== undefined) env.SWITCHBOARD_ROLES = opts.role;
      const server = await startServer({
        env,
        captureConsole: true,
        ...(opts.dataDir !== undefined && { dataDir: opts.dataDir }),
        ...(opts.host !== undefined && { host: opts.host }),
        ...(opts.port !== undefined && { port: opts.port }),
        ...(opts.logLevel !== undefined && { logLevel: opts.logLevel }),
        ...(opts.adminPort !== undefined && { mesh: { adminPort: opts.adminPort } }),
      });
      const roles =
        server.config.mesh.roles.length === ROLES.length ? "all roles" : server.config.mesh.roles.join(",");
      let stopping = false;
      const stop = (signal: string) => {
        if (stopping) return;
        stopping = true;
        process.stdout.write(`${signal}: shutting down\n`);
        server.close().then(
          () => process.exit(0),
          (err: unknown) => {
            console.error(err);
            process.exit(1);
          },
        );
      };
      process.on("SIGINT", () => stop("SIGINT"));
      process.on("SIGTERM", () => stop("SIGTERM"));
      // Tests and scripts read this line to find the port, then may signal the process at once:
      // it comes after the handlers, since a signal that finds no handler yet kills the process
      // without its shutdown (seen in about half of the immediate SIGTERMs).
      process.stdout.write(
        `switchboard listening on ${server.url} (${roles}; data in ${server.config.dataDir}` +
          `${server.adminUrl ? `; health on ${server.adminUrl}` : ""}` +
          `${server.streamUrl ? `; device streams also on ${server.streamUrl}` : ""})\n`,
      );
    },
  );

program
  .command("migrate")
  .description("apply the ScyllaDB schema migrations (SCYLLA_CONTACT_POINTS, SCYLLA_KEYSPACE, ...)")
  .option("--config <file>", "a JSON file of settings, by their environment names; the environment wins")
  .action(async (opts: { config?: string }) => {
    const [{ loadMigrateSettings, settingsEnvironment }, { createLogger }] = await Promise.all([
      import("../common/config.js"),
      import("../common/log.js"),
    ]);
    const settings = loadMigrateSettings(await settingsEnvironment(opts.config));
    const log = createLogger({ level: settings.logLevel, base: { role: "migrate" } });
    const { migrateScylla } = await import("../store/scylla/schema.js");
    const applied = await migrateScylla(settings.scylla, log);
    process.stdout.write(
      applied.length === 0 ? "schema is up to date\n" : `applied migrations: ${applied.join(", ")}\n`,
    );
    log.flush();
  });

function storeEngine(value: string): "lmdb" | "scylla" {
  if (value !== "lmdb" && value !== "scylla") throw new InvalidArgumentError("lmdb or scylla");
  return value;
}

function count(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 16) throw new InvalidArgumentError("a count from 1 to 16");
  return n;
}

program
  .command("mesh")
  .description(
    "run the distributed topology on this machine: each service in its own process, with " +
      "nats-server (JetStream) and redis-server started for it, restarting any that dies",
  )
  .option("--dir <dir>", "where processes keep data and logs", ".switchboard/mesh")
  .option("--port <port>", "the first gateway's port; the others follow it", port, 7420)
  .option("--gateways <n>", "gateway processes", count, 2)
  .option("--sequencers <n>", "sequencer replicas", count, 2)
  .option("--fanouts <n>", "fanout workers", count, 2)
  .option("--nats-url <url>", "use this NATS server instead of starting one")
  .option("--redis-url <url>", "use this Redis instead of starting one")
  .option(
    "--store <engine>",
    "lmdb (each process's files) or scylla (the cluster in SCYLLA_CONTACT_POINTS, else a local " +
      "Cassandra node started for it); default scylla when SCYLLA_CONTACT_POINTS is set, else lmdb",
    storeEngine,
  )
  .option("--no-restart", "leave a process that dies down instead of restarting it")
  .option(
    "--no-relay",
    "start no local TURN relay for calls (one starts when coturn's turnserver is installed)",
  )
  .action(
    async (opts: {
      dir: string;
      port: number;
      gateways: number;
      sequencers: number;
      fanouts: number;
      natsUrl?: string;
      redisUrl?: string;
      store?: "lmdb" | "scylla";
      restart: boolean;
      relay: boolean;
    }) => {
      keepRunningOnClosedOutput();
      const { Mesh } = await import("../mesh/launcher.js");
      const { describeBackend, describeProcess } = await import("../mesh/settings.js");
      const out = process.stdout;
      // The launcher's own lines (deaths, restarts, giving up) go to the terminal and to a file.
      mkdirSync(opts.dir, { recursive: true });
      const launcherLog = join(opts.dir, "launcher.log");
      const say = (line: string) => {
        const stamped = `${new Date().toISOString()} mesh: ${line}\n`;
        out.write(stamped);
        appendFileSync(launcherLog, stamped);
      };
      const { settingVariables } = await import("../common/config.js");
      const env = settingVariables();
      const mesh = await Mesh.start({
        dir: opts.dir,
        gateways: opts.gateways,
        sequencers: opts.sequencers,
        fanouts: opts.fanouts,
        gatewayPorts: Array.from({ length: opts.gateways }, (_, i) => opts.port + i),
        env,
        onEvent: say,
        ownProcessGroups: true,
        ...(opts.restart && { restart: {} }),
        ...(!opts.relay && { relay: false }),
        // A cluster named in the environment is used like --store scylla: migrated once, up front.
        ...((opts.store !== undefined || env.SCYLLA_CONTACT_POINTS) && { store: opts.store ?? "scylla" }),
        ...(opts.natsUrl !== undefined && { natsUrl: opts.natsUrl }),
        ...(opts.redisUrl !== undefined && { redisUrl: opts.redisUrl }),
      });
      // Each process's settings, as the settings file has them (secrets redacted).
      const { processes, backends } = mesh.settings();
      for (const b of backends) out.write(`${describeBackend(b)}\n`);
      for (const p of processes) out.write(`${describeProcess(p)}\n`);
      out.write(
        `settings: ${join(opts.dir, "settings.txt")} (secrets in ${join(opts.dir, "secrets.env")})\n`,
      );
      for (const p of mesh.processes.values()) {
        out.write(
          `${p.name.padEnd(12)} ${p.url}  health ${p.adminUrl}/readyz  pid ${p.child?.pid}  log ${opts.dir}/${p.name}.log\n`,
        );
      }
      out.write(
        `switchboard mesh listening on ${mesh.gatewayUrls.join(" and ")}; ` +
          `${opts.restart ? "processes that die are restarted; " : ""}Ctrl-C stops it\n`,
      );
      let stopping = false;
      const stop = (signal: string) => {
        if (stopping) {
          // A second signal: no more waiting for drains.
          say(`${signal} again: killing every process now`);
          mesh.killAll();
          process.exit(1);
        }
        stopping = true;
        say(`${signal}: stopping the mesh (restarting nothing; a second ${signal} kills everything)`);
        mesh.stop(30_000).then(
          () => {
            say("stopped");
            process.exit(0);
          },
          (err: unknown) => {
            console.error(err);
            process.exit(1);
          },
        );
      };
      process.on("SIGINT", () => stop("SIGINT"));
      process.on("SIGTERM", () => stop("SIGTERM"));
    },
  );

registerClientCommands(program);
registerAdminCommands(program);

program.parseAsync(process.argv).catch((err: unknown) => {
  // A ConfigurationError's message names the setting. A ConnectError (a call that failed) is
  // printed without its code prefix, which would only distract on a terminal.
  const message =
    err instanceof ConfigurationError
      ? err.message
      : err instanceof ConnectError
        ? err.rawMessage
        : err instanceof Error
          ? err.message
          : String(err);
  process.stderr.write(`switchboard: ${message}\n`);
  process.exit(1);
});
