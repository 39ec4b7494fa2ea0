import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type { Redis } from "ioredis";
import { DirectDelivery, InProcessBus } from "../bus/in-process.js";
import type { DeliveryChannel, EventBus } from "../bus/types.js";
import { type Config, ConfigurationError, type PushConfig } from "../common/config.js";
import type { Logger } from "../common/log.js";
import { LocalRateLimiter } from "../common/rate-limit/memory.js";
import type { RateLimiter } from "../common/rate-limit/types.js";
import { deriveMediaUrlKey, openLocalMedia } from "../media/index.js";
import type { MediaEngine } from "../media/types.js";
import type { PushProvider } from "../notification/index.js";
import { InMemoryRouteStore } from "../presence/index.js";
import type { RouteStore } from "../presence/types.js";
import { openLmdbStore } from "../store/lmdb/engine.js";
import type { StoreEngine } from "../store/types.js";

/**
 * The engines behind each port, chosen by configuration: the embedded ones for `npm start`, the
 * distributed ones for the mesh. Services never see which. The distributed engines' modules (and
 * their drivers) are loaded only when configured, so the one-process server never pays for them.
 */

/** The bus and delivery channel with their lifecycle. */
export interface BusEngine {
  /** Where committed events, ephemeral events and broadcasts are published and consumed. */
  bus: EventBus;
  /** Where fanout hands each gateway its delivery batches. */
  delivery: DeliveryChannel;
  /** Why the bus cannot be used right now (for readiness), or undefined. */
  problem: () => string | undefined;
  /** The engine's counters (NATS only). */
  metrics?: Readonly<Record<string, number>>;
  /** Events the fanout consumer has not yet had acknowledged (NATS only). */
  backlog?: () => Promise<{ pending: number; unacknowledged: number }>;
  /** Drains what is in flight and disconnects. */
  close(): Promise<void>;
}

export async function openBus(config: Config, log: Logger): Promise<BusEngine> {
  const mesh = config.mesh;
  if (mesh.bus === "memory") {
    const bus = new InProcessBus(log);
    return { bus, delivery: new DirectDelivery(), problem: () => undefined, close: () => bus.close() };
  }
  const { connectNats } = await import("../bus/nats.js");
  const nats = await connectNats(
    {
      servers: mesh.nats.servers,
      name: `switchboard ${mesh.roles.join(",")} ${mesh.instanceId}`,
      stream: mesh.nats.stream,
      subjectPrefix: mesh.nats.subjectPrefix,
      replicas: mesh.nats.replicas,
      maxAgeMs: mesh.nats.maxAgeMs,
      maxBytes: mesh.nats.maxBytes,
    },
    log,
  );
  // Publishers and the consumer both need the stream; creating it is idempotent.
  if (mesh.roles.includes("sequencer") || mesh.roles.includes("fanout")) await nats.ensureStream();
  return {
    bus: nats.bus,
    delivery: nats.delivery,
    problem: () => (nats.ready() ? undefined : "not connected to NATS"),
    metrics: nats.metrics as unknown as Readonly<Record<string, number>>,
    backlog: () => nats.backlog(),
    close: () => nats.close(),
  };
}

export async function openStore(config: Config, log: Logger): Promise<StoreEngine> {
  if (config.mesh.store === "lmdb") return openLmdbStore({ path: join(config.dataDir, "store") });
  // loadConfig reads SCYLLA_* for every process that opens the store.
  if (config.scylla === undefined)
    throw new Error("SWITCHBOARD_STORE=scylla but no ScyllaDB settings were loaded");
  const { openScyllaStore } = await import("../store/scylla/engine.js");
  return openScyllaStore(
    {
      ...config.scylla,
      migrate: config.mesh.migrate,
      // Idempotency records are kept as long as a client may retry; the database expires them.
      idempotencyTtlSeconds: Math.ceil(config.idempotencyRetentionMs / 1000),
    },
    log,
  );
}

/** A route store with its lifecycle. */
export interface RouteStoreEngine {
  /** Device routes and presence. */
  store: RouteStore;
  /** Why the store cannot be used right now (for readiness), or undefined. */
  problem: () => string | undefined;
  /** Disconnects (Redis) or does nothing (memory). */
  close(): Promise<void>;
}

/** A Redis client for the mesh: retries forever, since Redis coming back must heal everything. */
async function redisClient(url: string, log: Logger, purpose: string): Promise<Redis> {
  const { Redis } = await import("ioredis");
  const client = new Redis(url, {
    // Commands fail fast while Redis is away rather than piling up in the offline queue.
    maxRetriesPerRequest: 1,
    // Route registrations and lookups issued in one turn of the event loop go as one write.
    enableAutoPipelining: true,
    retryStrategy: (attempt) => Math.min(attempt * 100, 2000),
  });
  let down = false;
  client.on("error", (err: Error) => {
    if (!down) log.warn({ err: err.message, purpose }, "redis unavailable");
    down = true;
  });
  client.on("ready", () => {
    if (down) log.info({ purpose }, "redis is back");
    down = false;
  });
  return client;
}

export async function openRouteStore(config: Config, log: Logger): Promise<RouteStoreEngine> {
  if (config.mesh.routes === "memory") {
    return { store: new InMemoryRouteStore(), problem: () => undefined, close: async () => {} };
  }
  const client = await redisClient(config.mesh.redisUrl!, log, "routes");
  const { RedisRouteStore } = await import("../presence/redis.js");
  return {
    store: new RedisRouteStore(client, "sb:"),
    problem: () => (client.status === "ready" ? undefined : `redis is ${client.status}`),
    close: async () => {
      await client.quit().catch(() => client.disconnect());
    },
  };
}

export async function openRateLimiter(config: Config, log: Logger): Promise<RateLimiter> {
  if (config.mesh.routes === "memory") return new LocalRateLimiter();
  const { RedisRateLimiter } = await import("../common/rate-limit/redis.js");
  return new RedisRateLimiter(config.mesh.redisUrl!, { keyPrefix: "sb:", logger: log });
}

/**
 * The media object store: a directory served by this process's own HTTP server, or MinIO (any S3
 * API), whose driver is loaded only then. `tokenKey` is the access-token key, from which the local
 * engine's URL key is derived unless one is configured.
 */
export async function openMedia(
  config: Pick<Config, "media" | "host">,
  tokenKey: Uint8Array,
  log: Logger,
): Promise<MediaEngine> {
  const engine = config.media.engine;
  if (engine.kind === "local") {
    return openLocalMedia(
      {
        dir: engine.dir,
        host: config.host,
        port: engine.port,
        publicBaseUrl: engine.publicBaseUrl,
        urlKey: engine.urlKey ?? deriveMediaUrlKey(tokenKey),
      },
      log,
    );
  }
  const { MinioObjectStore } = await import("../media/minio.js");
  const store = await MinioObjectStore.open(engine.options);
  return { store, objectsUrl: undefined, stop: async () => {} };
}

/**
 * The push providers: one per kind, the real one where credentials are configured (its module
 * and library loaded only then), otherwise the log-only embedded default. Credentials are read
 * here, at start-up, so a bad file stops the process with a message naming it.
 */
export async function openPushProviders(config: PushConfig, log: Logger): Promise<PushProvider[]> {
  const read = async (what: string, path: string) => {
    try {
      return await readFile(path, "utf8");
    } catch (err) {
      throw new ConfigurationError(
        `configuration: cannot read the ${what} at ${path}: ${(err as Error).message}`,
      );
    }
  };
  const { LogPushProvider } = await import("../notification/providers/log.js");
  const providers: PushProvider[] = [];
  if (config.webPush) {
    const { WebPushProvider } = await import("../notification/providers/webpush.js");
    providers.push(
      new WebPushProvider({ ...config.webPush, allowPrivateEndpoints: config.allowPrivateEndpoints }),
    );
  } else {
    providers.push(new LogPushProvider("webpush", log));
  }
  if (config.fcm) {
    const json = await read("FCM service account", config.fcm.serviceAccountFile);
    const { FcmProvider, fcmOptionsFromServiceAccount } = await import("../notification/providers/fcm.js");
    providers.push(
      new FcmProvider(
        fcmOptionsFromServiceAccount(json, {
          ...(config.fcm.endpoint !== undefined && { endpoint: config.fcm.endpoint }),
          ...(config.fcm.tokenUri !== undefined && { tokenUri: config.fcm.tokenUri }),
        }),
      ),
    );
  } else {
    providers.push(new LogPushProvider("fcm", log));
  }
  if (config.apns) {
    const privateKey = await read("APNs key", config.apns.keyFile);
    const { ApnsProvider } = await import("../notification/providers/apns.js");
    providers.push(
      new ApnsProvider({
        teamId: config.apns.teamId,
        keyId: config.apns.keyId,
        privateKey,
        ...(config.apns.productionEndpoint !== undefined && {
          productionEndpoint: config.apns.productionEndpoint,
        }),
        ...(config.apns.sandboxEndpoint !== undefined && { sandboxEndpoint: config.apns.sandboxEndpoint }),
      }),
    );
  } else {
    providers.push(new LogPushProvider("apns", log));
  }
  log.info(
    { webpush: !!config.webPush, fcm: !!config.fcm, apns: !!config.apns },
    "push providers (unconfigured kinds only log their pushes)",
  );
  return providers;
}
