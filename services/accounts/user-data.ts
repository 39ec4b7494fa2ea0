import { toBinary } from "@bufbuild/protobuf";
import type { Client } from "@connectrpc/connect";
import type { SequencerService } from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import { ConversationKind } from "../../gen/switchboard/v1/conversations_pb.js";
import { EntrySchema, MembershipAction } from "../../gen/switchboard/v1/entry_pb.js";
import { ConflictError, NotFoundError } from "../common/errors.js";
import type { Logger } from "../common/log.js";
import type { AccountStore, DeviceRecord, KeyStore, PrivacyRecord, UserRecord } from "../store/types.js";

/**
 * What an operator deletes and exports of a user (AdminService DeleteUser and ExportUser): the
 * accounts service's records (user, devices, push targets, settings, keys) and, through the
 * sequencer service, the user's place in conversations. Conversations go through the sequencer's
 * RPCs, not the store, so this works in every topology (an LMDB mesh keeps them in the
 * sequencers' own files).
 */

/** The sequencer calls deletion and export need. */
export type UserDataSequencer = Pick<
  Client<typeof SequencerService>,
  "listConversations" | "getHistory" | "changeMembership"
>;

/** Bounds of one export's scan of the logs (what the user sent, counted and sized). */
export const EXPORT_SCAN = {
  /** Entries read in all, at most. */
  maxEntries: 100_000,
  /** Bytes read in all, at most. */
  maxBytes: 64 * 1024 * 1024,
  /** Entries per history page. */
  pageEntries: 1_000,
} as const;

/** What DeleteUser removed. */
export interface Deletion {
  /** The deleted user as it was. */
  user: UserRecord;
  /** Devices revoked, then removed. */
  devices: number;
  /** Devices whose published keys were deleted. */
  deviceKeysDeleted: number;
  /** Groups the user left. */
  groupsLeft: number;
  /** Direct conversations kept for the other person. */
  directConversations: number;
}

/** One conversation as exported: shape and sizes, no content. */
export interface ConversationSummary {
  conversationId: string;
  kind: "direct" | "group";
  title: string;
  peerUserId: string;
  createdAtMs: number;
  lastSeq: number;
  members: number;
  entriesSent: number;
  bytesSent: number;
  scanComplete: boolean;
  readUpTo: number;
  mutedUntilMs: number;
}

/** One device as exported, with what the key directory holds for it (counts, no keys). */
export interface DeviceSummary {
  device: DeviceRecord;
  hasKeys: boolean;
  oneTimeEc: number;
  oneTimeKyber: number;
}

/** What ExportUser returns. */
export interface UserExport {
  user: UserRecord;
  devices: DeviceSummary[];
  privacy: PrivacyRecord;
  conversations: ConversationSummary[];
}

export class UserData {
  constructor(
    /** Accounts.revokeDevice: marks the device revoked and broadcasts it. */
    private readonly revokeDevice: (userId: string, deviceId: string) => Promise<unknown>,
    private readonly store: AccountStore,
    private readonly keys: KeyStore,
    private readonly sequencer: UserDataSequencer,
    private readonly log: Logger,
  ) {}

  /** The user's conversations, asked as their oldest device (the sequencer reports its cursors). */
  private async conversations(userId: string, devices: readonly DeviceRecord[]) {
    const asDevice = devices[0]?.deviceId;
    if (asDevice === undefined) return [];
    const { conversations } = await this.sequencer.listConversations({ userId, deviceId: asDevice });
    return conversations;
  }

  /**
   * Deletes the user: every device is revoked first (tokens and streams stop, and the same
   * broadcast deletes their keys), then the user leaves every group, then their keys are deleted
   * here as well (a missed broadcast leaves none) and the account, devices with their push
   * targets, and settings are removed in one store write, which frees the username. Stops at the
   * first failure with nothing after it done; run again, every step is idempotent. Direct
   * conversations stay: they are the other person's history too.
   */
  async delete(userId: string): Promise<Deletion> {
    const deleteUser = this.store.deleteUser?.bind(this.store);
    if (deleteUser === undefined) {
      throw new ConflictError(
        "this store engine cannot delete users yet (the embedded LMDB engine can; ScyllaDB has no deletion of its user rows)",
      );
    }
    const user = await this.store.getUser(userId);
    if (user === undefined) throw new NotFoundError(`no user ${userId}`);
    const devices = await this.store.listDevices(userId);
    for (const d of devices) await this.revokeDevice(userId, d.deviceId);
    let groupsLeft = 0;
    let directConversations = 0;
    for (const c of await this.conversations(userId, devices)) {
      if (c.kind !== ConversationKind.GROUP) {
        directConversations++;
        continue;
      }
      await this.sequencer.changeMembership({
        actorUserId: userId,
        actorDeviceId: devices[0]!.deviceId,
        conversationId: c.conversationId,
        action: MembershipAction.LEFT,
      });
      groupsLeft++;
    }
    let deviceKeysDeleted = 0;
    for (const d of devices) {
      if ((await this.keys.getKeys(d.deviceId)) !== undefined) deviceKeysDeleted++;
      await this.keys.deleteKeys(d.deviceId);
    }
    // The avatar record goes with the account. Its object stays in the media store, which the
    // accounts service cannot reach: its id is logged below for the operator.
    const avatar = await this.store.swapAvatar(userId, undefined);
    await deleteUser(userId);
    this.log.info(
      { userId, devices: devices.length, groupsLeft, directConversations, avatarObjectId: avatar?.objectId },
      "user deleted: devices revoked and removed, groups left, keys and account removed",
    );
    return { user, devices: devices.length, deviceKeysDeleted, groupsLeft, directConversations };
  }

  /** Everything the server holds about the user, without message content. */
  async export(userId: string): Promise<UserExport> {
    const user = await this.store.getUser(userId);
    if (user === undefined) throw new NotFoundError(`no user ${userId}`);
    const devices = await this.store.listDevices(userId);
    const summaries = await Promise.all(
      devices.map(async (device): Promise<DeviceSummary> => {
        const [keys, counts] = await Promise.all([
          this.keys.getKeys(device.deviceId),
          this.keys.countPrekeys(device.deviceId),
        ]);
        return { device, hasKeys: keys !== undefined, oneTimeEc: counts.ec, oneTimeKyber: counts.kyber };
      }),
    );
    const privacy = (await this.store.getPrivacy([userId])).get(userId) ?? {};
    const budget = { entries: EXPORT_SCAN.maxEntries, bytes: EXPORT_SCAN.maxBytes };
    const conversations: ConversationSummary[] = [];
    for (const c of await this.conversations(userId, devices)) {
      const sent = await this.sentIn(userId, devices[0]!.deviceId, c.conversationId, budget);
      conversations.push({
        conversationId: c.conversationId,
        kind: c.kind === ConversationKind.GROUP ? "group" : "direct",
        title: c.title,
        peerUserId: c.peerUserId,
        createdAtMs: Number(c.createdAtMs),
        lastSeq: Number(c.lastSeq),
        members: c.memberCount,
        entriesSent: sent.entries,
        bytesSent: sent.bytes,
        scanComplete: sent.complete,
        readUpTo: Number(c.readUpTo),
        mutedUntilMs: Number(c.mutedUntilMs),
      });
    }
    return { user, devices: summaries, privacy, conversations };
  }

  /** Counts and sizes the entries the user sent in a conversation, within the export's budget. */
  private async sentIn(
    userId: string,
    deviceId: string,
    conversationId: string,
    budget: { entries: number; bytes: number },
  ): Promise<{ entries: number; bytes: number; complete: boolean }> {
    let entries = 0;
    let bytes = 0;
    let after = 0n;
    for (;;) {
      if (budget.entries <= 0 || budget.bytes <= 0) return { entries, bytes, complete: false };
      const page = await this.sequencer.getHistory({
        userId,
        deviceId,
        conversationId,
        afterSeq: after,
        limit: Math.min(EXPORT_SCAN.pageEntries, budget.entries),
        maxBytes: Math.min(4 * 1024 * 1024, budget.bytes),
      });
      for (const e of page.entries) {
        const size = toBinary(EntrySchema, e).byteLength;
        budget.entries--;
        budget.bytes -= size;
        if (e.senderUserId === userId) {
          entries++;
          bytes += size;
        }
        after = e.seq;
      }
      if (!page.hasMore || page.entries.length === 0) return { entries, bytes, complete: true };
    }
  }
}
