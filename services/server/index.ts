import { chmod, mkdir, readFile, writeFile } from "node:fs/promises";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { createClient, createRouterTransport } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { DirectoryService } from "../../gen/switchboard/internal/v1/directory_pb.js";
import { NotificationService } from "../../gen/switchboard/internal/v1/notification_pb.js";
import { PresenceService } from "../../gen/switchboard/internal/v1/presence_pb.js";
import { SequencerService } from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import { AccountService } from "../../gen/switchboard/v1/accounts_pb.js";
import { Accounts } from "../accounts/accounts.js";
import { accountService, directoryService } from "../accounts/handler.js";
import { DirectDelivery, InProcessBus } from "../bus/in-process.js";
import { Tokens } from "../common/auth.js";
import { type Config, type ConfigInput, loadConfig } from "../common/config.js";
import { errorBoundary } from "../common/errors.js";
import { newSecret } from "../common/ids.js";
import { createLogger, type Logger } from "../common/log.js";
import { Fanout } from "../fanout/fanout.js";
import { GatewayCore } from "../gateway/gateway.js";
import {
  accountForwarder,
  authInterceptor,
  ConversationService,
  conversationService,
  GatewayService,
  gatewayService,
} from "../gateway/handlers.js";
import { notificationService } from "../notification/handler.js";
import { Notifier } from "../notification/notifier.js";
import { buildPushProviders } from "../notification/setup.js";
import { presenceService } from "../presence/handler.js";
import { InMemoryRouteStore } from "../presence/memory.js";
import { Presence } from "../presence/presence.js";
import { sequencerService } from "../sequencer/handler.js";
import { Sequencer } from "../sequencer/sequencer.js";
import { openLmdbStore } from "../store/lmdb/engine.js";

/** Options for a one-process server. */
export interface ServerOptions extends ConfigInput {
  /** A logger to use instead of one built from the configuration. */
  logger?: Logger;
}

/** A running server. */
export interface RunningServer {
  /** The base URL devices connect to ("http://host:port"). */
  url: string;
  /** The bound port. */
  port: number;
  /** The effective configuration. */
  config: Config;
  /** The gateway, for inspection (stream counts, metrics). */
  gateway: GatewayCore;
  /** Drains streams, finishes commits, closes the store. Safe to call twice. */
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

/**
 * Starts every service in one process on the embedded engines. Services still talk through
 * their typed RPC interfaces (Connect's in-memory router transport), so this is the same code
 * path as the distributed deployment, minus the network.
 */
export async function startServer(options: ServerOptions = {}): Promise<RunningServer> {
  const { logger, ...input } = options;
  const config = loadConfig(input);
  const log = logger ?? createLogger({ level: config.logLevel, base: { role: "all" } });
  await mkdir(config.dataDir, { recursive: true });
  const store = await openLmdbStore({ path: join(config.dataDir, "store") });
  const tokens = new Tokens(await tokenKey(config), config.tokenTtlSeconds);
  const bus = new InProcessBus(log);
  const delivery = new DirectDelivery();

  const accounts = new Accounts(store.accounts, tokens, bus, log, {
    maxDevicesPerUser: config.limits.maxDevicesPerUser,
    linkCodeTtlSeconds: config.linkCodeTtlSeconds,
  });
  const sequencer = new Sequencer(store.conversations, bus, log, {
    shardCount: config.shardCount,
    limits: config.limits,
  });
  const presence = new Presence(new InMemoryRouteStore(), bus, log, { sweepIntervalMs: 5000 });
  const providers = await buildPushProviders(config.push, log);
  // The notifier needs the directory client, which needs the router that serves the notifier.
  let notifier: Notifier | undefined;

  const internal = createRouterTransport(
    (router) => {
      router.service(SequencerService, sequencerService(sequencer));
      router.service(DirectoryService, directoryService(accounts));
      router.service(PresenceService, presenceService(presence));
      router.service(
        AccountService,
        accountService(accounts, tokens, { allowHttpPushEndpoints: config.push.allowHttpEndpoints }),
      );
      router.service(NotificationService, notificationService({ notify: (w) => notifier!.notify(w) }));
    },
    { router: { interceptors: [errorBoundary(log)] } },
  );
  const sequencerClient = createClient(SequencerService, internal);
  const directoryClient = createClient(DirectoryService, internal);
  const presenceClient = createClient(PresenceService, internal);
  const accountsClient = createClient(AccountService, internal);

  notifier = new Notifier(directoryClient, providers, log, {
    perDevicePerMinute: config.push.perDevicePerMinute,
    perDeviceBurst: config.push.perDeviceBurst,
  });
  const fanout = new Fanout(bus, delivery, sequencerClient, presenceClient, log, {
    directory: directoryClient,
    notification: createClient(NotificationService, internal),
  });
  fanout.start();
  const gateway = new GatewayCore({
    id: "gw_local",
    sequencer: sequencerClient,
    directory: directoryClient,
    presence: presenceClient,
    delivery,
    bus,
    tokens,
    limits: config.limits,
    log,
  });

  // Idempotency records are needed only for as long as a client may retry.
  const expiry = setInterval(
    () => {
      store.conversations
        .expireIdempotency(Date.now() - config.idempotencyRetentionMs)
        .catch((err: unknown) => log.warn({ err }, "idempotency expiry failed"));
    },
    60 * 60 * 1000,
  );
  expiry.unref();

  const handler = connectNodeAdapter({
    routes: (router) => {
      router.service(GatewayService, gatewayService(gateway));
      router.service(
        ConversationService,
        conversationService(gateway, directoryClient, config.limits.maxGroupSize),
      );
      router.service(AccountService, accountForwarder(accountsClient));
    },
    // A frame carries one payload plus ids; anything much larger is refused before parsing.
    readMaxBytes: config.limits.maxPayloadBytes + 16 * 1024,
    // The boundary is outermost so that it also sees what authentication throws.
    interceptors: [errorBoundary(log), authInterceptor(gateway)],
    fallback: (req, res) => {
      if (req.url === "/healthz" || req.url === "/readyz") {
        res.writeHead(200, { "content-type": "text/plain" });
        res.end("ok\n");
        return;
      }
      res.writeHead(404);
      res.end();
    },
  });
  const server = http2.createServer({}, handler);
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(config.port, config.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const url = `http://${config.host.includes(":") ? `[${config.host}]` : config.host}:${port}`;
  log.info({ url, dataDir: config.dataDir, shards: config.shardCount }, "switchboard started");

  let closing: Promise<void> | undefined;
  const close = () => {
    closing ??= (async () => {
      log.info("shutting down");
      clearInterval(expiry);
      await gateway.drain();
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      // Streams ended above; give their last frames a moment, then close the connections.
      for (const s of sessions) s.close();
      const force = setTimeout(() => {
        for (const s of sessions) s.destroy();
      }, 2000);
      await closed;
      clearTimeout(force);
      fanout.stop();
      await notifier?.close();
      presence.close();
      await sequencer.close();
      await bus.close();
      await store.close();
      log.info("stopped");
      log.flush();
    })();
    return closing;
  };
  return { url, port, config, gateway, close };
}
