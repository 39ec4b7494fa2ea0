import { timingSafeEqual } from "node:crypto";
import { chmod, mkdir, readFile, writeFile } from "node:fs/promises";
import * as http from "node:http";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import type { DescService } from "@bufbuild/protobuf";
import {
  type Client,
  type ConnectRouter,
  createClient,
  createRouterTransport,
  type Interceptor,
  type Transport,
} from "@connectrpc/connect";
import { connectNodeAdapter, createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { AdminService } from "../../gen/switchboard/internal/v1/admin_pb.js";
import { DirectoryService } from "../../gen/switchboard/internal/v1/directory_pb.js";
import { NotificationService } from "../../gen/switchboard/internal/v1/notification_pb.js";
import { PresenceService } from "../../gen/switchboard/internal/v1/presence_pb.js";
import { SequencerService } from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import { AccountService } from "../../gen/switchboard/v1/accounts_pb.js";
import { KeyService } from "../../gen/switchboard/v1/keys_pb.js";
import { MediaService } from "../../gen/switchboard/v1/media_pb.js";
import { Accounts } from "../accounts/accounts.js";
import { accountService, directoryService } from "../accounts/handler.js";
import { DEFAULT_KEYS_OPTIONS, Keys } from "../accounts/keys.js";
import { keyService } from "../accounts/keys-handler.js";
import { trustedProxyList, withPeerAddress } from "../accounts/peer.js";
import { perPeriod, type RefusalSink } from "../accounts/refusals.js";
import { adminService } from "../admin/handler.js";
import { Tokens } from "../common/auth.js";
import {
  type Config,
  type ConfigInput,
  gatewayReadMaxBytes,
  loadConfig,
  ROLES,
  type Role,
} from "../common/config.js";
import { errorBoundary } from "../common/boundary.js";
import { newSecret } from "../common/ids.js";
import {
  internalCredential,
  requireInternalCredential,
  sendInternalCredential,
} from "../common/internal-auth.js";
import { createLogger, type Logger } from "../common/log.js";
import type { RateLimiter } from "../common/rate-limit/types.js";
import { Refusals } from "../common/refusals.js";
import { clientTelemetry, serverTelemetry } from "../common/rpc-telemetry.js";
import { startTelemetry } from "../common/telemetry.js";
import { Fanout } from "../fanout/fanout.js";
import { GatewayCore } from "../gateway/gateway.js";
import {
  accountForwarder,
  authInterceptor,
  ConversationService,
  conversationService,
  GatewayService,
  gatewayService,
  keyForwarder,
  mediaForwarder,
} from "../gateway/handlers.js";
import { deviceAuthenticator, type StartedMedia, startMedia } from "../media/setup.js";
import { notificationService } from "../notification/handler.js";
import { Notifier } from "../notification/notifier.js";
import { buildPushProviders } from "../notification/setup.js";
import { presenceService } from "../presence/handler.js";
import { Presence } from "../presence/presence.js";
import { sequencerService } from "../sequencer/handler.js";
import { type SequencerClient, shardedSequencerClient, shardsOfReplica } from "../sequencer/router.js";
import { Sequencer } from "../sequencer/sequencer.js";
import { EdgeGuard, streamingProcedures } from "./edge.js";
import { openBus, openMedia, openRateLimiter, openRouteStore, openStore } from "./engines.js";
import { observeProcess } from "./observe.js";

/** Reported in traces and metrics as service.version. */
const VERSION = "0.1.0";

/** Options for a server process. */
export interface ServerOptions extends ConfigInput {
  /** A logger to use instead of one built from the configuration. */
  logger?: Logger;
  /** The environment to read settings from; the process's by default (see loadConfig). */
  env?: NodeJS.ProcessEnv;
}

/** A running server. */
export interface RunningServer {
  /** The base URL devices (or, for internal roles, other services) connect to ("http://host:port"). */
  url: string;
  /** The bound port. */
  port: number;
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
 * The access token key: configured, or generated once into the data directory (readable by the
 * owner only) so tokens survive restarts of a single-process deployment.
 */
async function tokenKey(config: Config): Promise<Uint8Array> {
  if (config.tokenKey !== undefined) return config.tokenKey;
  const path = join(config.dataDir, "token.key");
  try {
    return Buffer.from((await readFile(path, "utf8")).trim(), "base64url");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    const key = newSecret(32);
    await writeFile(path, `${key}\n`, { mode: 0o600, flag: "wx" });
    await chmod(path, 0o600);
    return Buffer.from(key, "base64url");
  }
}

/** Shutdown steps, run in reverse order of registration. */
class Closers {
  private readonly steps: Array<{ name: string; run: () => unknown }> = [];
  add(name: string, run: () => unknown): void {
    this.steps.push({ name, run });
  }
  async run(log: Logger): Promise<void> {
    for (const step of this.steps.splice(0).reverse()) {
      try {
        await step.run();
      } catch (err) {
        log.warn({ err, step: step.name }, "shutdown step failed");
      }
    }
  }
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
  const { logger, env, ...input } = options;
  const config = loadConfig(input, env);
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
  const readiness: Array<() => string | undefined> = [];
  let draining = false;
  readiness.push(() => (draining ? "shutting down" : undefined));
  // `switchboard admin drain` turns a gateway away from devices without stopping it.
  let drainedByOperator = false;
  readiness.push(() => (drainedByOperator ? "drained by an operator" : undefined));

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
    const needsTokens = roles.has("gateway") || roles.has("accounts") || roles.has("media") || !everything;
    const key = needsTokens ? await tokenKey(config) : undefined;
    const tokens = key ? new Tokens(key, config.tokenTtlSeconds) : undefined;
    const credential = key && !everything ? internalCredential(key) : undefined;

    const busEngine = await openBus(config, log);
    closers.add("bus", () => busEngine.close());
    readiness.push(busEngine.problem);
    const { bus, delivery } = busEngine;

    const store = roles.has("accounts") || roles.has("sequencer") ? await openStore(config, log) : undefined;
    if (store) closers.add("store", () => store.close());

    // Remote services: one HTTP/2 connection per address, shared by every client of this
    // process, closed at shutdown.
    const remotes = new Map<string, Transport>();
    const remote = (baseUrl: string): Transport => {
      const known = remotes.get(baseUrl);
      if (known) return known;
      const sessionManager = new Http2SessionManager(baseUrl, {
        pingIntervalMs: 10_000,
        pingTimeoutMs: 5_000,
      });
      closers.add(`connection to ${baseUrl}`, () => sessionManager.abort());
      const interceptors: Interceptor[] = [
        clientTelemetry(),
        ...(credential ? [sendInternalCredential(credential)] : []),
      ];
      const transport = createGrpcTransport({
        baseUrl,
        sessionManager,
        interceptors,
        defaultTimeoutMs: 15_000,
      });
      remotes.set(baseUrl, transport);
      return transport;
    };

    // Local services register here; they are served on the internal router and, when other
    // processes call them, on the network as well.
    const local: Array<{ service: DescService; register: (router: ConnectRouter) => void }> = [];
    let localTransport: Transport | undefined;
    const inProcess = (): Transport => {
      localTransport ??= createRouterTransport(
        (router) => {
          for (const { register } of local) register(router);
        },
        { router: { interceptors: [serverTelemetry(), errorBoundary(log)] } },
      );
      return localTransport;
    };
    const clientOf = <S extends DescService>(
      service: S,
      isLocal: boolean,
      url: string | undefined,
    ): Client<S> => {
      if (isLocal) return createClient(service, { ...lazy(inProcess) });
      if (url === undefined) throw new Error(`no address for ${service.typeName}`);
      return createClient(service, remote(url));
    };

    // Sequencer replicas: this process's own shards locally, the others over gRPC.
    let sequencer: Sequencer | undefined;
    if (roles.has("sequencer")) {
      const owned = shardsOfReplica(mesh.sequencerOrdinal, mesh.sequencerReplicas, config.shardCount);
      const seq = new Sequencer(store!.conversations, bus, log, {
        shardCount: config.shardCount,
        ownedShards: owned,
        limits: config.limits,
        cacheBytes: config.sequencerCacheBytes,
        maxStatesPerShard: config.sequencerCacheConversations,
      });
      sequencer = seq;
      closers.add("sequencer", () => seq.close());
      local.push({
        service: SequencerService,
        register: (r) => r.service(SequencerService, sequencerService(seq)),
      });
      // Idempotency records are needed only for as long as a client may retry.
      const expiry = setInterval(
        () => {
          store!.conversations
            .expireIdempotency(Date.now() - config.idempotencyRetentionMs)
            .catch((err: unknown) => log.warn({ err }, "idempotency expiry failed"));
        },
        60 * 60 * 1000,
      );
      expiry.unref();
      closers.add("idempotency expiry", () => clearInterval(expiry));
      log.info(
        { ordinal: mesh.sequencerOrdinal, replicas: mesh.sequencerReplicas, shards: owned },
        "sequencer shards",
      );
    }
    const sequencerClient = (): SequencerClient => {
      if (mesh.sequencerReplicas === 1 && roles.has("sequencer"))
        return clientOf(SequencerService, true, undefined);
      const replicas = mesh.urls.sequencers.map((url, ordinal) =>
        roles.has("sequencer") && ordinal === mesh.sequencerOrdinal
          ? clientOf(SequencerService, true, undefined)
          : createClient(SequencerService, remote(url)),
      );
      return shardedSequencerClient(replicas, config.shardCount);
    };

    let accounts: Accounts | undefined;
    if (roles.has("accounts")) {
      // The abuse controls' buckets: in this process, or on Redis shared by every accounts process.
      const accountLimiter = await openRateLimiter(config, log);
      closers.add("accounts rate limiter", () => accountLimiter.close());
      const al = config.accountLimits;
      const rate = (limit: ReturnType<typeof perPeriod>) =>
        limit === undefined ? undefined : { limiter: accountLimiter, limit };
      // The process's refusal counter (declared with the network face below; used only on calls).
      const accountRefusals: RefusalSink = { refuse: (...args) => refusals.refuse(...args) };
      accounts = new Accounts(store!.accounts, tokens!, bus, log, {
        maxDevicesPerUser: config.limits.maxDevicesPerUser,
        linkCodeTtlSeconds: config.linkCodeTtlSeconds,
        refusals: accountRefusals,
        abuse: {
          registerPerAddress: rate(perPeriod("register-address", al.registrationsPerAddressPerHour, 3600)),
          registerServerWide: rate(perPeriod("register-all", al.registrationsPerHour, 3600)),
          lookups: rate(perPeriod("user-lookups", al.lookupsPerMinute, 60)),
          reservedNames: al.reservedUsernames,
          registration: al.registration,
        },
        privacyDefaults: config.privacyDefaults,
      });
      local.push({
        service: DirectoryService,
        register: (r) => r.service(DirectoryService, directoryService(accounts!)),
      });
      const bundleRate = rate(perPeriod("key-bundles", al.bundleFetchesPerMinute, 60));
      const oneTimePrekeyRate = rate(perPeriod("one-time-prekeys", al.oneTimePrekeysPerPairPerDay, 86_400));
      const keys = new Keys(store!.keys, store!.accounts, bus, log, {
        ...DEFAULT_KEYS_OPTIONS,
        refusals: accountRefusals,
        ...(bundleRate && { bundleRate }),
        ...(oneTimePrekeyRate && { oneTimePrekeyRate }),
      });
      // DirectoryService.GetDeviceRegistrations answers from the same key directory.
      accounts.keyDirectory = keys;
      // A device being linked is served no history from before its link: every sequencer
      // replica records where it starts before the device exists.
      const linkRecorder = sequencerClient();
      accounts.deviceLinks = async (userId, deviceId) => {
        await linkRecorder.recordDeviceLink({ userId, deviceId });
      };
      const stopKeyWatch = keys.watchRevocations();
      closers.add("key revocations", () => stopKeyWatch());
      local.push({
        service: KeyService,
        register: (r) => r.service(KeyService, keyService(keys, accounts!, tokens!)),
      });
      local.push({
        service: AccountService,
        register: (r) =>
          r.service(
            AccountService,
            accountService(accounts!, tokens!, { allowHttpPushEndpoints: config.push.allowHttpEndpoints }),
          ),
      });
    }
    const directoryClient = () => clientOf(DirectoryService, roles.has("accounts"), mesh.urls.accounts);

    let presence: Presence | undefined;
    if (roles.has("presence")) {
      const routeStore = await openRouteStore(config, log);
      closers.add("route store", () => routeStore.close());
      readiness.push(routeStore.problem);
      const p = new Presence(routeStore.store, bus, log, { sweepIntervalMs: 5000 });
      presence = p;
      closers.add("presence", () => p.close());
      local.push({
        service: PresenceService,
        register: (r) => r.service(PresenceService, presenceService(p)),
      });
    }
    const presenceClient = () => clientOf(PresenceService, roles.has("presence"), mesh.urls.presence);

    let notifier: Notifier | undefined;
    if (roles.has("notification")) {
      const providers = await buildPushProviders(config.push, log);
      const n = new Notifier(directoryClient(), providers, log, {
        perDevicePerMinute: config.push.perDevicePerMinute,
        perDeviceBurst: config.push.perDeviceBurst,
      });
      notifier = n;
      closers.add("notifier", () => n.close());
      local.push({
        service: NotificationService,
        register: (r) => r.service(NotificationService, notificationService(n)),
      });
    }

    if (roles.has("fanout")) {
      const fanout = new Fanout(bus, delivery, sequencerClient(), presenceClient(), log, {
        directory: directoryClient(),
        notification: clientOf(NotificationService, roles.has("notification"), mesh.urls.notification),
      });
      fanout.start();
      closers.add("fanout", () => fanout.stop());
    }

    let gateway: GatewayCore | undefined;
    let rateLimiter: RateLimiter | undefined;
    if (roles.has("gateway")) {
      const limiter = await openRateLimiter(config, log);
      rateLimiter = limiter;
      closers.add("rate limiter", () => limiter.close());
      gateway = new GatewayCore({
        id: mesh.instanceId,
        sequencer: sequencerClient(),
        directory: directoryClient(),
        presence: presenceClient(),
        delivery,
        bus,
        tokens: tokens!,
        limits: config.limits,
        rateLimiter,
        log,
      });
    }
    let media: StartedMedia | undefined;
    if (roles.has("media")) {
      const gw = gateway;
      // The upload quota's buckets: in this process, or on Redis shared by every media process.
      const mediaLimiter = await openRateLimiter(config, log);
      closers.add("media rate limiter", () => mediaLimiter.close());
      const started = await startMedia({
        config: config.media,
        engine: await openMedia(config, key!, log),
        members: sequencerClient(),
        authenticate: gw ? (h) => gw.authenticate(h) : deviceAuthenticator(tokens!, directoryClient()),
        log,
        // The process's refusal counter (declared with the network face below; used only on calls).
        quota: { limiter: mediaLimiter, refusals: { refuse: (...args) => refusals.refuse(...args) } },
      });
      media = started;
      closers.add("media", () => started.close());
    }
    observeProcess({
      bus: busEngine,
      sequencer,
      notifier,
      fanout: roles.has("fanout"),
      rateLimiter: rateLimiter as { metrics?: { fallbacks: number } } | undefined,
    });

    // The network face: the device API on a gateway, and the local services other processes call.
    const directoryAccounts = () => clientOf(AccountService, roles.has("accounts"), mesh.urls.accounts);
    // Every process, one-process mode included, refuses internal services (the admin service
    // among them) without the internal credential; key is always set when a process serves.
    const internalGuard = credential ?? (key ? internalCredential(key) : undefined);
    const refusals = new Refusals(log);
    const handler = connectNodeAdapter({
      routes: (router) => {
        if (gateway) {
          router.service(GatewayService, gatewayService(gateway));
          router.service(
            ConversationService,
            conversationService(gateway, directoryClient(), config.limits.maxGroupSize),
          );
          // Devices reach the account API through their gateway, which forwards it as is.
          router.service(AccountService, accountForwarder(directoryAccounts()));
          router.service(
            KeyService,
            keyForwarder(clientOf(KeyService, roles.has("accounts"), mesh.urls.accounts)),
          );
          // Attachments: served here, or forwarded to the media service when it runs elsewhere.
          if (!media && mesh.urls.media !== undefined) {
            router.service(MediaService, mediaForwarder(createClient(MediaService, remote(mesh.urls.media))));
          }
        }
        // A public service that authenticates devices itself.
        if (media) router.service(MediaService, media.service);
        if (internalGuard) {
          router.service(
            AdminService,
            adminService({
              instanceId: mesh.instanceId,
              roles: mesh.roles,
              startedAtMs,
              gateway,
              accounts,
              presence,
              sequencer,
              notifier,
              markNotReady: () => {
                drainedByOperator = true;
              },
            }),
          );
        }
        if (!everything) {
          for (const { service, register } of local) {
            if (!(gateway && (service === AccountService || service === KeyService))) register(router);
          }
        }
      },
      // From devices a frame carries one payload plus ids, so anything much larger is refused
      // before parsing. Internal batches (appends, deliveries) carry many payloads at once.
      readMaxBytes: gateway ? gatewayReadMaxBytes(config.limits) : 64 * 1024 * 1024,
      // The boundary is outermost so that it also sees what authentication throws.
      interceptors: [
        serverTelemetry(),
        errorBoundary(log, refusals),
        ...(internalGuard ? [requireInternalCredential(internalGuard)] : []),
        // Internal services carry the internal credential, not a device token.
        ...(gateway ? [exceptInternal(authInterceptor(gateway))] : []),
      ],
      fallback: (req, res) => {
        if (req.url === "/healthz" || req.url === "/readyz") {
          const problems = req.url === "/readyz" ? currentProblems() : [];
          res.writeHead(problems.length === 0 ? 200 : 503, { "content-type": "text/plain" });
          res.end(problems.length === 0 ? "ok\n" : `${problems.join("\n")}\n`);
          return;
        }
        res.writeHead(404);
        res.end();
      },
    });
    const currentProblems = (): string[] => readiness.map((check) => check()).filter((p): p is string => !!p);

    const edge = new EdgeGuard(config.edge, refusals, streamingProcedures([GatewayService]), internalGuard);
    // Every request carries the caller's address from the socket (PEER_HEADER), for per-address
    // limits behind the gateway; only a call with the internal credential may bring its own.
    const expectedInternal = internalGuard === undefined ? undefined : Buffer.from(internalGuard);
    const peerAware = withPeerAddress(handler, {
      trustedProxies: trustedProxyList(config.accountLimits.trustedProxies),
      isInternal: (given) => {
        if (expectedInternal === undefined || given === undefined) return false;
        const bytes = Buffer.from(given);
        return bytes.length === expectedInternal.length && timingSafeEqual(bytes, expectedInternal);
      },
    });
    const server = http2.createServer(edge.serverOptions(), edge.wrap(peerAware));
    edge.attach(server);
    const sessions = new Set<http2.ServerHttp2Session>();
    server.on("session", (session) => {
      sessions.add(session);
      session.once("close", () => sessions.delete(session));
    });
    await listen(server, config.port, config.host);
    const port = (server.address() as AddressInfo).port;
    const url = `http://${hostForUrl(config.host)}:${port}`;
    closers.add("server", async () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      // Streams ended when the gateway drained; give their last frames a moment, then close.
      for (const s of sessions) s.close();
      const force = setTimeout(() => {
        for (const s of sessions) s.destroy();
      }, 2000);
      await closed;
      clearTimeout(force);
    });
    if (gateway) {
      const gw = gateway;
      // Registered after the server, so it runs first: clients are told to go elsewhere while
      // everything behind the gateway still works.
      closers.add("gateway drain", () => gw.drain());
    }

    // Kubernetes probes speak HTTP/1.1, which an h2c server cannot answer.
    let adminUrl: string | undefined;
    if (mesh.adminPort !== undefined) {
      const admin = http.createServer((req, res) => {
        const path = (req.url ?? "").split("?")[0];
        if (path === "/healthz") {
          res.writeHead(200, { "content-type": "text/plain" }).end("ok\n");
        } else if (path === "/metrics") {
          telemetry.metricsHandler(req, res);
        } else if (path === "/readyz") {
          const problems = currentProblems();
          res
            .writeHead(problems.length === 0 ? 200 : 503, { "content-type": "text/plain" })
            .end(problems.length === 0 ? "ok\n" : `${problems.join("\n")}\n`);
        } else {
          res.writeHead(404).end();
        }
      });
      await listen(admin, mesh.adminPort, config.host);
      adminUrl = `http://${hostForUrl(config.host)}:${(admin.address() as AddressInfo).port}`;
      closers.add("admin server", () => new Promise<void>((resolve) => admin.close(() => resolve())));
    }

    log.info(
      {
        url,
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
    return { url, port, adminUrl, config, gateway, readiness: currentProblems, close };
  } catch (err) {
    // A process that cannot start must not leave connections or files open behind the error.
    await closers.run(log);
    throw err;
  }
}

/** Runs an interceptor for every service except the internal ones (switchboard.internal.*). */
function exceptInternal(interceptor: Interceptor): Interceptor {
  return (next) => {
    const intercepted = interceptor(next);
    return (req) => (req.service.typeName.startsWith("switchboard.internal.") ? next(req) : intercepted(req));
  };
}

/** A transport created on first use: local services register before anyone calls them. */
function lazy(make: () => Transport): Transport {
  return {
    unary: (...args) => make().unary(...args),
    stream: (...args) => make().stream(...args),
  };
}

function hostForUrl(host: string): string {
  return host.includes(":") ? `[${host}]` : host;
}

function listen(server: http.Server | http2.Http2Server, port: number, host: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
}
