/**
 * The conversation port on ScyllaDB. This file composes the parts in conversations/, each with
 * one job:
 *
 *   conversations/log.ts      the fence: appends through LWT reservations of the head row
 *   conversations/intent.ts   a commit's plan and the intent stored with its reservation
 *   conversations/head.ts     the head row (last seq, the pending commit)
 *   conversations/rows.ts     every other row a commit writes (entries, members, idempotency)
 *   conversations/reads.ts    metadata, members, log pages, idempotency and per-user reads
 *   conversations/cursors.ts  device and member cursors, device floors
 *   conversations/expiry.ts   the idempotency sweep
 *   conversations/layout.ts   partition keys and encodings (buckets, slots, shards, blobs)
 *
 * The fence: a conversation's head row (log_heads) is written only by LWT. A commit that appends
 * first reserves its seqs there (`IF last_seq = first - 1 AND pending_id = ''`), storing its whole
 * intent; then writes the entries and everything else; then advances last_seq and clears the
 * reservation (`IF pending_id = mine`). docs/scylla.md gives the crash analysis.
 */
import type { Entry } from "../../../gen/switchboard/v1/entry_pb.js";
import type { Logger } from "../../common/log.js";
import type {
  ConversationRecord,
  ConversationStore,
  ConversationWrite,
  DeviceCursor,
  DeviceFloor,
  MemberCursor,
  MemberRecord,
  ReceivedUpTo,
  RecoveredCommit,
  UserConversation,
} from "../types.js";
import { ConversationCursors } from "./conversations/cursors.js";
import { IdempotencyExpiry } from "./conversations/expiry.js";
import { type ConversationSettings, DEFAULT_MAX_COMMIT_BYTES } from "./conversations/layout.js";
import { ConversationLog } from "./conversations/log.js";
import { ConversationReads } from "./conversations/reads.js";
import { DeliveredRetention } from "./conversations/retention.js";
import { CommitRows } from "./conversations/rows.js";
import type { Cql } from "./schema.js";

export { PENDING_GRACE_MS } from "./conversations/head.js";
export { decodeIntent, encodeIntent, type Intent, type MemberOp } from "./conversations/intent.js";
export {
  bucketOf,
  type ConversationSettings,
  DEFAULT_MAX_COMMIT_BYTES,
  type EncodedEntry,
  entrySlices,
  shardOf,
  slotOf,
} from "./conversations/layout.js";

/** The conversation port on ScyllaDB: each call goes to the part that does its job. */
export class ScyllaConversationStore implements ConversationStore {
  /** A commit's entries go base64 into one LWT cell (its intent): see ConversationSettings. */
  readonly maxCommitBytes: number;
  private readonly log: ConversationLog;
  private readonly reads: ConversationReads;
  private readonly cursors: ConversationCursors;
  private readonly expiry: IdempotencyExpiry;
  private readonly delivered: DeliveredRetention;

  constructor(cql: Cql, settings: ConversationSettings, log?: Logger) {
    this.maxCommitBytes = settings.maxCommitBytes ?? DEFAULT_MAX_COMMIT_BYTES;
    this.log = new ConversationLog(cql, new CommitRows(cql, settings), log);
    this.reads = new ConversationReads(cql, settings);
    this.cursors = new ConversationCursors(cql);
    this.expiry = new IdempotencyExpiry(cql);
    this.delivered = new DeliveredRetention(cql, this.reads, settings);
  }

  commit(writes: ConversationWrite[]): Promise<void> {
    return this.log.commit(writes);
  }

  onRecovered(listener: (recovered: RecoveredCommit) => void): () => void {
    return this.log.onRecovered(listener);
  }

  getConversation(conversationId: string): Promise<ConversationRecord | undefined> {
    return this.reads.getConversation(conversationId);
  }

  getMembers(conversationId: string): Promise<MemberRecord[]> {
    return this.reads.getMembers(conversationId);
  }

  getLastSeq(conversationId: string): Promise<number> {
    return this.log.getLastSeq(conversationId);
  }

  peekLastSeq(conversationId: string): Promise<number> {
    return this.reads.peekLastSeq(conversationId);
  }

  readEntries(conversationId: string, afterSeq: number, limit: number): Promise<Entry[]> {
    return this.reads.readEntries(conversationId, afterSeq, limit);
  }

  getIdempotency(conversationId: string, deviceId: string, clientMsgId: string): Promise<number | undefined> {
    return this.reads.getIdempotency(conversationId, deviceId, clientMsgId);
  }

  listUserConversations(userId: string): Promise<UserConversation[]> {
    return this.reads.listUserConversations(userId);
  }

  getDeviceCursors(conversationId: string, deviceIds: readonly string[]): Promise<DeviceCursor[]> {
    return this.cursors.getDeviceCursors(conversationId, deviceIds);
  }

  saveCursors(devices: readonly DeviceCursor[], members: readonly MemberCursor[]): Promise<void> {
    return this.cursors.saveCursors(devices, members);
  }

  putDeviceFloors(floors: readonly DeviceFloor[]): Promise<void> {
    return this.cursors.putDeviceFloors(floors);
  }

  getDeviceFloor(deviceId: string, conversationId: string): Promise<number | undefined> {
    return this.cursors.getDeviceFloor(deviceId, conversationId);
  }

  listDeviceFloors(deviceId: string): Promise<Map<string, number>> {
    return this.cursors.listDeviceFloors(deviceId);
  }

  /**
   * Nothing to do: entries that expire are written with a TTL ending at their expiry (rows.ts),
   * so the database deletes them, and reads step over any it still holds past it (reads.ts).
   */
  async deleteExpiredEntries(_nowMs: number, _limit: number): Promise<number> {
    return 0;
  }

  /** Retention is the entries' TTL here (entryTtlSeconds, which the configuration sets from it). */
  readonly retentionByTtl = true;

  async deleteEntriesOlderThan(_olderThanMs: number, _limit: number): Promise<number> {
    return 0;
  }

  deleteDeliveredOlderThan(olderThanMs: number, limit: number, receivedUpTo: ReceivedUpTo): Promise<number> {
    return this.delivered.deleteDeliveredOlderThan(olderThanMs, limit, receivedUpTo);
  }

  expireIdempotency(olderThanMs: number): Promise<number> {
    return this.expiry.expireIdempotency(olderThanMs);
  }
}
