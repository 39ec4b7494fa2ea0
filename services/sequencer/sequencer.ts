import type { ConnectError } from "@connectrpc/connect";
import type {
  AppendItem,
  ConversationSync,
  CursorUpdate,
} from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import type { Conversation, Member } from "../../gen/switchboard/v1/conversations_pb.js";
import type { Entry, MembershipAction } from "../../gen/switchboard/v1/entry_pb.js";
import type { EventBus } from "../bus/types.js";
import { UnavailableError } from "../common/errors.js";
import type { Logger } from "../common/log.js";
import type { ConversationStore } from "../store/types.js";
import { Appender, type AppendRefusals } from "./append.js";
import { DisappearingTimers } from "./disappearing.js";
import { DeviceFloors } from "./floors.js";
import { retentionHorizon } from "./horizon.js";
import { HotStateBudget } from "./hot-state.js";
import { ConversationLog } from "./log.js";
import { Membership } from "./membership.js";
import { PublishOutbox } from "./outbox.js";
import { Receipts } from "./receipts.js";
import { ReplicaShards } from "./replica.js";
import type { Shard } from "./shard.js";
import type { Actor, Appended, HistoryPage, MemberList, SequencerOptions } from "./types.js";
import { Views } from "./views.js";

export type { Appended, SequencerOptions } from "./types.js";

/**
 * The hot state's byte budget when none is given; config/load.ts has the deployed defaults (by
 * store) and why.
 */
const DEFAULT_CACHE_BYTES = 16 * 1024 * 1024;
/** Conversation states kept in memory per shard when none is configured. */
const DEFAULT_MAX_STATES_PER_SHARD = 10_000;

/**
 * Owns conversations: membership, the ordered log, idempotency and cursors. Every mutation of a
 * conversation runs in the shard that owns it; reads of committed data may be served by any
 * replica from the store.
 *
 * This class is the face the RPC handler, the admin service and the composition root use; the
 * work is done by one collaborator per job: ReplicaShards (which shards, and the way into a
 * conversation's state), ConversationLog (seq assignment and committed reads), Appender (sends,
 * edits, reactions, deletes), Membership (conversations and their members), Receipts (cursors,
 * receipts, typing), DeviceFloors (where a linked device starts) and Views (what a device reads).
 */
export class Sequencer {
  /** Committed events on their way to the bus; holds them through a bus outage. */
  readonly outbox: PublishOutbox;
  /** The byte budget of the shards' in-memory state, with what it holds and evicts. */
  readonly hotState: HotStateBudget;
  /** Sends refused by the shard's own checks, by reason, since start. */
  readonly refusals: AppendRefusals;
  private readonly shards: ReplicaShards;
  private readonly appender: Appender;
  private readonly membership: Membership;
  private readonly timers: DisappearingTimers;
  /** Where a conversation's stored log begins (horizon.ts). */
  readonly retentionHorizon: (conversationId: string) => Promise<number>;
  private readonly receipts: Receipts;
  private readonly floors: DeviceFloors;
  private readonly views: Views;
  private readonly leased: boolean;

  constructor(store: ConversationStore, bus: EventBus, log: Logger, options: SequencerOptions) {
    const now = options.now ?? Date.now;
    this.leased = options.leased ?? false;
    this.outbox = new PublishOutbox(bus, log, options.outbox);
    this.hotState = new HotStateBudget(options.cacheBytes ?? DEFAULT_CACHE_BYTES, log);
    this.shards = new ReplicaShards(store, this.outbox, log, this.hotState, {
      shardCount: options.shardCount,
      owned: options.leased ? [] : (options.ownedShards ?? [...Array(options.shardCount).keys()]),
      leased: options.leased ?? false,
      maxStatesPerShard: options.maxStatesPerShard ?? DEFAULT_MAX_STATES_PER_SHARD,
    });
    const entries = new ConversationLog(
      store,
      now,
      options.retentionMs ?? 0,
      options.afterDeliveryMs ?? 0,
      options.receivedBounds,
    );
    this.appender = new Appender(this.shards, entries, store, options.limits, now, log);
    this.refusals = this.appender.refusals;
    this.receipts = new Receipts(this.shards, entries, store, this.outbox, bus, now);
    this.membership = new Membership(this.shards, entries, this.receipts, options.limits, now);
    this.timers = new DisappearingTimers(this.shards, entries, options.disappearingSeconds);
    this.floors = new DeviceFloors(this.shards, store);
    this.views = new Views(this.shards, entries, this.receipts, this.floors, store);
    this.retentionHorizon = (id) => retentionHorizon(store, id, now);
  }

  /** True if this replica owns the conversation's shard. */
  owns(conversationId: string): boolean {
    return this.shards.owns(conversationId);
  }

  /** The shard that owns a conversation, or FailedPrecondition when another replica does. */
  shardFor(conversationId: string): Shard {
    return this.shards.shardFor(conversationId);
  }

  /** The logical shards this replica owns, ascending. */
  get ownedShards(): number[] {
    return this.shards.owned;
  }

  /**
   * The shards held now, as a snapshot. The user-level reads (sync state, listings, contacts,
   * device links) answer for exactly the snapshot they are given, and say so to the caller.
   */
  heldShards(): ReadonlySet<number> {
    const held = this.shards.held();
    // An answer for no shard would read, to a router of an older version, as an answer for its
    // home shards: a replica that holds none (starting, fenced) refuses instead.
    if (held.size === 0 && this.leased) {
      throw new UnavailableError("this sequencer replica serves no shard now; retry", { retryAfterMs: 500 });
    }
    return held;
  }

  /** The shards and where they can move: what the lease protocol (ownership.ts) drives. */
  get replicaShards(): ReplicaShards {
    return this.shards;
  }

  /** Waits for every pending commit and refuses new work. */
  async close(): Promise<void> {
    await this.shards.close();
    this.outbox.close();
  }

  /** Appends a batch of items; results in request order, one refusal does not affect others. */
  append(items: readonly AppendItem[]): Promise<Array<Appended | ConnectError>> {
    return this.appender.append(items);
  }

  /** The direct conversation of two users, created on first use. */
  openDirect(userId: string, peerUserId: string, deviceId: string): Promise<Conversation> {
    return this.membership.openDirect(userId, peerUserId, deviceId);
  }

  /** Creates a group with the creator as admin. */
  createGroup(
    userId: string,
    deviceId: string,
    title: string,
    memberIds: readonly string[],
  ): Promise<Conversation> {
    return this.membership.createGroup(userId, deviceId, title, memberIds);
  }

  /** Changes a group's membership, roles or title; returns the entry, or undefined for a no-op. */
  changeMembership(
    actor: Actor,
    conversationId: string,
    action: MembershipAction,
    userIds: readonly string[],
    title: string,
  ): Promise<Entry | undefined> {
    return this.membership.changeMembership(actor, conversationId, action, userIds, title);
  }

  /** Sets a conversation's disappearing-message timer; returns its entry, or undefined for a no-op. */
  setDisappearingTimer(
    actor: Actor,
    conversationId: string,
    durationSeconds: number,
    adminsOnly: boolean,
  ): Promise<Entry | undefined> {
    return this.timers.set(actor, conversationId, durationSeconds, adminsOnly);
  }

  /**
   * A page of the log for a member, never before the entry that added them (nor, with a
   * device, before the device was linked). With maxBytes (in bytes, encoded) the page also
   * stops before passing it, one entry at least.
   */
  getHistory(
    userId: string,
    conversationId: string,
    afterSeq: number,
    limit: number,
    maxBytes = 0,
    deviceId = "",
  ): Promise<HistoryPage> {
    return this.views.getHistory(userId, conversationId, afterSeq, limit, maxBytes, deviceId);
  }

  /** Moves cursors forward, saves them, and issues receipts to the senders passed over. */
  updateCursors(updates: readonly CursorUpdate[]): Promise<void> {
    return this.receipts.updateCursors(updates);
  }

  /** Records where a device about to be linked starts in each of the user's conversations here. */
  recordDeviceLink(userId: string, deviceId: string, held?: ReadonlySet<number>): Promise<number> {
    return this.floors.recordDeviceLink(userId, deviceId, held);
  }

  /** Every conversation of the user with its last seq and the device's delivered cursor. */
  getSyncState(userId: string, deviceId: string, held?: ReadonlySet<number>): Promise<ConversationSync[]> {
    return this.views.getSyncState(userId, deviceId, held);
  }

  /** The user's conversations as the device sees them, most recently active first. */
  listConversations(userId: string, deviceId: string, held?: ReadonlySet<number>): Promise<Conversation[]> {
    return this.views.listConversations(userId, deviceId, held);
  }

  /** One conversation with its members, for a member. */
  getConversation(
    userId: string,
    deviceId: string,
    conversationId: string,
  ): Promise<{ conversation: Conversation; members: Member[] }> {
    return this.views.getConversation(userId, deviceId, conversationId);
  }

  /** Current members, the membership version and the mutes in force, for fanout. */
  getMembers(conversationId: string): Promise<MemberList> {
    return this.membership.getMembers(conversationId);
  }

  /** Mutes (or with 0 unmutes) a conversation for one member: no push wake-ups until then. */
  setMute(userId: string, conversationId: string, mutedUntilMs: number): Promise<void> {
    return this.membership.setMute(userId, conversationId, mutedUntilMs);
  }

  /** Relays a typing indicator to the members; never stored. */
  relayTyping(userId: string, deviceId: string, conversationId: string, active: boolean): Promise<void> {
    return this.receipts.relayTyping(userId, deviceId, conversationId, active);
  }

  /** Which of the peers share at least one conversation with the user, and which a direct one. */
  findContacts(
    userId: string,
    peerUserIds: readonly string[],
    held?: ReadonlySet<number>,
  ): Promise<{ contacts: string[]; direct: string[] }> {
    return this.views.findContacts(userId, peerUserIds, held);
  }
}
