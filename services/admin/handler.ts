import { performance } from "node:perf_hooks";
import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  type AdminService,
  GatewayStatsSchema,
  GetStatsResponseSchema,
  type Invite,
  InviteSchema,
  NotifierStatsSchema,
  ProcessStatsSchema,
  SequencerStatsSchema,
} from "../../gen/switchboard/internal/v1/admin_pb.js";
import { type DeviceRoute, DeviceRouteSchema } from "../../gen/switchboard/internal/v1/presence_pb.js";
import type { Device, User } from "../../gen/switchboard/v1/accounts_pb.js";
import { type Accounts, INVITE_LIMITS } from "../accounts/index.js";
import type { Role } from "../common/config.js";
import { ConflictError, InvalidInputError, NotFoundError } from "../common/errors.js";
import type { Logger } from "../common/log.js";
import { requireId, requireUsername } from "../common/validate.js";
import type { Presence } from "../presence/index.js";
import type { Sequencer } from "../sequencer/index.js";
import type { InviteRecord } from "../store/types.js";
import { audited } from "./audit.js";
import { userActions } from "./users.js";

/**
 * What the admin service reads of a gateway and asks of it (GatewayCore has this shape). Declared
 * here so the admin service depends on what it uses, not on the gateway's internals.
 */
export interface AdminGateway {
  /** The gateway's instance id. */
  readonly id: string;
  /** Device streams open on it. */
  readonly streamCount: number;
  /** Devices with at least one open stream. */
  readonly deviceCount: number;
  /** True once it refuses new streams (drained by an operator, or shutting down). */
  readonly isDraining: boolean;
  /** Its counters (GatewayMetrics), reported by name. */
  readonly metrics: object;
  /** Refuses new streams and closes every open one (devices reconnect elsewhere); returns how many. */
  closeStreams(): number;
  /** The cursor acknowledgements not yet sent to the sequencer. */
  readonly cursors: { flush(): Promise<void> };
}

/** What the admin service reads of the push queue (Notifier has this shape). */
export interface AdminNotifier {
  /** Wake-ups waiting or in flight. */
  readonly size: number;
  /** Its counters (NotifierMetrics), reported by name. */
  readonly metrics: object;
}

/**
 * What the admin service can see of its process: the managers of the roles the process runs,
 * each unset when it does not run that role. Every answer is about this process only.
 */
export interface AdminDeps {
  /** This process's instance id. */
  instanceId: string;
  /** The roles this process runs. */
  roles: readonly Role[];
  /** When the process started, in milliseconds since the Unix epoch. */
  startedAtMs: number;
  /** The gateway (gateway role). */
  gateway?: AdminGateway | undefined;
  /** Users and devices (accounts role). */
  accounts?: Accounts | undefined;
  /** Routes and online state (presence role). */
  presence?: Presence | undefined;
  /** This replica's shards and outbox (sequencer role). */
  sequencer?: Sequencer | undefined;
  /** The push queue (notification role). */
  notifier?: AdminNotifier | undefined;
  /** Turns the process's readiness false (the gateway was drained); called by DrainGateway. */
  markNotReady?: () => void;
  /** The clock, in milliseconds since the Unix epoch. */
  now?: () => number;
  /** Where audit lines go (audit.ts); none in tests that do not read them. */
  log?: Logger | undefined;
}

const USER_ID = /^u_[0-9a-z]{26}$/;
const INVITE_ID = /^iv_[0-9a-z]{26}$/;

function inviteToWire(i: InviteRecord): Invite {
  return create(InviteSchema, {
    inviteId: i.id,
    usesLeft: i.usesLeft,
    maxUses: i.maxUses,
    createdAtMs: BigInt(i.createdAtMs),
    expiresAtMs: BigInt(i.expiresAtMs),
    revokedAtMs: BigInt(i.revokedAtMs),
    note: i.note,
  });
}

/** A counters object (GatewayMetrics, OutboxMetrics, ...) as a map of its numeric fields. */
function counters(metrics: object): Record<string, bigint> {
  const out: Record<string, bigint> = {};
  for (const [name, value] of Object.entries(metrics)) {
    if (typeof value === "number" && Number.isFinite(value) && value >= 0)
      out[name] = BigInt(Math.trunc(value));
  }
  return out;
}

/** FailedPrecondition naming the role that can answer. */
function needsRole(what: string, role: Role, deps: AdminDeps): ConflictError {
  return new ConflictError(
    `${what} needs the ${role} role; this process (${deps.instanceId}) runs ${deps.roles.join(", ") || "no role"}: ask a ${role} process`,
  );
}

/**
 * The admin service's RPC face (AdminService), served by every process; every call but
 * GetStats leaves an audit line (audit.ts).
 */
export function adminService(deps: AdminDeps): ServiceImpl<typeof AdminService> {
  return audited(adminCalls(deps), deps.log);
}

function adminCalls(deps: AdminDeps): ServiceImpl<typeof AdminService> {
  const now = deps.now ?? Date.now;
  return {
    ...userActions(deps),
    async getStats() {
      const memory = process.memoryUsage();
      const stats = create(GetStatsResponseSchema, {
        instanceId: deps.instanceId,
        roles: [...deps.roles],
        uptimeMs: BigInt(Math.max(0, now() - deps.startedAtMs)),
        process: create(ProcessStatsSchema, {
          rssBytes: BigInt(memory.rss),
          heapUsedBytes: BigInt(memory.heapUsed),
          eventLoopUtilization: performance.eventLoopUtilization().utilization,
          nodeVersion: process.version,
        }),
      });
      if (deps.gateway) {
        stats.gateway = create(GatewayStatsSchema, {
          streams: deps.gateway.streamCount,
          devices: deps.gateway.deviceCount,
          draining: deps.gateway.isDraining,
          counters: counters(deps.gateway.metrics),
        });
      }
      if (deps.sequencer) {
        stats.sequencer = create(SequencerStatsSchema, {
          ownedShards: deps.sequencer.ownedShards,
          outboxSize: deps.sequencer.outbox.size,
          outboxCounters: counters(deps.sequencer.outbox.metrics),
        });
      }
      if (deps.notifier) {
        stats.notifier = create(NotifierStatsSchema, {
          pending: deps.notifier.size,
          counters: counters(deps.notifier.metrics),
        });
      }
      return stats;
    },

    async lookupUser(req) {
      const query = req.user.trim();
      if (query === "") throw new InvalidInputError("user: a username or a user id is required");
      const { accounts, presence } = deps;
      if (!accounts && !presence) {
        throw new ConflictError(
          `LookupUser needs the accounts role (user and devices) or the presence role (routes); this process (${deps.instanceId}) runs ${deps.roles.join(", ") || "no role"}: ask an accounts or a presence process`,
        );
      }
      const isId = USER_ID.test(query);
      let userId = isId ? query : undefined;
      let user: User | undefined;
      let devices: Device[] = [];
      if (accounts) {
        if (!isId) requireUsername(query);
        // A username may have the shape of an id; the id wins.
        const found = await accounts.lookupUsers(isId ? [query] : [], [query]);
        user = found.find((u) => u.userId === query) ?? found[0];
        if (user === undefined) throw new NotFoundError(`no user "${query}"`);
        userId = user.userId;
        devices = await accounts.listDevices(user.userId, true);
      }
      if (presence && userId === undefined) {
        throw new ConflictError(
          `this process (${deps.instanceId}) runs presence without accounts and knows users by id only: pass the user id (u_...), or ask an accounts process to resolve "${query}"`,
        );
      }
      const missingRoles: string[] = [];
      if (!accounts) missingRoles.push("accounts");
      let routes: DeviceRoute[] = [];
      let online = false;
      let lastSeenMs = 0n;
      if (presence && userId !== undefined) {
        requireId("user", userId, "u");
        const [live, states] = await Promise.all([presence.lookup([userId]), presence.get([userId])]);
        routes = live.map((r) => create(DeviceRouteSchema, r));
        online = states[0]?.online ?? live.length > 0;
        lastSeenMs = BigInt(states[0]?.lastSeenMs ?? 0);
      } else {
        missingRoles.push("presence");
      }
      return {
        ...(user !== undefined && { user }),
        devices,
        presenceKnown: presence !== undefined,
        routes,
        online,
        lastSeenMs,
        missingRoles,
        instanceId: deps.instanceId,
      };
    },

    async revokeDevice(req) {
      const deviceId = requireId("device_id", req.deviceId, "dv");
      const { accounts } = deps;
      if (!accounts) throw needsRole("RevokeDevice", "accounts", deps);
      const [status] = await accounts.getDevices([deviceId]);
      if (status === undefined) throw new NotFoundError(`no device ${deviceId}`);
      // Not status.active: a suspended user's devices are inactive without being revoked.
      const before = (await accounts.listDevices(status.userId, true)).find((d) => d.deviceId === deviceId);
      // Revoking again is harmless: the store keeps the first time, and the broadcast closes any
      // stream a gateway still holds (say, one that missed the first broadcast).
      const device = await accounts.revokeDevice(status.userId, deviceId);
      return { device, alreadyRevoked: before !== undefined && before.revokedAtMs !== 0n };
    },

    async drainGateway() {
      const { gateway } = deps;
      if (!gateway) throw needsRole("DrainGateway", "gateway", deps);
      const alreadyDraining = gateway.isDraining;
      // Not ready first, so a load balancer stops sending devices here before they reconnect.
      deps.markNotReady?.();
      const closedStreams = gateway.closeStreams();
      // Cursors acknowledged by the closed streams reach the sequencer now, not at shutdown.
      await gateway.cursors.flush();
      return { instanceId: gateway.id, closedStreams, alreadyDraining };
    },

    async createInvite(req) {
      const { accounts } = deps;
      if (!accounts) throw needsRole("CreateInvite", "accounts", deps);
      if (req.ttlMs > BigInt(INVITE_LIMITS.maxTtlMs)) {
        throw new InvalidInputError("ttl: 1 second to 365 days");
      }
      const { invite, token } = await accounts.invites.create({
        ...(req.uses !== 0 && { uses: req.uses }),
        ...(req.ttlMs !== 0n && { ttlMs: Number(req.ttlMs) }),
        note: req.note,
      });
      return { invite: inviteToWire(invite), token, registrationMode: accounts.registrationMode };
    },

    async listInvites() {
      const { accounts } = deps;
      if (!accounts) throw needsRole("ListInvites", "accounts", deps);
      const { invites, truncated } = await accounts.invites.list();
      return { invites: invites.map(inviteToWire), truncated, registrationMode: accounts.registrationMode };
    },

    async revokeInvite(req) {
      const inviteId = req.inviteId.trim();
      if (!INVITE_ID.test(inviteId)) {
        throw new InvalidInputError('invite_id: expected an invite id ("iv_" and 26 characters)');
      }
      const { accounts } = deps;
      if (!accounts) throw needsRole("RevokeInvite", "accounts", deps);
      const { invite, alreadyRevoked } = await accounts.invites.revoke(inviteId);
      return { invite: inviteToWire(invite), alreadyRevoked };
    },
  };
}
