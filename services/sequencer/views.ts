import { create } from "@bufbuild/protobuf";
import {
  type ConversationSync,
  ConversationSyncSchema,
} from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import {
  type Conversation,
  ConversationKind,
  ConversationSchema,
  type Member,
  MemberRole,
  MemberSchema,
} from "../../gen/switchboard/v1/conversations_pb.js";
import { directConversationId } from "../common/ids.js";
import type { ConversationRecord, ConversationStore, MemberRecord } from "../store/types.js";
import type { ConversationState, CursorPair } from "./conversation.js";
import type { DeviceFloors } from "./floors.js";
import { type ConversationLog, PAGE_DEFAULT, PAGE_MAX } from "./log.js";
import { pinsView } from "./pins.js";
import type { Receipts } from "./receipts.js";
import { ReplicaShards, requireMember } from "./replica.js";
import type { HistoryPage } from "./types.js";

// FindContacts and listings look at most this many of a user's conversations.
const USER_CONVERSATIONS_MAX = 5000;

function toMember(m: MemberRecord): Member {
  return create(MemberSchema, {
    userId: m.userId,
    role: m.role === "admin" ? MemberRole.ADMIN : MemberRole.MEMBER,
    joinedSeq: BigInt(m.joinedSeq),
    deliveredUpTo: BigInt(m.deliveredUpTo),
    readUpTo: BigInt(m.readUpTo),
  });
}

/** The conversation as a user's device sees it. */
function view(
  record: ConversationRecord,
  lastSeq: number,
  memberCount: number,
  member: MemberRecord | undefined,
  cursor: CursorPair | undefined,
  userId: string,
  peer: string,
  lastActiveMs: number,
  deviceFloor = 0,
): Conversation {
  // Nothing before the user joined, or before this device was linked, is the device's to read.
  const floor = Math.max(member ? member.joinedSeq - 1 : 0, deviceFloor);
  return create(ConversationSchema, {
    conversationId: record.id,
    kind: record.kind === "direct" ? ConversationKind.DIRECT : ConversationKind.GROUP,
    title: record.title,
    lastSeq: BigInt(lastSeq),
    deliveredUpTo: BigInt(Math.max(cursor?.delivered ?? 0, floor)),
    readUpTo: BigInt(Math.max(member?.readUpTo ?? 0, floor)),
    memberCount,
    createdAtMs: BigInt(record.createdAtMs),
    peerUserId: record.kind === "direct" && peer !== userId ? peer : "",
    mutedUntilMs: BigInt(member?.mutedUntilMs ?? 0),
    lastActiveMs: BigInt(lastActiveMs),
    // Read from the record, like the rest: a listing of many conversations reads no log for them.
    pins: pinsView(record.pins, floor, Date.now()),
  });
}

/** The conversation of a loaded state (its record set) as a user's device sees it. */
export function stateView(
  state: ConversationState,
  userId: string,
  deviceId: string,
  deviceFloor = 0,
): Conversation {
  const record = state.record!;
  const peer = record.kind === "direct" ? ([...state.members.keys()].find((id) => id !== userId) ?? "") : "";
  return view(
    record,
    state.committedSeq,
    state.members.size,
    state.members.get(userId),
    state.deviceCursors.get(deviceId),
    userId,
    peer,
    state.lastServerTimeMs || record.createdAtMs,
    deviceFloor,
  );
}

/**
 * What a user's device reads: pages of the log, its conversations, their sync state and the
 * contacts it shares them with. Nothing here changes a conversation; one conversation's reads
 * go through its shard (committed data only), a user's whole listing reads the store.
 */
export class Views {
  constructor(
    private readonly shards: ReplicaShards,
    private readonly entries: ConversationLog,
    private readonly receipts: Receipts,
    private readonly floors: DeviceFloors,
    private readonly store: ConversationStore,
  ) {}

  /**
   * The user's conversations in `held`, the shards this replica held when the call began.
   * User-level reads are scattered to every replica and merged by the caller, so each answers for
   * its own shards only (with a shared store (ScyllaDB) the others' rows are visible here too and
   * would be counted twice), and says which those were: a snapshot, so that a shard moving
   * during the call is either in both the rows and the answer's shard list or in neither.
   */
  private async userConversations(userId: string, held: ReadonlySet<number>) {
    const rows = await this.store.listUserConversations(userId);
    const { shardCount } = this.shards;
    return rows
      .filter((r) => ReplicaShards.within(held, r.conversationId, shardCount))
      .slice(0, USER_CONVERSATIONS_MAX);
  }

  /**
   * A page of the log for a member, never before the entry that added them. With maxBytes the
   * page also stops before its entries' encoded size would pass it (one entry at least), and
   * the store is read in small steps so a page of large entries is never held whole.
   */
  async getHistory(
    userId: string,
    conversationId: string,
    afterSeq: number,
    limit: number,
    maxBytes = 0,
    deviceId = "",
  ): Promise<HistoryPage> {
    const pageSize = limit === 0 ? PAGE_DEFAULT : Math.min(limit, PAGE_MAX);
    return this.shards.withState(conversationId, async (state) => {
      const member = requireMember(state, userId);
      // A device linked after the user joined reads from its link on (the RPC requires the
      // device; only in-process callers read as the user).
      const floor = deviceId === "" ? 0 : await this.floors.deviceFloor(deviceId, conversationId);
      const after = Math.max(afterSeq, member.joinedSeq - 1, floor);
      const entries =
        maxBytes > 0
          ? await this.entries.readBounded(state, after, pageSize, maxBytes)
          : await this.entries.readCommitted(state, after, pageSize);
      const last = entries[entries.length - 1];
      const reached = last === undefined ? after : Number(last.seq);
      return { entries, lastSeq: state.committedSeq, hasMore: reached < state.committedSeq };
    });
  }

  /** Every conversation of the user with its last seq and the device's delivered cursor. */
  async getSyncState(
    userId: string,
    deviceId: string,
    held = this.shards.held(),
  ): Promise<ConversationSync[]> {
    const [rows, floors] = await Promise.all([
      this.userConversations(userId, held),
      this.store.listDeviceFloors(deviceId),
    ]);
    // peekLastSeq, not getLastSeq: one ordinary read per conversation instead of a serial one
    // (bench/scylla.ts: 500 conversations were 500 Paxos reads beside the writers' LWTs). A commit
    // in flight it does not see reaches the device live, as it would a moment later anyway.
    return Promise.all(
      rows.map(async (row) => {
        const [lastSeq, cursors] = await Promise.all([
          this.store.peekLastSeq(row.conversationId),
          this.store.getDeviceCursors(row.conversationId, [deviceId]),
        ]);
        return create(ConversationSyncSchema, {
          conversationId: row.conversationId,
          lastSeq: BigInt(lastSeq),
          deliveredUpTo: BigInt(cursors[0]?.deliveredUpTo ?? 0),
          // The device's start: where its user joined, or the first seq after its link.
          joinedSeq: BigInt(Math.max(row.joinedSeq, (floors.get(row.conversationId) ?? 0) + 1)),
        });
      }),
    );
  }

  /** The user's conversations as the device sees them, most recently active first. */
  async listConversations(
    userId: string,
    deviceId: string,
    held = this.shards.held(),
  ): Promise<Conversation[]> {
    const [rows, floors] = await Promise.all([
      this.userConversations(userId, held),
      this.store.listDeviceFloors(deviceId),
    ]);
    const listed = await Promise.all(
      rows.map(async (row) => {
        const id = row.conversationId;
        const [record, members, lastSeq, cursors] = await Promise.all([
          this.store.getConversation(id),
          this.store.getMembers(id),
          this.store.peekLastSeq(id),
          this.store.getDeviceCursors(id, [deviceId]),
        ]);
        if (record === undefined) return undefined;
        const [last] = lastSeq > 0 ? await this.store.readEntries(id, lastSeq - 1, 1) : [];
        const cursor = cursors[0];
        const peer = record.kind === "direct" ? (members.find((m) => m.userId !== userId)?.userId ?? "") : "";
        return view(
          record,
          lastSeq,
          members.length,
          members.find((m) => m.userId === userId),
          cursor ? { delivered: cursor.deliveredUpTo, read: cursor.readUpTo } : undefined,
          userId,
          peer,
          Number(last?.serverTimeMs ?? BigInt(record.createdAtMs)),
          floors.get(id) ?? 0,
        );
      }),
    );
    return listed
      .filter((c): c is Conversation => c !== undefined)
      .sort((a, b) => Number(b.lastActiveMs - a.lastActiveMs));
  }

  /** One conversation with its members, for a member. */
  async getConversation(
    userId: string,
    deviceId: string,
    conversationId: string,
  ): Promise<{ conversation: Conversation; members: Member[] }> {
    return this.shards.withState(conversationId, async (state) => {
      requireMember(state, userId);
      await this.receipts.loadCursors(state, [deviceId]);
      const floor = await this.floors.deviceFloor(deviceId, conversationId);
      return {
        conversation: stateView(state, userId, deviceId, floor),
        members: [...state.members.values()].map(toMember),
      };
    });
  }

  /** Which of the peers share at least one conversation with the user. */
  async findContacts(
    userId: string,
    peerUserIds: readonly string[],
    held = this.shards.held(),
  ): Promise<{ contacts: string[]; direct: string[] }> {
    const rows = await this.userConversations(userId, held);
    const ids = new Set(rows.map((r) => r.conversationId));
    const found = new Set<string>();
    // Those with a direct conversation: the "contacts" of the last_seen privacy setting.
    const direct = new Set<string>();
    let pending = peerUserIds.filter((peer) => {
      if (peer === userId || ids.has(directConversationId(userId, peer))) {
        found.add(peer);
        if (peer !== userId) direct.add(peer);
        return false;
      }
      return true;
    });
    for (const row of rows) {
      if (pending.length === 0) break;
      if (!row.conversationId.startsWith("g_")) continue;
      const members = new Set((await this.store.getMembers(row.conversationId)).map((m) => m.userId));
      pending = pending.filter((peer) => {
        if (!members.has(peer)) return true;
        found.add(peer);
        return false;
      });
    }
    return {
      contacts: peerUserIds.filter((p) => found.has(p)),
      direct: peerUserIds.filter((p) => direct.has(p)),
    };
  }
}
