import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  AbuseReportSchema,
  type AdminService,
  ConversationExportSchema,
  DeviceExportSchema,
} from "../../gen/switchboard/internal/v1/admin_pb.js";
import { BlockedUserSchema, DisclosedMessageSchema } from "../../gen/switchboard/v1/accounts_pb.js";
import { type Accounts, toDevice, toUser } from "../accounts/index.js";
import type { Role } from "../common/config.js";
import { ConflictError, InvalidInputError, NotFoundError } from "../common/errors.js";
import { requireId, requireText, requireUsername } from "../common/validate.js";

/** What the user commands need of the process (AdminDeps has this shape). */
export interface UserActionDeps {
  /** This process's instance id. */
  instanceId: string;
  /** The roles this process runs. */
  roles: readonly Role[];
  /** Users and devices (accounts role). */
  accounts?: Accounts | undefined;
  /** The clock, in milliseconds since the Unix epoch. */
  now?: () => number;
}

const USER_ID = /^u_[0-9a-z]{26}$/;

/** The operator's reason, for the audit log: optional, at most 200 characters, no control characters. */
function reason(value: string): string {
  return requireText("reason", value, 0, 200);
}

/**
 * The user commands of the admin service: suspend, unsuspend, delete, export, and reading users'
 * reports (accounts role).
 */
export function userActions(
  deps: UserActionDeps,
): Pick<
  ServiceImpl<typeof AdminService>,
  "suspendUser" | "unsuspendUser" | "deleteUser" | "exportUser" | "listReports"
> {
  const now = deps.now ?? Date.now;
  const accountsFor = (rpc: string): Accounts => {
    if (deps.accounts) return deps.accounts;
    throw new ConflictError(
      `${rpc} needs the accounts role; this process (${deps.instanceId}) runs ${deps.roles.join(", ") || "no role"}: ask an accounts process`,
    );
  };
  /** A username or a user id to the user id; NOT_FOUND for no such user. */
  const resolve = async (accounts: Accounts, query: string): Promise<string> => {
    const q = query.trim();
    if (q === "") throw new InvalidInputError("user: a username or a user id is required");
    const isId = USER_ID.test(q);
    if (!isId) requireUsername(q);
    const found = await accounts.lookupUsers(isId ? [q] : [], [q]);
    const user = found.find((u) => u.userId === q) ?? found[0];
    if (user === undefined) throw new NotFoundError(`no user "${q}"`);
    return user.userId;
  };

  return {
    // Audited like every admin call (audit.ts): the line names the reported user asked and how
    // many reports were read, never their content.
    async listReports(req) {
      reason(req.reason);
      const limit = req.limit === 0 ? 50 : req.limit;
      if (limit > 500) throw new InvalidInputError("limit: at most 500");
      const accounts = accountsFor("ListReports");
      const reported = req.reportedUser.trim() === "" ? undefined : await resolve(accounts, req.reportedUser);
      const { reports, truncated } = await accounts.reports.list(reported, limit);
      return {
        truncated,
        reports: reports.map((r) =>
          create(AbuseReportSchema, {
            reportId: r.reportId,
            reporterUserId: r.reporterUserId,
            reportedUserId: r.reportedUserId,
            createdAtMs: BigInt(r.createdAtMs),
            reason: r.reason,
            conversationId: r.conversationId,
            targetSeq: BigInt(r.targetSeq),
            messages: r.messages.map((m) =>
              create(DisclosedMessageSchema, {
                conversationId: m.conversationId,
                seq: BigInt(m.seq),
                senderUserId: m.senderUserId,
                sentAtMs: BigInt(m.sentAtMs),
                text: m.text,
              }),
            ),
          }),
        ),
      };
    },

    async suspendUser(req) {
      reason(req.reason);
      const accounts = accountsFor("SuspendUser");
      const s = await accounts.suspensions.suspend(await resolve(accounts, req.user));
      return {
        user: toUser(s.user),
        suspendedAtMs: BigInt(s.user.suspendedAtMs ?? 0),
        alreadySuspended: s.alreadySuspended,
        devicesClosed: s.devicesClosed,
      };
    },

    async unsuspendUser(req) {
      const accounts = accountsFor("UnsuspendUser");
      const u = await accounts.suspensions.unsuspend(await resolve(accounts, req.user));
      return { user: toUser(u.user), wasSuspended: u.wasSuspended };
    },

    async deleteUser(req) {
      // By id only: a username may have changed hands between the look-up and the deletion.
      const userId = requireId("user_id", req.userId.trim(), "u");
      reason(req.reason);
      const accounts = accountsFor("DeleteUser");
      const userData = accounts.userData;
      if (userData === undefined) throw new ConflictError("this accounts process cannot delete users");
      const d = await userData.delete(userId);
      return {
        userId,
        username: d.user.username,
        devices: d.devices,
        deviceKeysDeleted: d.deviceKeysDeleted,
        groupsLeft: d.groupsLeft,
        directConversations: d.directConversations,
      };
    },

    async exportUser(req) {
      const accounts = accountsFor("ExportUser");
      const userData = accounts.userData;
      if (userData === undefined) throw new ConflictError("this accounts process cannot export users");
      const userId = await resolve(accounts, req.user);
      const [e, blocks] = await Promise.all([userData.export(userId), accounts.blocks.list(userId)]);
      const privacy: Record<string, string> = {};
      if (e.privacy.groupAdd !== undefined) privacy.group_add = e.privacy.groupAdd;
      if (e.privacy.directOpen !== undefined) privacy.direct_open = e.privacy.directOpen;
      return {
        user: toUser(e.user),
        suspendedAtMs: BigInt(e.user.suspendedAtMs ?? 0),
        devices: e.devices.map((d) =>
          create(DeviceExportSchema, {
            device: toDevice(d.device),
            hasKeys: d.hasKeys,
            oneTimeEcPrekeys: d.oneTimeEc,
            oneTimeKyberPrekeys: d.oneTimeKyber,
          }),
        ),
        privacy,
        blocked: blocks.map((b) =>
          create(BlockedUserSchema, { userId: b.blockedUserId, blockedAtMs: BigInt(b.blockedAtMs) }),
        ),
        conversations: e.conversations.map((c) =>
          create(ConversationExportSchema, {
            ...c,
            createdAtMs: BigInt(c.createdAtMs),
            lastSeq: BigInt(c.lastSeq),
            entriesSent: BigInt(c.entriesSent),
            bytesSent: BigInt(c.bytesSent),
            readUpTo: BigInt(c.readUpTo),
            mutedUntilMs: BigInt(c.mutedUntilMs),
          }),
        ),
        exportedAtMs: BigInt(now()),
        instanceId: deps.instanceId,
      };
    },
  };
}
