import { ConversationKind } from "../../gen/switchboard/v1/conversations_pb.js";
import { type Entry, MembershipAction } from "../../gen/switchboard/v1/entry_pb.js";
import type { GroupCipher } from "../crypto/groups.js";
import type { DeviceRef } from "../crypto/stores.js";
import type { ServerConnection } from "../transport.js";
import type { DeviceDirectory } from "./devices.js";

/** A direct conversation is encrypted pairwise for its peer's devices; a group with sender keys. */
export type ConversationInfo = { direct: true; peerUserId: string } | { direct: false };

/**
 * Who a conversation's content is encrypted for: whether it is direct (and its peer), a group's
 * members (cached until a membership entry or a refusal says otherwise) and their devices; and
 * the sender key rotation a membership entry calls for.
 */
export class Recipients {
  private readonly conversations = new Map<string, Promise<ConversationInfo>>();
  private readonly members = new Map<string, Promise<string[]>>();

  constructor(
    private readonly self: DeviceRef,
    private readonly conn: ServerConnection,
    private readonly devices: DeviceDirectory,
    private readonly groups: GroupCipher,
  ) {}

  /** Whether a conversation is direct (pairwise encrypted), and its peer; cached for good. */
  conversation(conversationId: string): Promise<ConversationInfo> {
    let info = this.conversations.get(conversationId);
    if (info === undefined) {
      info = this.conn.conversations.getConversation({ conversationId }).then((res) => {
        if (res.conversation?.kind !== ConversationKind.DIRECT) return { direct: false } as const;
        const peer = res.members.find((m) => m.userId !== this.self.userId)?.userId ?? this.self.userId;
        return { direct: true, peerUserId: peer } as const;
      });
      info.catch(() => this.conversations.delete(conversationId));
      this.conversations.set(conversationId, info);
    }
    return info;
  }

  /** Forgets a group's cached member list: the next send reads it again. */
  forgetMembers(groupId: string): void {
    this.members.delete(groupId);
  }

  /** A group's member user ids, cached until a membership entry or a refusal says otherwise. */
  private groupMembers(groupId: string): Promise<string[]> {
    let members = this.members.get(groupId);
    if (members === undefined) {
      members = this.conn.conversations
        .getConversation({ conversationId: groupId })
        .then((res) => res.members.map((m) => m.userId));
      members.catch(() => this.members.delete(groupId));
      this.members.set(groupId, members);
    }
    return members;
  }

  /** Every device of the group's members with keys, as far as known, except this one. */
  async groupRecipients(groupId: string): Promise<DeviceRef[]> {
    const out: DeviceRef[] = [];
    for (const userId of await this.groupMembers(groupId)) {
      for (const deviceId of await this.devices.devicesOf(userId)) {
        if (userId === this.self.userId && deviceId === this.self.deviceId) continue;
        out.push({ userId, deviceId });
      }
    }
    return out;
  }

  /**
   * Every device of the peer and every other device of this user, as far as this device knows
   * them (a user seen for the first time is fetched in full): a direct message's recipients.
   */
  async directRecipients(peerUserId: string): Promise<DeviceRef[]> {
    const recipients: DeviceRef[] = [];
    for (const userId of new Set([peerUserId, this.self.userId])) {
      for (const deviceId of await this.devices.devicesOf(userId)) {
        if (userId === this.self.userId && deviceId === this.self.deviceId) continue;
        recipients.push({ userId, deviceId });
      }
    }
    return recipients;
  }

  /**
   * A group's membership changed (an entry of the log): the member list is read again, and our
   * sender key is rotated when someone left or was removed (they must not read what follows) or
   * joined (they must not read what came before). Done once per entry, durably.
   */
  async membershipChanged(entry: Entry): Promise<void> {
    if (entry.body.case !== "membership") return;
    const groupId = entry.conversationId;
    if (entry.seq <= this.devices.membershipSeq(groupId)) return;
    this.members.delete(groupId);
    const { action, userIds } = entry.body.value;
    const others = userIds.filter((u) => u !== this.self.userId);
    if (action === MembershipAction.REMOVED || action === MembershipAction.LEFT) {
      if (others.length > 0) {
        for (const userId of others) await this.groups.removeMember(groupId, userId);
      }
    } else if (action === MembershipAction.ADDED && others.length > 0) {
      await this.groups.rotate(groupId);
    }
    await this.devices.membershipDone(groupId, entry.seq);
  }
}
