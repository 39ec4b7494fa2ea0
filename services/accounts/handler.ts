import { create } from "@bufbuild/protobuf";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import {
  DevicePushTargetSchema,
  DeviceStatusSchema,
  type DirectoryService,
  UserBlocksSchema,
  UserDeviceRegistrationsSchema,
  UserDevicesSchema,
  UserPrivacySchema,
} from "../../gen/switchboard/internal/v1/directory_pb.js";
import {
  type AccountService,
  BlockedUserSchema,
  FeatureFlagAssignmentSchema,
} from "../../gen/switchboard/v1/accounts_pb.js";
import type { Principal, Tokens } from "../common/auth.js";
import type { FeatureFlagsConfig } from "../common/config.js";
import { InvalidInputError, UnauthenticatedError } from "../common/errors.js";
import { assignFlags } from "../common/feature-flags.js";
import { countGuardrail } from "../common/guardrails.js";
import { requireId, requireIds, requireText, requireUsername } from "../common/validate.js";
import { targetFromRequest, targetToWire } from "../notification/index.js";
import type { Accounts } from "./accounts.js";
import { addressKey, PEER_HEADER, UNKNOWN_PEER } from "./peer.js";
import { privacyChangesFromWire, privacyToWire } from "./privacy.js";

/** The public AccountService, served by the accounts role (gateways forward to it). */
export function accountService(
  accounts: Accounts,
  tokens: Tokens,
  options: { allowHttpPushEndpoints: boolean; featureFlags?: FeatureFlagsConfig },
): ServiceImpl<typeof AccountService> {
  async function principal(ctx: HandlerContext): Promise<Principal> {
    const p = await tokens.verifyHeader(ctx.requestHeader.get("authorization"));
    const [device] = await accounts.getDevices([p.deviceId]);
    if (device === undefined || !device.active) throw new UnauthenticatedError("device has been revoked");
    return p;
  }
  return {
    async register(req, ctx) {
      const username = requireUsername(req.username);
      // A trailing or doubled dot reads as punctuation around someone else's name.
      if (/^\.|\.$|\.\./.test(username)) {
        throw new InvalidInputError("username: may not start or end with a dot, or hold two in a row");
      }
      const { user, credential } = await accounts.register(
        username,
        requireText("display_name", req.displayName, 0, 64),
        requireText("device_name", req.deviceName, 0, 64),
        // Set by the edge from the TCP peer (services/accounts/peer.ts), never by the client.
        addressKey(ctx.requestHeader.get(PEER_HEADER) ?? UNKNOWN_PEER),
        // Checked by shape and hash only in the invite mode; any other token is refused alike.
        req.inviteToken,
      );
      return { user, credential };
    },
    async createToken(req) {
      requireId("device_id", req.deviceId, "dv");
      if (req.deviceSecret.length === 0 || req.deviceSecret.length > 128) {
        throw new InvalidInputError("device_secret: required, at most 128 characters");
      }
      const { token, expiresAtMs } = await accounts.createToken(req.deviceId, req.deviceSecret);
      return { accessToken: token, expiresAtMs: BigInt(expiresAtMs) };
    },
    async createLinkCode(_req, ctx) {
      const p = await principal(ctx);
      const { code, expiresAtMs } = await accounts.createLinkCode(p.userId, p.deviceId);
      return { code, expiresAtMs: BigInt(expiresAtMs) };
    },
    async linkDevice(req) {
      if (!/^[A-Za-z0-9_-]{16,64}$/.test(req.code)) throw new InvalidInputError("code: not a link code");
      const { user, credential } = await accounts.linkDevice(
        req.code,
        requireText("device_name", req.deviceName, 0, 64),
      );
      return { user, credential };
    },
    async listDevices(req, ctx) {
      const p = await principal(ctx);
      return { devices: await accounts.listDevices(p.userId, req.includeRevoked) };
    },
    async revokeDevice(req, ctx) {
      const p = await principal(ctx);
      return { device: await accounts.revokeDevice(p.userId, requireId("device_id", req.deviceId, "dv")) };
    },
    async lookupUsers(req, ctx) {
      const p = await principal(ctx);
      if (req.userIds.length + req.usernames.length > 256) {
        throw new InvalidInputError("at most 256 ids and usernames in all");
      }
      const ids = requireIds("user_ids", req.userIds, "u", 256);
      for (const name of req.usernames) requireUsername(name);
      await accounts.limitLookups(p.userId, ids.length + req.usernames.length);
      return { users: await accounts.lookupUsers(ids, req.usernames) };
    },
    async setPushTarget(req, ctx) {
      const p = await principal(ctx);
      await accounts.setPushTarget(
        p.userId,
        p.deviceId,
        targetFromRequest(req, options.allowHttpPushEndpoints),
      );
      return {};
    },
    async removePushTarget(_req, ctx) {
      const p = await principal(ctx);
      await accounts.removePushTarget(p.userId, p.deviceId);
      return {};
    },
    async getPrivacy(_req, ctx) {
      const p = await principal(ctx);
      return { settings: privacyToWire(await accounts.privacy.get(p.userId)) };
    },
    async setPrivacy(req, ctx) {
      const p = await principal(ctx);
      const changes = privacyChangesFromWire(req.settings);
      return { settings: privacyToWire(await accounts.privacy.set(p.userId, changes)) };
    },
    async setProfile(req, ctx) {
      const p = await principal(ctx);
      const name = requireText("display_name", req.displayName, 1, 64);
      return { user: await accounts.setDisplayName(p.userId, name) };
    },
    async blockUser(req, ctx) {
      const p = await principal(ctx);
      const newlyBlocked = await accounts.blocks.block(p.userId, requireId("user_id", req.userId, "u"));
      if (newlyBlocked) countGuardrail("block", p.userId);
      return { newlyBlocked };
    },
    async unblockUser(req, ctx) {
      const p = await principal(ctx);
      return { wasBlocked: await accounts.blocks.unblock(p.userId, requireId("user_id", req.userId, "u")) };
    },
    async listBlockedUsers(_req, ctx) {
      const p = await principal(ctx);
      const blocks = await accounts.blocks.list(p.userId);
      return {
        blocked: blocks.map((b) =>
          create(BlockedUserSchema, { userId: b.blockedUserId, blockedAtMs: BigInt(b.blockedAtMs) }),
        ),
      };
    },
    async reportUser(req, ctx) {
      const p = await principal(ctx);
      const reportedUserId = requireId("reported_user_id", req.reportedUserId, "u");
      const conversationId =
        req.conversationId === "" ? "" : requireId("conversation_id", req.conversationId, "conversation");
      const messages = req.messages.map((m, i) => ({
        conversationId: requireId(`messages[${i}].conversation_id`, m.conversationId, "conversation"),
        seq: Number(m.seq),
        senderUserId: requireId(`messages[${i}].sender_user_id`, m.senderUserId, "u"),
        sentAtMs: Number(m.sentAtMs),
        text: m.text,
      }));
      const reportId = await accounts.reports.report(p.userId, {
        reportedUserId,
        reason: req.reason,
        conversationId,
        targetSeq: Number(req.targetSeq),
        messages,
      });
      countGuardrail("report", p.userId);
      return { reportId };
    },
    async getFeatureFlags(_req, ctx) {
      const p = await principal(ctx);
      const config = options.featureFlags ?? { flags: [], cacheSeconds: 0 };
      return {
        assignments: assignFlags(config.flags, p.userId).map((a) => create(FeatureFlagAssignmentSchema, a)),
        cacheSeconds: config.cacheSeconds,
      };
    },
  };
}

/** The accounts role's internal face. */
export function directoryService(accounts: Accounts): ServiceImpl<typeof DirectoryService> {
  return {
    async getDevices(req) {
      const devices = await accounts.getDevices(req.deviceIds.slice(0, 1000));
      return { devices: devices.map((d) => create(DeviceStatusSchema, d)) };
    },
    async getUserDevices(req) {
      const users = await accounts.getUserDevices(req.userIds.slice(0, 1024));
      return { users: users.map((u) => create(UserDevicesSchema, u)) };
    },
    async getDeviceRegistrations(req) {
      const users = await accounts.getDeviceRegistrations(req.userIds.slice(0, 1024));
      return { users: users.map((u) => create(UserDeviceRegistrationsSchema, u)) };
    },
    async checkUsers(req) {
      return { existingUserIds: await accounts.checkUsers(req.userIds.slice(0, 1024)) };
    },
    async getUserPrivacy(req) {
      const users = await accounts.privacy.ofUsers(req.userIds.slice(0, 1024));
      return {
        users: users.map((u) =>
          create(UserPrivacySchema, { userId: u.userId, settings: privacyToWire(u.settings) }),
        ),
      };
    },
    async getUserAvatar(req) {
      const avatar = await accounts.avatars.of(req.userId);
      return avatar === undefined
        ? {}
        : { avatar: { objectId: avatar.objectId, lengthBytes: BigInt(avatar.lengthBytes) } };
    },
    async setUserAvatar(req) {
      const next = req.avatar;
      const previous = await accounts.avatars.swap(
        req.userId,
        next === undefined
          ? undefined
          : { objectId: next.objectId, lengthBytes: Number(next.lengthBytes), setAtMs: Date.now() },
      );
      return previous === undefined
        ? {}
        : { previous: { objectId: previous.objectId, lengthBytes: BigInt(previous.lengthBytes) } };
    },
    async getBlockedUsers(req) {
      const users = await accounts.blocks.ofUsers(req.userIds.slice(0, 256));
      return { users: users.map((u) => create(UserBlocksSchema, u)) };
    },
    async getPushTargets(req) {
      const targets = await accounts.getPushTargets(req.deviceIds.slice(0, 1000));
      return {
        targets: targets.map((t) =>
          create(DevicePushTargetSchema, {
            deviceId: t.deviceId,
            userId: t.userId,
            targetId: t.targetId,
            target: targetToWire(t.target),
          }),
        ),
      };
    },
    async dropPushTarget(req) {
      return { dropped: await accounts.dropPushTarget(req.deviceId, req.targetId) };
    },
  };
}
