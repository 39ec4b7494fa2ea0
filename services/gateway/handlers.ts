import {
  type Client,
  Code,
  ConnectError,
  createContextKey,
  type HandlerContext,
  type Interceptor,
  type ServiceImpl,
} from "@connectrpc/connect";
import type { DirectoryService } from "../../gen/switchboard/internal/v1/directory_pb.js";
import { AccountService } from "../../gen/switchboard/v1/accounts_pb.js";
import { ConversationService, MemberRole } from "../../gen/switchboard/v1/conversations_pb.js";
import { MembershipAction } from "../../gen/switchboard/v1/entry_pb.js";
import { GatewayService } from "../../gen/switchboard/v1/gateway_pb.js";
import type { KeyService } from "../../gen/switchboard/v1/keys_pb.js";
import type { MediaService } from "../../gen/switchboard/v1/media_pb.js";
import type { Principal } from "../common/auth.js";
import {
  DeadlineError,
  InvalidInputError,
  LimitError,
  NotFoundError,
  UnauthenticatedError,
} from "../common/errors.js";
import { directConversationId } from "../common/ids.js";
import { Refusals } from "../common/refusals.js";
import { requireClientMsgId, requireId, requireIds, requireText } from "../common/validate.js";
import { Consent, type ConsentRefusalSink } from "./consent.js";
import { entryForDevice } from "./device-set.js";
import type { GatewayCore } from "./gateway.js";
import { boundPage } from "./session.js";
import { dropUnknownFields } from "./untrusted.js";
import { webCalls } from "./web.js";

const principalKey = createContextKey<Principal | undefined>(undefined, {
  description: "authenticated principal",
});

/**
 * Authenticates every call to the gateway's own services before the handler runs and before any
 * stream message is read. AccountService calls pass through; the accounts service
 * authenticates the ones that need it.
 *
 * It also drops every field a device sent that the schema does not know, from every request
 * message and stream frame of every device-facing service, before a handler sees it: protobuf-es
 * keeps unknown fields and encodes them again, so they would reach the log, the key directory
 * and other devices past every size limit.
 */
export function authInterceptor(core: GatewayCore): Interceptor {
  const noteDropped = (procedure: string, bytes: number) => {
    core.refused("unknown_fields", "dropped fields this server does not know from a device message", {
      procedure,
      bytes,
    });
  };
  return (next) => async (req) => {
    if (req.service.typeName !== AccountService.typeName) {
      req.contextValues.set(principalKey, await core.authenticate(req.header.get("authorization")));
    }
    const procedure = `/${req.service.typeName}/${req.method.name}`;
    if (req.stream) {
      const messages = req.message;
      async function* known() {
        for await (const message of messages) {
          const dropped = dropUnknownFields(message);
          if (dropped > 0) noteDropped(procedure, dropped);
          yield message;
        }
      }
      return next({ ...req, message: known() });
    }
    const dropped = dropUnknownFields(req.message);
    if (dropped > 0) noteDropped(procedure, dropped);
    return next(req);
  };
}

/** The device a call acts for, as authInterceptor established it. */
export function principal(ctx: HandlerContext): Principal {
  const p = ctx.values.get(principalKey);
  if (p === undefined) throw new UnauthenticatedError("not authenticated");
  return p;
}

/** Refuses user ids that do not exist, naming them. */
async function requireUsers(directory: Client<typeof DirectoryService>, userIds: string[]): Promise<void> {
  if (userIds.length === 0) return;
  const { existingUserIds } = await directory.checkUsers({ userIds });
  const missing = userIds.filter((id) => !existingUserIds.includes(id));
  if (missing.length > 0) throw new NotFoundError(`unknown users: ${missing.join(", ")}`);
}

/** DEADLINE_EXCEEDED for a call's signal aborted by its deadline; undefined for any other reason. */
function deadlinePassed(reason: unknown): DeadlineError | undefined {
  return reason instanceof ConnectError && reason.code === Code.DeadlineExceeded
    ? new DeadlineError(`the stream's deadline passed: ${reason.rawMessage}`)
    : undefined;
}

/** The device stream, the unary send, and the web binding of the stream (web.ts). */
export function gatewayService(core: GatewayCore): ServiceImpl<typeof GatewayService> {
  return {
    ...webCalls(core, principal),
    async *connect(requests, ctx) {
      const session = core.open(principal(ctx));
      // The device went away (reset, server shutdown): forget the stream. A deadline the
      // device set (grpc-timeout) ends it with DEADLINE_EXCEEDED, not as if it ended cleanly.
      ctx.signal.addEventListener("abort", () => session.close(deadlinePassed(ctx.signal.reason)), {
        once: true,
      });
      session.start(requests);
      yield* session.outbound.drain();
    },
    async send(req, ctx) {
      const p = principal(ctx);
      const entry = req.entry;
      if (entry === undefined) throw new InvalidInputError("entry: required");
      requireClientMsgId(entry.clientMsgId);
      requireId("conversation_id", entry.conversationId, "conversation");
      core.checkEntrySize(entry);
      const wait = await core.takeSendToken(p.deviceId);
      if (wait > 0) {
        throw new LimitError(
          `send rate limit: at most ${core.limits.sendsPerSecond} per second per device; retry in ${wait} ms`,
          { retryAfterMs: wait },
        );
      }
      // A mismatched device set is refused with the lists as a DeviceMismatch error detail.
      // A direct send to a user who blocked the sender is refused first (blocks.ts).
      const checked = (await core.blocks.checkSend(core.devices, p, entry)) ?? entry;
      const r = await core.sends.append(p.userId, p.deviceId, checked);
      return { seq: r.seq, serverTimeMs: r.serverTimeMs, expiresAtMs: r.expiresAtMs };
    },
  };
}

/**
 * Conversations and groups, on behalf of the authenticated user. Consent refusals go to
 * `refusals`, the process's sink (a sink of this service's own, on the same metric, when none
 * is given).
 */
export function conversationService(
  core: GatewayCore,
  directory: Client<typeof DirectoryService>,
  maxGroupSize: number,
  refusals: ConsentRefusalSink = new Refusals(core.log),
): ServiceImpl<typeof ConversationService> {
  const seq = core.sequencer;
  const consent = new Consent(directory, seq, refusals, core.blocks);
  /**
   * An admin's AddMembers: the ids not yet members, once their privacy settings admit the actor
   * (one refusal refuses the whole call). Anyone else gets the sequencer's own answer, before any
   * setting is read, so a non-member learns nothing about the group or the users.
   */
  async function admitted(p: Principal, conversationId: string, ids: string[]): Promise<string[]> {
    const { members } = await seq.getConversation({ userId: p.userId, deviceId: p.deviceId, conversationId });
    if (members.find((m) => m.userId === p.userId)?.role !== MemberRole.ADMIN) return ids;
    const current = new Set(members.map((m) => m.userId));
    // Only the newcomers go on: a member removed meanwhile is not re-added without consent.
    const newcomers = ids.filter((id) => !current.has(id));
    await consent.require(p.userId, newcomers, "group_add");
    return newcomers;
  }
  /** The caller's existing direct conversation with the peer, if there is one. */
  async function existingDirect(p: Principal, peerUserId: string) {
    try {
      const { conversation } = await seq.getConversation({
        userId: p.userId,
        deviceId: p.deviceId,
        conversationId: directConversationId(p.userId, peerUserId),
      });
      return conversation;
    } catch (err) {
      // The sequencer's answer to this client's call.
      const code = ConnectError.from(err).code;
      if (code === Code.NotFound || code === Code.PermissionDenied) return undefined;
      throw err;
    }
  }
  async function change(
    ctx: HandlerContext,
    conversationId: string,
    action: MembershipAction,
    userIds: string[],
    title = "",
  ) {
    const p = principal(ctx);
    requireId("conversation_id", conversationId, "g");
    let ids = requireIds("user_ids", userIds, "u", maxGroupSize);
    if (action === MembershipAction.ADDED) {
      await requireUsers(directory, ids);
      ids = await admitted(p, conversationId, ids);
    }
    const { entry } = await seq.changeMembership({
      actorUserId: p.userId,
      actorDeviceId: p.deviceId,
      conversationId,
      action,
      userIds: ids,
      title,
    });
    return entry === undefined ? {} : { entry };
  }
  return {
    async openDirect(req, ctx) {
      const p = principal(ctx);
      requireId("peer_user_id", req.peerUserId, "u");
      if (req.peerUserId === p.userId) {
        throw new InvalidInputError("peer_user_id: cannot open a conversation with yourself");
      }
      await requireUsers(directory, [req.peerUserId]);
      if ((await consent.refusing(p.userId, [req.peerUserId], "direct_open")).length > 0) {
        // Consent governs new direct conversations only; an existing one stays open to both.
        const existing = await existingDirect(p, req.peerUserId);
        if (existing === undefined) throw consent.refused(p.userId, [req.peerUserId], "direct_open");
        return { conversation: existing };
      }
      const { conversation } = await seq.openDirect({
        userId: p.userId,
        peerUserId: req.peerUserId,
        deviceId: p.deviceId,
      });
      return conversation === undefined ? {} : { conversation };
    },
    async createGroup(req, ctx) {
      const p = principal(ctx);
      const title = requireText("title", req.title, 1, 128);
      const members = requireIds("member_user_ids", req.memberUserIds, "u", maxGroupSize).filter(
        (id) => id !== p.userId,
      );
      if (members.length + 1 > maxGroupSize) {
        throw new InvalidInputError(`a group has at most ${maxGroupSize} members`);
      }
      await requireUsers(directory, members);
      await consent.require(p.userId, members, "group_add");
      const { conversation } = await seq.createGroup({
        userId: p.userId,
        deviceId: p.deviceId,
        title,
        memberUserIds: members,
      });
      return conversation === undefined ? {} : { conversation };
    },
    addMembers: (req, ctx) => change(ctx, req.conversationId, MembershipAction.ADDED, req.userIds),
    removeMembers: (req, ctx) => change(ctx, req.conversationId, MembershipAction.REMOVED, req.userIds),
    async leaveGroup(req, ctx) {
      const { entry } = await change(ctx, req.conversationId, MembershipAction.LEFT, []);
      return entry === undefined ? {} : { entry };
    },
    setRole(req, ctx) {
      if (req.role !== MemberRole.ADMIN && req.role !== MemberRole.MEMBER) {
        throw new InvalidInputError("role: MEMBER_ROLE_ADMIN or MEMBER_ROLE_MEMBER required");
      }
      const action = req.role === MemberRole.ADMIN ? MembershipAction.PROMOTED : MembershipAction.DEMOTED;
      return change(ctx, req.conversationId, action, req.userIds);
    },
    async renameGroup(req, ctx) {
      const title = requireText("title", req.title, 1, 128);
      const { entry } = await change(ctx, req.conversationId, MembershipAction.RENAMED, [], title);
      return entry === undefined ? {} : { entry };
    },
    async setDisappearingTimer(req, ctx) {
      const p = principal(ctx);
      requireId("conversation_id", req.conversationId, "conversation");
      const { entry } = await seq.setDisappearingTimer({
        actorUserId: p.userId,
        actorDeviceId: p.deviceId,
        conversationId: req.conversationId,
        durationSeconds: req.durationSeconds,
        adminsOnly: req.adminsOnly,
      });
      return entry === undefined ? {} : { entry };
    },
    async listConversations(_req, ctx) {
      const p = principal(ctx);
      const { conversations } = await seq.listConversations({ userId: p.userId, deviceId: p.deviceId });
      return { conversations };
    },
    async getConversation(req, ctx) {
      const p = principal(ctx);
      requireId("conversation_id", req.conversationId, "conversation");
      const r = await seq.getConversation({
        userId: p.userId,
        deviceId: p.deviceId,
        conversationId: req.conversationId,
      });
      // Other members' read cursors are read receipts too: hidden unless both have them on.
      await core.privacy.maskReadCursors(p.userId, r.members);
      return r.conversation === undefined
        ? { members: r.members }
        : { conversation: r.conversation, members: r.members };
    },
    async getHistory(req, ctx) {
      const p = principal(ctx);
      requireId("conversation_id", req.conversationId, "conversation");
      if (req.limit > 1000) throw new InvalidInputError("limit: at most 1000");
      // A page is bounded in bytes too, so no response nears a client's 4 MiB receive limit:
      // it may hold fewer than `limit` entries, with has_more set.
      const maxBytes = core.limits.maxPageBytes;
      const page = await seq.getHistory({
        userId: p.userId,
        deviceId: p.deviceId,
        conversationId: req.conversationId,
        afterSeq: req.afterSeq,
        limit: req.limit,
        maxBytes,
      });
      const bounded = boundPage(page.entries, maxBytes);
      return {
        entries: bounded.entries.map((e) => entryForDevice(e, p.deviceId)),
        lastSeq: page.lastSeq,
        hasMore: page.hasMore || bounded.cut,
      };
    },
    async setMute(req, ctx) {
      const p = principal(ctx);
      requireId("conversation_id", req.conversationId, "conversation");
      if (req.mutedUntilMs < 0n) throw new InvalidInputError("muted_until_ms: must not be negative");
      await seq.setMute({
        userId: p.userId,
        conversationId: req.conversationId,
        mutedUntilMs: req.mutedUntilMs,
      });
      return {};
    },
  };
}

/**
 * AccountService on the gateway: forwarded to the accounts service with the caller's
 * authorization header, so devices need only one address. With the gateway's core, LookupUsers'
 * answers are masked by the users' `profile` privacy settings (privacy.ts), which need the
 * conversations the accounts service does not know.
 */
export function accountForwarder(
  accounts: Client<typeof AccountService>,
  core?: GatewayCore,
): ServiceImpl<typeof AccountService> {
  const pass = passAuthorization;
  return {
    // The caller's address, set by this process's edge from the socket, keys the accounts
    // service's per-address registration limit.
    register: (req, ctx) => {
      const options = pass(ctx);
      const peer = ctx.requestHeader.get("x-switchboard-peer");
      return accounts.register(
        req,
        peer === null ? options : { ...options, headers: { ...options.headers, "x-switchboard-peer": peer } },
      );
    },
    createToken: (req, ctx) => accounts.createToken(req, pass(ctx)),
    createLinkCode: (req, ctx) => accounts.createLinkCode(req, pass(ctx)),
    linkDevice: (req, ctx) => accounts.linkDevice(req, pass(ctx)),
    listDevices: (req, ctx) => accounts.listDevices(req, pass(ctx)),
    revokeDevice: (req, ctx) => accounts.revokeDevice(req, pass(ctx)),
    lookupUsers: async (req, ctx) => {
      // The accounts service authenticates, checks and rate-limits the call first.
      const res = await accounts.lookupUsers(req, pass(ctx));
      if (core === undefined) return res;
      const viewer = await core.authenticate(ctx.requestHeader.get("authorization"));
      await core.privacy.maskProfiles(viewer.userId, res.users, async (peerUserIds) => {
        const { directContactUserIds } = await core.sequencer.findContacts({
          userId: viewer.userId,
          peerUserIds,
        });
        return directContactUserIds;
      });
      return res;
    },
    setProfile: (req, ctx) => accounts.setProfile(req, pass(ctx)),
    setPushTarget: (req, ctx) => accounts.setPushTarget(req, pass(ctx)),
    removePushTarget: (req, ctx) => accounts.removePushTarget(req, pass(ctx)),
    getPrivacy: (req, ctx) => accounts.getPrivacy(req, pass(ctx)),
    setPrivacy: (req, ctx) => accounts.setPrivacy(req, pass(ctx)),
    blockUser: (req, ctx) => accounts.blockUser(req, pass(ctx)),
    unblockUser: (req, ctx) => accounts.unblockUser(req, pass(ctx)),
    listBlockedUsers: (req, ctx) => accounts.listBlockedUsers(req, pass(ctx)),
    reportUser: (req, ctx) => accounts.reportUser(req, pass(ctx)),
    getFeatureFlags: (req, ctx) => accounts.getFeatureFlags(req, pass(ctx)),
  };
}

/** Forwards the key directory to the accounts service, token and all (it authenticates again). */
export function keyForwarder(keys: Client<typeof KeyService>): ServiceImpl<typeof KeyService> {
  const pass = passAuthorization;
  return {
    uploadKeys: (req, ctx) => keys.uploadKeys(req, pass(ctx)),
    getPrekeyCounts: (req, ctx) => keys.getPrekeyCounts(req, pass(ctx)),
    getBundles: (req, ctx) => keys.getBundles(req, pass(ctx)),
  };
}

/** Forwards attachments to the media service, token and all (it authenticates again). */
export function mediaForwarder(media: Client<typeof MediaService>): ServiceImpl<typeof MediaService> {
  return {
    createUpload: (req, ctx) => media.createUpload(req, passAuthorization(ctx)),
    claimUpload: (req, ctx) => media.claimUpload(req, passAuthorization(ctx)),
    createDownload: (req, ctx) => media.createDownload(req, passAuthorization(ctx)),
    deleteAttachments: (req, ctx) => media.deleteAttachments(req, passAuthorization(ctx)),
    createAvatarUpload: (req, ctx) => media.createAvatarUpload(req, passAuthorization(ctx)),
    setAvatar: (req, ctx) => media.setAvatar(req, passAuthorization(ctx)),
    removeAvatar: (req, ctx) => media.removeAvatar(req, passAuthorization(ctx)),
    getAvatar: (req, ctx) => media.getAvatar(req, passAuthorization(ctx)),
  };
}

/** The call options that carry a device's own token on to the service behind the gateway. */
function passAuthorization(ctx: HandlerContext) {
  const authorization = ctx.requestHeader.get("authorization");
  return { signal: ctx.signal, headers: authorization === null ? {} : { authorization } };
}

export { ConversationService, GatewayService };
