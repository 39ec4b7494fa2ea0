import { createClient } from "@connectrpc/connect";
import { DirectoryService } from "../../gen/switchboard/internal/v1/directory_pb.js";
import { NotificationService } from "../../gen/switchboard/internal/v1/notification_pb.js";
import { PresenceService } from "../../gen/switchboard/internal/v1/presence_pb.js";
import { SequencerService } from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import { AccountService } from "../../gen/switchboard/v1/accounts_pb.js";
import { KeyService } from "../../gen/switchboard/v1/keys_pb.js";
import {
  Accounts,
  accountService,
  DEFAULT_KEYS_OPTIONS,
  directoryService,
  Keys,
  keyService,
  perPeriod,
  UserData,
} from "../accounts/index.js";
import type { DeliveryChannel, EventBus } from "../bus/types.js";
import type { Tokens } from "../common/auth.js";
import type { Config, Role } from "../common/config.js";
import type { Logger } from "../common/log.js";
import type { RateLimiter } from "../common/rate-limit/types.js";
import type { Refusals } from "../common/refusals.js";
import { Fanout } from "../fanout/index.js";
import { GatewayCore } from "../gateway/index.js";
import { AttachmentRetention, deviceAuthenticator, type StartedMedia, startMedia } from "../media/index.js";
import { Notifier, notificationService } from "../notification/index.js";
import { Presence, presenceService } from "../presence/index.js";
import {
  DeviceDeliveryBound,
  ExpirySweep,
  holdsConversation,
  ReceivedBounds,
  Sequencer,
  type SequencerClient,
  ShardOwnership,
  sequencerService,
  shardedSequencerClient,
  shardsOfReplica,
} from "../sequencer/index.js";
import type { StoreEngine } from "../store/types.js";
import { openMedia, openPushProviders, openRateLimiter, openRouteStore } from "./engines.js";
import { type Closers, type Readiness, storeWriteCheck } from "./lifecycle.js";
import type { ServiceClients } from "./local-transport.js";

/**
 * The services of each role, built on what the process has opened. Each role registers the
 * services it serves with `clients` and reaches the others through it, in this process or not.
 */

/** What every role is built on. */
export interface RoleContext {
  /** The effective configuration. */
  config: Config;
  /** The roles this process runs. */
  roles: ReadonlySet<Role>;
  log: Logger;
  bus: EventBus;
  delivery: DeliveryChannel;
  /** The store, opened when the process runs the accounts or the sequencer role. */
  store: StoreEngine | undefined;
  /** The access token key, when a role of this process needs tokens. */
  key: Uint8Array | undefined;
  /** Issues and checks access tokens, when a role of this process needs them. */
  tokens: Tokens | undefined;
  closers: Closers;
  readiness: Readiness;
  clients: ServiceClients;
  /** The process's refusal counter and log (used only on calls). */
  refusals: Refusals;
}

/** This process's sequencer replica, serving its own shards (sequencer role). */
export function startSequencerRole(ctx: RoleContext): Sequencer {
  const { config, store, log, closers } = ctx;
  const mesh = config.mesh;
  const owned = shardsOfReplica(mesh.sequencerOrdinal, mesh.sequencerReplicas, config.shardCount);
  // Failover needs a store every replica shares (ScyllaDB's leases) and another replica to move to.
  const leases = mesh.sequencerReplicas > 1 && mesh.shardLeaseMs > 0 ? store!.leases : undefined;
  // Retention after delivery: the sweep finds what every active device received (it reads the
  // device lists; the hot path never does), and the sequencer's reads serve that as expired.
  const received = new ReceivedBounds();
  const seq = new Sequencer(store!.conversations, ctx.bus, log, {
    shardCount: config.shardCount,
    ownedShards: owned,
    leased: leases !== undefined,
    limits: config.limits,
    cacheBytes: config.sequencerCacheBytes,
    maxStatesPerShard: config.sequencerCacheConversations,
    disappearingSeconds: config.retention.disappearingSeconds,
    retentionMs: config.retention.maxAgeMs,
    afterDeliveryMs: config.retention.afterDeliveryMs,
    receivedBounds: received,
  });
  closers.add("sequencer", () => seq.close());
  // Entries past their expiry are served as expired at once; this frees their space.
  const sweep = new ExpirySweep(store!.conversations, log, {
    intervalMs: config.retention.expirySweepMs,
    batch: config.retention.expirySweepBatch,
    retentionMs: config.retention.maxAgeMs,
    afterDeliveryMs: config.retention.afterDeliveryMs,
    // Each replica of a shared store sweeps the conversations of the shards it holds.
    delivery: new DeviceDeliveryBound(store!.conversations, store!.accounts, received, (id) =>
      holdsConversation(seq, id, config.shardCount),
    ),
  });
  sweep.start();
  closers.add("expiry sweep", () => sweep.stop());
  if (leases !== undefined) {
    const ownership = new ShardOwnership(leases, seq.replicaShards, log, {
      ordinal: mesh.sequencerOrdinal,
      replicas: mesh.sequencerReplicas,
      leaseMs: mesh.shardLeaseMs,
    });
    ownership.start();
    // Closers run last-added first: the shards are handed on (drained) before the sequencer
    // closes, so a rolling restart moves them in a tick rather than a lease term.
    closers.add("shard leases", () => ownership.stop(mesh.shardLeaseMs));
  }
  // Not ready while the store refuses writes (a full disk); reads and streams go on meanwhile.
  ctx.readiness.add(storeWriteCheck(store!));
  ctx.clients.register(SequencerService, sequencerService(seq));
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
    {
      ordinal: mesh.sequencerOrdinal,
      replicas: mesh.sequencerReplicas,
      shards: owned,
      failover: leases === undefined ? "off" : `leases of ${mesh.shardLeaseMs} ms`,
    },
    leases === undefined ? "sequencer shards" : "sequencer home shards (served once their leases are taken)",
  );
  return seq;
}

/** Sequencer replicas: this process's own shards locally, the others over gRPC. */
export function sequencerClient(ctx: RoleContext): SequencerClient {
  const { config, roles, clients } = ctx;
  const mesh = config.mesh;
  if (mesh.sequencerReplicas === 1 && roles.has("sequencer"))
    return clients.clientOf(SequencerService, true, undefined);
  const replicas = mesh.urls.sequencers.map((url, ordinal) =>
    roles.has("sequencer") && ordinal === mesh.sequencerOrdinal
      ? clients.clientOf(SequencerService, true, undefined)
      : createClient(SequencerService, clients.remote(url)),
  );
  // Every process of a deployment has the same store setting (the chart and the launcher give
  // it to all), so routers and sequencer replicas agree on whether shards can move.
  const failover = mesh.store === "scylla" && mesh.shardLeaseMs > 0;
  return shardedSequencerClient(replicas, config.shardCount, { failover });
}

/** The accounts role's directory client: in this process or at the accounts address. */
export function directoryClient(ctx: RoleContext) {
  return ctx.clients.clientOf(DirectoryService, ctx.roles.has("accounts"), ctx.config.mesh.urls.accounts);
}

/** The presence role's client: in this process or at the presence address. */
export function presenceClient(ctx: RoleContext) {
  return ctx.clients.clientOf(PresenceService, ctx.roles.has("presence"), ctx.config.mesh.urls.presence);
}

/** Users, devices and the key directory with their abuse controls (accounts role). */
export async function startAccountsRole(ctx: RoleContext): Promise<Accounts> {
  const { config, store, log, closers, bus, clients, refusals } = ctx;
  const tokens = ctx.tokens!;
  // The sequencer role, when this process runs it too, has added the store's check already.
  if (!ctx.roles.has("sequencer")) ctx.readiness.add(storeWriteCheck(store!));
  // The abuse controls' buckets: in this process, or on Redis shared by every accounts process.
  const accountLimiter = await openRateLimiter(config, log);
  closers.add("accounts rate limiter", () => accountLimiter.close());
  const al = config.accountLimits;
  const rate = (limit: ReturnType<typeof perPeriod>) =>
    limit === undefined ? undefined : { limiter: accountLimiter, limit };
  const accounts = new Accounts(store!.accounts, tokens, bus, log, {
    maxDevicesPerUser: config.limits.maxDevicesPerUser,
    linkCodeTtlSeconds: config.linkCodeTtlSeconds,
    refusals,
    abuse: {
      registerPerAddress: rate(perPeriod("register-address", al.registrationsPerAddressPerHour, 3600)),
      registerServerWide: rate(perPeriod("register-all", al.registrationsPerHour, 3600)),
      lookups: rate(perPeriod("user-lookups", al.lookupsPerMinute, 60)),
      reports: rate(perPeriod("user-reports", al.reportsPerDay, 86_400)),
      blockChanges: rate(perPeriod("user-block-changes", al.blockChangesPerHour, 3600)),
      reservedNames: al.reservedUsernames,
      registration: al.registration,
    },
    privacyDefaults: config.privacyDefaults,
  });
  clients.register(DirectoryService, directoryService(accounts));
  const bundleRate = rate(perPeriod("key-bundles", al.bundleFetchesPerMinute, 60));
  const oneTimePrekeyRate = rate(perPeriod("one-time-prekeys", al.oneTimePrekeysPerPairPerDay, 86_400));
  const keys = new Keys(store!.keys, store!.accounts, bus, log, {
    ...DEFAULT_KEYS_OPTIONS,
    refusals,
    ...(bundleRate && { bundleRate }),
    ...(oneTimePrekeyRate && { oneTimePrekeyRate }),
  });
  // DirectoryService.GetDeviceRegistrations answers from the same key directory.
  accounts.keyDirectory = keys;
  // A device being linked is served no history from before its link: every sequencer
  // replica records where it starts before the device exists.
  const linkRecorder = sequencerClient(ctx);
  accounts.deviceLinks = async (userId, deviceId) => {
    await linkRecorder.recordDeviceLink({ userId, deviceId });
  };
  // Operators' deletion and export of a user: the user's place in conversations through the
  // sequencer service, whichever process holds it.
  accounts.userData = new UserData(
    (userId, deviceId) => accounts.revokeDevice(userId, deviceId),
    store!.accounts,
    store!.keys,
    linkRecorder,
    log,
  );
  const stopKeyWatch = keys.watchRevocations();
  closers.add("key revocations", () => stopKeyWatch());
  clients.register(KeyService, keyService(keys, accounts, tokens));
  clients.register(
    AccountService,
    accountService(accounts, tokens, {
      allowHttpPushEndpoints: config.push.allowHttpEndpoints,
      featureFlags: config.featureFlags,
    }),
  );
  return accounts;
}

/** Device routes and online state (presence role). */
export async function startPresenceRole(ctx: RoleContext): Promise<Presence> {
  const { config, log, closers } = ctx;
  const routeStore = await openRouteStore(config, log);
  closers.add("route store", () => routeStore.close());
  ctx.readiness.add(routeStore.problem);
  const p = new Presence(routeStore.store, ctx.bus, log, { sweepIntervalMs: 5000 });
  closers.add("presence", () => p.close());
  ctx.clients.register(PresenceService, presenceService(p));
  return p;
}

/** The push queue and its providers (notification role). */
export async function startNotificationRole(ctx: RoleContext): Promise<Notifier> {
  const { config, log } = ctx;
  const providers = await openPushProviders(config.push, log);
  const n = new Notifier(directoryClient(ctx), providers, log, {
    perDevicePerMinute: config.push.perDevicePerMinute,
    perDeviceBurst: config.push.perDeviceBurst,
  });
  ctx.closers.add("notifier", () => n.close());
  ctx.clients.register(NotificationService, notificationService(n));
  return n;
}

/** Delivery of appended messages to the recipients' gateways and push (fanout role). */
export function startFanoutRole(ctx: RoleContext): void {
  const { roles, config } = ctx;
  const fanout = new Fanout(ctx.bus, ctx.delivery, sequencerClient(ctx), presenceClient(ctx), ctx.log, {
    directory: directoryClient(ctx),
    notification: ctx.clients.clientOf(
      NotificationService,
      roles.has("notification"),
      config.mesh.urls.notification,
    ),
  });
  fanout.start();
  ctx.closers.add("fanout", () => fanout.stop());
}

/** The device-facing gateway and its rate limiter (gateway role). */
export async function startGatewayRole(
  ctx: RoleContext,
): Promise<{ gateway: GatewayCore; rateLimiter: RateLimiter }> {
  const { config, log } = ctx;
  const limiter = await openRateLimiter(config, log);
  ctx.closers.add("rate limiter", () => limiter.close());
  const gateway = new GatewayCore({
    id: config.mesh.instanceId,
    sequencer: sequencerClient(ctx),
    directory: directoryClient(ctx),
    presence: presenceClient(ctx),
    delivery: ctx.delivery,
    // Calls ring callees' devices without a stream by push, where a notification service is.
    ...((ctx.roles.has("notification") || config.mesh.urls.notification !== undefined) && {
      notification: ctx.clients.clientOf(
        NotificationService,
        ctx.roles.has("notification"),
        config.mesh.urls.notification,
      ),
    }),
    bus: ctx.bus,
    tokens: ctx.tokens!,
    limits: config.limits,
    streamUrl: config.streamUrl,
    callSfuUrl: config.calls.sfuUrl,
    callSfuSecret: config.calls.sfuSecret,
    rateLimiter: limiter,
    log,
  });
  return { gateway, rateLimiter: limiter };
}

/** Attachments: the media service with its upload quota (media role). */
export async function startMediaRole(
  ctx: RoleContext,
  gateway: GatewayCore | undefined,
): Promise<StartedMedia> {
  const { config, log, closers } = ctx;
  const gw = gateway;
  // The upload quota's buckets: in this process, or on Redis shared by every media process.
  const mediaLimiter = await openRateLimiter(config, log);
  closers.add("media rate limiter", () => mediaLimiter.close());
  const sequencer = sequencerClient(ctx);
  const started = await startMedia({
    config: config.media,
    engine: await openMedia(config, ctx.key!, log),
    members: sequencer,
    authenticate: gw ? (h) => gw.authenticate(h) : deviceAuthenticator(ctx.tokens!, directoryClient(ctx)),
    log,
    quota: { limiter: mediaLimiter, refusals: ctx.refusals },
    avatars: { directory: directoryClient(ctx), contacts: sequencer },
  });
  closers.add("media", () => started.close());
  // Attachments go with the entries either retention deletes (services/media/retention.ts).
  const { maxAgeMs, afterDeliveryMs, clockMarginMs } = config.retention;
  if (maxAgeMs > 0 || afterDeliveryMs > 0) {
    const horizons = sequencerClient(ctx);
    const retention = new AttachmentRetention(
      started.media.store,
      // A deadline: a sweep waiting for ever would hold every later one (they join it).
      async (conversationId) =>
        Number((await horizons.getRetentionHorizon({ conversationId }, { timeoutMs: 10_000 })).horizonMs),
      log,
      { marginMs: clockMarginMs },
    );
    retention.start(config.media.sweepIntervalMs);
    // Closers run last-added first: this stops before the media service closes its store.
    closers.add("attachment retention", () => retention.stop());
  }
  return started;
}
