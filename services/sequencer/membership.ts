import { create } from "@bufbuild/protobuf";
import type { Conversation } from "../../gen/switchboard/v1/conversations_pb.js";
import { type Entry, MembershipAction, MembershipBodySchema } from "../../gen/switchboard/v1/entry_pb.js";
import type { Limits } from "../common/config.js";
import {
  ConflictError,
  InvalidInputError,
  NotFoundError,
  PermissionError,
  UnavailableError,
} from "../common/errors.js";
import { countGuardrail } from "../common/guardrails.js";
import { directConversationId, newId } from "../common/ids.js";
import type { MemberRecord } from "../store/types.js";
import type { ConversationState } from "./conversation.js";
import type { ConversationLog } from "./log.js";
import type { Receipts } from "./receipts.js";
import { NOT_A_MEMBER, type ReplicaShards, requireMember } from "./replica.js";
import type { Shard } from "./shard.js";
import type { Actor, MemberList } from "./types.js";
import { stateView } from "./views.js";

/**
 * Who is in a conversation: creates direct conversations and groups, changes a group's members,
 * roles and title (each change an entry of the log), and keeps each member's mute.
 */
export class Membership {
  constructor(
    private readonly shards: ReplicaShards,
    private readonly entries: ConversationLog,
    private readonly receipts: Receipts,
    private readonly limits: Limits,
    /** The clock, in milliseconds since the Unix epoch. */
    private readonly now: () => number,
  ) {}

  /** Creates a conversation with its first members and its CREATED entry. */
  private async createConversation(
    state: ConversationState,
    shard: Shard,
    kind: "direct" | "group",
    title: string,
    creator: Actor,
    memberIds: string[],
  ): Promise<void> {
    const now = this.now();
    const batch = shard.batch();
    state.record = { id: state.id, kind, title, createdAtMs: now, membersVersion: 1 };
    const members: MemberRecord[] = memberIds.map((userId) => ({
      userId,
      role: kind === "group" && userId === creator.userId ? "admin" : "member",
      joinedSeq: 1,
      addedAtMs: now,
      deliveredUpTo: 0,
      readUpTo: 0,
    }));
    for (const m of members) state.members.set(m.userId, m);
    batch.write(state).conversation = state.record;
    batch.putMembers(state, members);
    this.entries.assign(state, batch, {
      senderUserId: creator.userId,
      senderDeviceId: creator.deviceId,
      body: {
        case: "membership",
        value: create(MembershipBodySchema, { action: MembershipAction.CREATED, userIds: memberIds, title }),
      },
    });
    await batch.durable;
  }

  /** The direct conversation of two users, created on first use. */
  async openDirect(userId: string, peerUserId: string, deviceId: string): Promise<Conversation> {
    if (userId === peerUserId)
      throw new InvalidInputError("peer_user_id: cannot open a conversation with yourself");
    const id = directConversationId(userId, peerUserId);
    return this.shards.withState(id, async (state, shard) => {
      if (state.record === undefined) {
        shard.assertCurrent(state);
        await this.createConversation(state, shard, "direct", "", { userId, deviceId }, [userId, peerUserId]);
      } else {
        // A creation by the other user may still be committing.
        await this.entries.committed(state);
      }
      if (state.members.get(userId) === undefined) throw new PermissionError(NOT_A_MEMBER);
      await this.receipts.loadCursors(state, [deviceId]);
      return stateView(state, userId, deviceId);
    });
  }

  /** Creates a group with the creator as admin. */
  async createGroup(
    userId: string,
    deviceId: string,
    title: string,
    memberIds: readonly string[],
  ): Promise<Conversation> {
    const members = [userId, ...new Set(memberIds.filter((id) => id !== userId))];
    if (members.length > this.limits.maxGroupSize) {
      throw new InvalidInputError(`a group has at most ${this.limits.maxGroupSize} members`);
    }
    // The caller may route CreateGroup to any replica: it picks an id that hashes to a shard it
    // owns (with R replicas, R tries on average), so the group never needs to move.
    // Under leases a replica may hold no shard for a moment (starting, or fenced): refuse then,
    // rather than draw ids for ever.
    if (this.shards.owned.length === 0) {
      throw new UnavailableError("this sequencer replica serves no shard now; retry", {
        retryAfterMs: 500,
      });
    }
    let id = newId("g");
    while (!this.shards.owns(id)) id = newId("g");
    return this.shards.withState(id, async (state, shard) => {
      await this.createConversation(state, shard, "group", title, { userId, deviceId }, members);
      return stateView(state, userId, deviceId);
    });
  }

  /** Changes a group's membership, roles or title; returns the entry, or undefined for a no-op. */
  async changeMembership(
    actor: Actor,
    conversationId: string,
    action: MembershipAction,
    userIds: readonly string[],
    title: string,
  ): Promise<Entry | undefined> {
    return this.shards.withState(conversationId, async (state, shard) => {
      const me = requireMember(state, actor.userId);
      if (state.record?.kind !== "group") {
        throw new ConflictError("direct conversations have fixed membership");
      }
      if (action !== MembershipAction.LEFT && me.role !== "admin")
        throw new PermissionError("only group admins can do this");
      shard.assertCurrent(state);
      const batch = shard.batch();
      const record = state.record;
      const membership = (act: MembershipAction, ids: string[], extra: string[] = [], newTitle = "") => {
        const seq = state.lastSeq + 1;
        state.record = { ...record, ...state.record, membersVersion: seq };
        batch.write(state).conversation = state.record;
        return this.entries.assign(
          state,
          batch,
          {
            senderUserId: actor.userId,
            senderDeviceId: actor.deviceId,
            body: {
              case: "membership",
              value: create(MembershipBodySchema, { action: act, userIds: ids, title: newTitle }),
            },
          },
          extra,
        );
      };
      let entry: Entry | undefined;
      switch (action) {
        case MembershipAction.ADDED: {
          const added = [...new Set(userIds)].filter((id) => !state.members.has(id));
          if (added.length === 0) break;
          if (state.members.size + added.length > this.limits.maxGroupSize) {
            throw new ConflictError(
              `the group would have ${state.members.size + added.length} members; the limit is ${this.limits.maxGroupSize}`,
            );
          }
          entry = membership(action, added);
          const joined = Number(entry.seq);
          const now = this.now();
          const records: MemberRecord[] = added.map((userId) => ({
            userId,
            role: "member",
            joinedSeq: joined,
            addedAtMs: now,
            deliveredUpTo: joined - 1,
            readUpTo: joined - 1,
          }));
          for (const m of records) state.members.set(m.userId, m);
          batch.putMembers(state, records);
          break;
        }
        case MembershipAction.REMOVED: {
          if (userIds.includes(actor.userId)) {
            throw new InvalidInputError("user_ids: use LeaveGroup to leave a group");
          }
          const removed = [...new Set(userIds)].filter((id) => state.members.has(id));
          if (removed.length === 0) break;
          entry = membership(action, removed, removed);
          for (const id of removed) state.members.delete(id);
          batch.removeMembers(state, removed);
          break;
        }
        case MembershipAction.LEFT: {
          entry = membership(action, [], [actor.userId]);
          state.members.delete(actor.userId);
          batch.removeMembers(state, [actor.userId]);
          const remaining = [...state.members.values()];
          if (remaining.length > 0 && !remaining.some((m) => m.role === "admin")) {
            const eldest = remaining.reduce((a, b) => (b.joinedSeq < a.joinedSeq ? b : a));
            membership(MembershipAction.PROMOTED, [eldest.userId]);
            const promoted: MemberRecord = { ...eldest, role: "admin" };
            state.members.set(eldest.userId, promoted);
            batch.putMembers(state, [promoted]);
          }
          break;
        }
        case MembershipAction.PROMOTED:
        case MembershipAction.DEMOTED: {
          const role = action === MembershipAction.PROMOTED ? "admin" : "member";
          const unknown = userIds.find((id) => !state.members.has(id));
          if (unknown !== undefined) throw new ConflictError(`user_ids: ${unknown} is not a member`);
          const changed = [...new Set(userIds)].filter((id) => state.members.get(id)?.role !== role);
          if (changed.length === 0) break;
          const adminsLeft = [...state.members.values()].filter(
            (m) => m.role === "admin" && !changed.includes(m.userId),
          );
          if (role === "member" && adminsLeft.length === 0) {
            throw new ConflictError("a group needs at least one admin");
          }
          entry = membership(action, changed);
          const records = changed.map((id) => ({ ...state.members.get(id)!, role }) as MemberRecord);
          for (const m of records) state.members.set(m.userId, m);
          batch.putMembers(state, records);
          break;
        }
        case MembershipAction.RENAMED: {
          if (title === record.title) break;
          entry = membership(action, [], [], title);
          state.record = { ...state.record!, title };
          batch.write(state).conversation = state.record;
          break;
        }
        default:
          throw new InvalidInputError("action: not a membership change a client can make");
      }
      await batch.durable;
      if (action === MembershipAction.LEFT) countGuardrail("leave", actor.userId);
      return entry;
    });
  }

  /** Current members, the membership version and the mutes in force, for fanout. */
  async getMembers(conversationId: string): Promise<MemberList> {
    return this.shards.withState(conversationId, async (state) => {
      if (state.record === undefined) throw new NotFoundError("conversation not found");
      const now = this.now();
      const mutes = [...state.members.values()].flatMap((m) =>
        (m.mutedUntilMs ?? 0) > now ? [{ userId: m.userId, mutedUntilMs: m.mutedUntilMs ?? 0 }] : [],
      );
      return {
        userIds: [...state.members.keys()],
        membersVersion: state.record.membersVersion,
        mutes,
        mutesVersion: state.mutesVersion,
        disappearingSeconds: state.record.disappearingSeconds ?? 0,
      };
    });
  }

  /** Mutes (or with 0 unmutes) a conversation for one member: no push wake-ups until then. */
  async setMute(userId: string, conversationId: string, mutedUntilMs: number): Promise<void> {
    await this.shards.withState(conversationId, async (state, shard) => {
      const member = requireMember(state, userId);
      shard.assertCurrent(state);
      const { mutedUntilMs: _previous, ...rest } = member;
      const updated: MemberRecord = mutedUntilMs > 0 ? { ...rest, mutedUntilMs } : rest;
      state.members.set(userId, updated);
      state.mutesVersion = Math.max(state.mutesVersion + 1, Date.now());
      const batch = shard.batch();
      batch.putMembers(state, [updated]);
      await batch.durable;
      if (mutedUntilMs > this.now()) countGuardrail("mute", userId);
    });
  }
}
