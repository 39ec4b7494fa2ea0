/** The conversation port: the ordered log, members, idempotency and cursors (see ../types.ts). */
import type { Entry } from "../../../gen/switchboard/v1/entry_pb.js";

/** Direct or group. */
export type ConversationKind = "direct" | "group";

/** A member's role in a conversation. */
export type MemberRole = "member" | "admin";

/** A conversation's metadata. */
export interface ConversationRecord {
  /** The conversation id ("d_..." or "g_..."). */
  id: string;
  /** Direct or group. */
  kind: ConversationKind;
  /** The group's title; empty for direct conversations. */
  title: string;
  /** Creation time, in milliseconds since the Unix epoch. */
  createdAtMs: number;
  /** The seq of the latest membership entry (0 before the first one is written). */
  membersVersion: number;
  /**
   * The messages pinned now, in the order they were pinned (services/sequencer/pins.ts); empty or
   * undefined for none. A record written with pins undefined keeps the pins stored before (an
   * engine may store them apart from the rest); written with [], it has none.
   */
  pins?: PinRecord[];
  /**
   * The disappearing-message timer, in seconds (0 off); undefined until one is first set. Entries
   * devices send while it is on expire that long after their commit time.
   */
  disappearingSeconds?: number;
  /** Groups: only admins may change the timer. Undefined until a timer is first set. */
  disappearingAdminsOnly?: boolean;
}

/** A pinned message of a conversation. */
export interface PinRecord {
  /** The pinned message's seq. */
  seq: number;
  /** The seq of the pin entry that pinned it. */
  pinSeq: number;
  /** Who pinned it. */
  byUserId: string;
  /** When it was pinned (the pin entry's commit time), in milliseconds since the Unix epoch. */
  atMs: number;
  /** When the pinned message expires (a disappearing message), in milliseconds since the Unix epoch; undefined for never. */
  expiresAtMs?: number;
}

/** A member of a conversation. */
export interface MemberRecord {
  /** The member. */
  userId: string;
  /** Their role. */
  role: MemberRole;
  /** The seq of the membership entry that added them; they may read entries from this seq on. */
  joinedSeq: number;
  /** When they were added, in milliseconds since the Unix epoch. */
  addedAtMs: number;
  /** The highest seq any of their devices acknowledged (user-level delivered receipt). */
  deliveredUpTo: number;
  /** The highest seq they marked read. */
  readUpTo: number;
  /** No push wake-ups for this conversation until then, in milliseconds since the Unix epoch. */
  mutedUntilMs?: number;
}

/** A device's cursors in one conversation. */
export interface DeviceCursor {
  /** The conversation. */
  conversationId: string;
  /** The device. */
  deviceId: string;
  /** Every entry up to this seq was received by the device. */
  deliveredUpTo: number;
  /** Every entry up to this seq was read on the device. */
  readUpTo: number;
}

/** A member's user-level cursors in one conversation. */
export interface MemberCursor {
  /** The conversation. */
  conversationId: string;
  /** The member. */
  userId: string;
  /** The highest seq any of the member's devices acknowledged. */
  deliveredUpTo: number;
  /** The highest seq the member read. */
  readUpTo: number;
}

/**
 * Where a device linked to a user who was already in a conversation starts reading it: the
 * device is served entries after floorSeq only, never the history from before its link.
 */
export interface DeviceFloor {
  /** The conversation. */
  conversationId: string;
  /** The linked device. */
  deviceId: string;
  /** The conversation's last seq when the device was linked. */
  floorSeq: number;
}

/** The idempotency record of one send. */
export interface IdempotencyKey {
  /** The sending device. */
  deviceId: string;
  /** The device's client_msg_id. */
  clientMsgId: string;
  /** The seq the send was committed at. */
  seq: number;
}

/** One membership row of a user, as indexed by user. */
export interface UserConversation {
  /** The conversation. */
  conversationId: string;
  /** The seq from which the user can read the conversation. */
  joinedSeq: number;
}

/**
 * Everything one commit does to one conversation. All parts of all writes passed to one
 * ConversationStore.commit call are applied atomically.
 */
export interface ConversationWrite {
  /** The conversation written to. */
  conversationId: string;
  /** Create or replace the conversation's metadata. */
  conversation?: ConversationRecord;
  /**
   * New log entries, in ascending seq order, continuing the log with no gap: the first entry's
   * seq is the current last seq + 1. The store refuses (StoreError "conflict") a seq that is
   * already written, which is what fences two writers that both believe they own a shard.
   */
  append?: Entry[];
  /** Idempotency records for appended entries. */
  idempotency?: IdempotencyKey[];
  /** Existing entries rewritten in place (tombstones of delete-for-everyone). */
  replace?: Entry[];
  /** Members added, or whose role changed. Also maintains the per-user index. */
  putMembers?: MemberRecord[];
  /** Members removed (by user id). Also maintains the per-user index. */
  removeMembers?: string[];
}

/** Entries a store committed for a writer that did not finish its commit (see onRecovered). */
export interface RecoveredCommit {
  /** The conversation appended to. */
  conversationId: string;
  /** The entries the commit appended, ascending by seq. */
  entries: Entry[];
}

/**
 * The seq up to which every entry of a conversation has been received by everyone who must
 * receive it, given its current members; 0 for none. Retention after delivery deletes no further.
 */
export type ReceivedUpTo = (conversationId: string, members: readonly MemberRecord[]) => Promise<number>;

/** The conversation log, membership, idempotency index and cursors. */
export interface ConversationStore {
  /**
   * The bytes of entries (encoded, appended and rewritten) one commit should carry, at most.
   * A caller that can split its work at operation boundaries (a sequencer shard's batches) keeps
   * each commit within it; a single operation larger than it commits alone. Undefined: no bound.
   */
  readonly maxCommitBytes?: number;
  /**
   * Registers a listener told of every commit this store finished for a writer that did not: the
   * writer's process died, or its commit failed after part of it was written (ScyllaDB's recovery
   * of a pending intent). Nobody published those entries' events; the listener does. Engines whose
   * commits are all or nothing (LMDB) never call it and may leave it out. Returns the unsubscribe.
   */
  onRecovered?(listener: (recovered: RecoveredCommit) => void): () => void;
  /**
   * Applies writes atomically and durably. Concurrent calls are group-committed: many callers'
   * writes share one transaction and one fsync.
   */
  commit(writes: ConversationWrite[]): Promise<void>;
  /** The conversation's metadata, or undefined if it does not exist. */
  getConversation(conversationId: string): Promise<ConversationRecord | undefined>;
  /** All members, in no particular order. */
  getMembers(conversationId: string): Promise<MemberRecord[]>;
  /** The seq of the last entry, 0 for an empty or unknown conversation. */
  getLastSeq(conversationId: string): Promise<number>;
  /**
   * The seq of the last entry as an ordinary read sees it: never past what is committed, but it
   * may trail a commit in flight, and it does not finish a commit its writer left pending (which
   * getLastSeq does, and which is what a shard loading a conversation needs). For views of many
   * conversations at once (listings, sync states): on ScyllaDB it is one plain read instead of a
   * LOCAL_SERIAL (Paxos) read that competes with the writers' LWTs.
   */
  peekLastSeq(conversationId: string): Promise<number>;
  /** Entries with seq > afterSeq, ascending, at most limit of them. */
  readEntries(conversationId: string, afterSeq: number, limit: number): Promise<Entry[]>;
  /** The seq committed for (deviceId, clientMsgId) in the conversation, if any. */
  getIdempotency(conversationId: string, deviceId: string, clientMsgId: string): Promise<number | undefined>;
  /** The conversations a user is a member of. */
  listUserConversations(userId: string): Promise<UserConversation[]>;
  /** The cursors of the given devices in a conversation; devices without cursors are left out. */
  getDeviceCursors(conversationId: string, deviceIds: readonly string[]): Promise<DeviceCursor[]>;
  /**
   * Saves cursors. The caller guarantees monotonicity (it only passes higher values); the store
   * writes what it is given. Durable like every write, but never blocks entry commits.
   */
  saveCursors(devices: readonly DeviceCursor[], members: readonly MemberCursor[]): Promise<void>;
  /**
   * Deletes log entries whose expiresAtMs (disappearing messages) is at or before nowMs, at most
   * limit of them (one bounded batch; call again while it returns limit), and returns how many it
   * deleted. Their seqs keep their place: the head does not move and readEntries steps over them.
   * Engines whose database expires rows itself (ScyllaDB writes such entries with a TTL ending at
   * their expiry) delete nothing here and return 0; either way, once this returns, readEntries no
   * longer returns an entry that expired at or before nowMs.
   */
  deleteExpiredEntries(nowMs: number, limit: number): Promise<number>;
  /**
   * True when entries are written with a database TTL of the server's retention (ScyllaDB): the
   * database deletes old entries itself and deleteEntriesOlderThan has nothing to do.
   */
  readonly retentionByTtl?: boolean;
  /**
   * Deletes log entries committed before olderThanMs (server-wide retention), oldest first, at most
   * limit of them per call, and returns how many. Work per call is bounded: it walks some
   * conversations and resumes after the last one on the next call, so a call that returns less
   * than limit may not have walked them all yet. Seqs keep their place, as with
   * deleteExpiredEntries. With retentionByTtl it deletes nothing and returns 0.
   */
  deleteEntriesOlderThan(olderThanMs: number, limit: number): Promise<number>;
  /**
   * Deletes log entries committed before olderThanMs up to the seq receivedUpTo gives for their
   * conversation (the caller decides what "received" means: services/sequencer/delivery-bound.ts
   * asks every active device of every member), oldest first, at most limit per call, resuming
   * like deleteEntriesOlderThan; returns how many. receivedUpTo is asked only for conversations
   * with entries old enough, with their current members. Seqs keep their place. Every engine
   * deletes here (a TTL cannot wait for acks).
   */
  deleteDeliveredOlderThan(olderThanMs: number, limit: number, receivedUpTo: ReceivedUpTo): Promise<number>;
  /**
   * Deletes idempotency records written before olderThanMs (milliseconds since the Unix epoch);
   * returns how many were removed.
   */
  expireIdempotency(olderThanMs: number): Promise<number>;
  /**
   * Records where linked devices start reading conversations (writes what it is given; a
   * device is linked once, so its floors are written once). Durable like every write.
   */
  putDeviceFloors(floors: readonly DeviceFloor[]): Promise<void>;
  /** A device's floor in one conversation; undefined when none was recorded. */
  getDeviceFloor(deviceId: string, conversationId: string): Promise<number | undefined>;
  /** Every floor recorded for a device, by conversation id. */
  listDeviceFloors(deviceId: string): Promise<Map<string, number>>;
}
