import { mkdir } from "node:fs/promises";
import type { Accounts } from "../accounts/index.js";
import { Tokens } from "../common/auth.js";
import { type Config, type ConfigInput, loadConfig, ROLES, type Role } from "../common/config.js";
import { useGuardrailFlags } from "../common/guardrails.js";
import { internalCredential } from "../common/internal-auth.js";
import { captureConsole, createLogger, type Logger } from "../common/log.js";
import type { RateLimiter } from "../common/rate-limit/types.js";
import { Refusals } from "../common/refusals.js";
import { startTelemetry } from "../common/telemetry.js";
import type { GatewayCore } from "../gateway/index.js";
import type { StartedMedia } from "../media/index.js";
import type { Notifier } from "../notification/index.js";
import type { Presence } from "../presence/index.js";
import type { Sequencer } from "../sequencer/index.js";
import { lockDataDir } from "./data-dir-lock.js";
import { openBus, openStore } from "./engines.js";
import { healthFallback, startAdminServer } from "./health.js";
import { Closers, Readiness, tokenKey } from "./lifecycle.js";
import { ServiceClients } from "./local-transport.js";
import { serveNetwork } from "./network.js";
import { observeProcess } from "./observe.js";
import {
  type RoleContext,
  startAccountsRole,
  startFanoutRole,
  startGatewayRole,
  startMediaRole,
  startNotificationRole,
  startPresenceRole,
  startSequencerRole,
} from "./roles.js";

/**
 * The composition root: the one place that opens engines and builds the services of a process's
 * roles. Its parts sit beside it: lifecycle.ts (shutdown steps, readiness, the token key),
 * local-transport.ts (how services reach each other), roles.ts (each role's services),
 * network.ts (the h2c face behind the edge guard) and health.ts (probes and metrics).
 */

/** Reported in traces and metrics as service.version. */
const VERSION = "0.1.0";

/** Options for a server process. */
export interface ServerOptions extends ConfigInput {
  /** A logger to use instead of one built from the configuration. */
  logger?: Logger;
  /** The environment to read settings from; the process's by default (see loadConfig). */
  env?: NodeJS.ProcessEnv;
  /**
   * Send libraries' console.error and console.warn through the log (captureConsole): for a
   * process that is the server, not for a server started inside tests.
   */
  captureConsole?: boolean;
}

/** A running server. */
export interface RunningServer {
  /** The base URL devices (or, for internal roles, other services) connect to ("http://host:port"). */
  url: string;
  /** The bound port. */
  port: number;
  /** The stream port's URL (SWITCHBOARD_STREAM_PORT: device streams only), when one is served. */
  streamUrl: string | undefined;
  /** The admin server's URL (/healthz, /readyz), when one is configured. */
  adminUrl: string | undefined;
  /** The effective configuration. */
  config: Config;
  /** The gateway, for inspection (stream counts, metrics), when this process runs one. */
  gateway: GatewayCore | undefined;
  /** Why the process is not ready; empty when it is. */
  readiness(): string[];
  /** Drains streams, finishes commits, closes engines. Safe to call twice. */
  close(): Promise<void>;
}

/**
 * Starts the services of this process's roles: all of them by default, on the embedded engines
 * (`npm start`), or some of them with the distributed engines and the other services' addresses
 * (`switchboard start --role ...`, one role per pod on Kubernetes).
 *
 * Services always talk through their typed RPC clients. A service in this process is reached
 * through Connect's in-memory router transport, one in another process over gRPC, so the code
 * path is the same either way, minus the network.
 */
export async function startServer(options: ServerOptions = {}): Promise<RunningServer> {
  const startedAtMs = Date.now();
  const { logger, env, captureConsole: capture, ...input } = options;
  const config = loadConfig(input, env);
  // The guardrail counts are split by the configured flags' variants (services/common/guardrails.ts).
  useGuardrailFlags(config.featureFlags.flags);
  const mesh = config.mesh;
  const roles = new Set<Role>(mesh.roles);
  const everything = roles.size === ROLES.length;
  const log =
    logger ??
    createLogger({
      level: config.logLevel,
      base: { role: everything ? "all" : mesh.roles.join(","), instance: mesh.instanceId },
    });
  const closers = new Closers();
  if (capture) closers.add("console", captureConsole(log));
  const readiness = new Readiness();
  let draining = false;
  readiness.add(() => (draining ? "shutting down" : undefined));
  // `switchboard admin drain` turns a gateway away from devices without stopping it.
  let drainedByOperator = false;
  readiness.add(() => (drainedByOperator ? "drained by an operator" : undefined));

  const telemetry = startTelemetry({
    tracing: config.tracing,
    serviceVersion: VERSION,
    instanceId: mesh.instanceId,
    roles: mesh.roles,
  });
  // Registered first, so it runs last: the final spans of the shutdown are exported too.
  closers.add("telemetry", () => telemetry.shutdown());

  try {
    await mkdir(config.dataDir, { recursive: true });
    const opensStore = roles.has("accounts") || roles.has("sequencer");
    // The embedded store's files are this process's alone (data-dir-lock.ts); ScyllaDB is shared
    // by design, and what else sits in the directory (token.key, written once) tolerates sharing.
    if (opensStore && mesh.store === "lmdb") {
      const lock = lockDataDir(config.dataDir);
      // Registered before the store, so released after it is closed.
      closers.add("data directory lock", () => lock.release());
    }
    const needsTokens = roles.has("gateway") || roles.has("accounts") || roles.has("media") || !everything;
    const key = needsTokens ? await tokenKey(config) : undefined;
    const tokens = key ? new Tokens(key, config.tokenTtlSeconds) : undefined;
    const credential = key && !everything ? internalCredential(key) : undefined;

    const busEngine = await openBus(config, log);
    closers.add("bus", () => busEngine.close());
    readiness.add(busEngine.problem);
    const { bus, delivery } = busEngine;

    const store = opensStore ? await openStore(config, log) : undefined;
    if (store) closers.add("store", () => store.close());

    const ctx: RoleContext = {
      config,
      roles,
      log,
      bus,
      delivery,
      store,
      key,
      tokens,
      closers,
      readiness,
      clients: new ServiceClients(closers, credential, log),
      // The process's refusal counter and log: the roles' abuse controls and the network face.
      refusals: new Refusals(log),
    };
    // In this order: each role's shutdown step runs before those of the roles built earlier.
    const sequencer: Sequencer | undefined = roles.has("sequencer") ? startSequencerRole(ctx) : undefined;
    const accounts: Accounts | undefined = roles.has("accounts") ? await startAccountsRole(ctx) : undefined;
    const presence: Presence | undefined = roles.has("presence") ? await startPresenceRole(ctx) : undefined;
    const notifier: Notifier | undefined = roles.has("notification")
      ? await startNotificationRole(ctx)
      : undefined;
    if (roles.has("fanout")) startFanoutRole(ctx);
    let gateway: GatewayCore | undefined;
    let rateLimiter: RateLimiter | undefined;
    if (roles.has("gateway")) ({ gateway, rateLimiter } = await startGatewayRole(ctx));
    const media: StartedMedia | undefined = roles.has("media")
      ? await startMediaRole(ctx, gateway)
      : undefined;
    observeProcess({
      bus: busEngine,
      sequencer,
      notifier,
      fanout: roles.has("fanout"),
      rateLimiter: rateLimiter as { metrics?: { fallbacks: number } } | undefined,
    });

    // Every process, one-process mode included, refuses internal services (the admin service
    // among them) without the internal credential; key is always set when a process serves.
    const internalGuard = credential ?? (key ? internalCredential(key) : undefined);
    const currentProblems = () => readiness.problems();
    const { url, port, streamUrl } = await serveNetwork({
      ctx,
      gateway,
      media,
      accounts,
      presence,
      sequencer,
      notifier,
      internalGuard,
      startedAtMs,
      markNotReady: () => {
        drainedByOperator = true;
      },
      fallback: healthFallback(currentProblems),
    });
    if (gateway) {
      const gw = gateway;
      // Registered after the server, so it runs first: clients are told to go elsewhere while
      // everything behind the gateway still works.
      closers.add("gateway drain", () => gw.drain());
    }

    const adminUrl =
      mesh.adminPort === undefined
        ? undefined
        : await startAdminServer({
            port: mesh.adminPort,
            host: config.host,
            telemetry,
            problems: currentProblems,
            closers,
          });

    log.info(
      {
        url,
        streamUrl,
        adminUrl,
        roles: mesh.roles,
        store: mesh.store,
        bus: mesh.bus,
        routes: mesh.routes,
        shards: config.shardCount,
      },
      "switchboard started",
    );

    let closing: Promise<void> | undefined;
    const close = () => {
      closing ??= (async () => {
        log.info("shutting down");
        draining = true;
        await closers.run(log);
        log.info({ outbox: sequencer?.outbox.size ?? 0 }, "stopped");
        log.flush();
      })();
      return closing;
    };
    return { url, port, streamUrl, adminUrl, config, gateway, readiness: currentProblems, close };
  } catch (err) {
    // A process that cannot start must not leave connections or files open behind the error.
    await closers.run(log);
    throw err;
  }
}
