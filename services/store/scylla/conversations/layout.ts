/**
 * How a conversation's data sits in the tables: log partitions (buckets), the idempotency expiry
 * index (slots and shards), entries as blobs. These decide partition keys of stored data, so none
 * of them may change under a live keyspace.
 */
import { fromBinary } from "@bufbuild/protobuf";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { type Entry, EntrySchema } from "../../../../gen/switchboard/v1/entry_pb.js";
import { shardOf as shardBy } from "../../../common/shard.js";
import { IDEMPOTENCY_SHARDS, IDEMPOTENCY_SLOT_MS } from "../schema.js";

/** The largest unconditional batch of entries, in bytes (ScyllaDB refuses batches over 1 MiB). */
const MAX_BATCH_BYTES = 256 * 1024;

/** Engine settings the conversation port needs. */
export interface ConversationSettings {
  /** Seqs per log partition. */
  bucketSize: number;
  /** TTL of entries and idempotency records, in seconds; 0 keeps them forever. */
  entryTtlSeconds: number;
  /**
   * Idempotency records expire this long after they are written, in seconds: as long as a client
   * may retry a send. When set, the database expires them on its own and commits write no expiry
   * index row (one write per send fewer; the sweep then only finds rows written without it). 0 or
   * absent: records live as long as entries, and the sweep (expiry.ts) removes them.
   */
  idempotencyTtlSeconds?: number;
  /**
   * Encoded entry bytes one commit carries per conversation, at most, when the committer can split
   * its work (the port's maxCommitBytes); DEFAULT_MAX_COMMIT_BYTES when absent.
   */
  maxCommitBytes?: number;
}

/**
 * Entry bytes per commit unless configured. A commit's intent holds its entries base64-encoded
 * (4/3 of this) in one LWT cell, which with everything else must stay under MAX_INTENT_BYTES.
 */
export const DEFAULT_MAX_COMMIT_BYTES = 2 * 1024 * 1024;

/**
 * The largest maxCommitBytes accepted: 4/3 of it (base64) stays well under MAX_INTENT_BYTES, with
 * room for the commit's members and idempotency records.
 */
export const MAX_COMMIT_BYTES_LIMIT = 4 * 1024 * 1024;

/**
 * The largest intent (log_heads.pending) a commit may store, in bytes. Cassandra and ScyllaDB
 * refuse a mutation over max_mutation_size (commitlog_segment_size / 2: 16 MiB by default), and an
 * LWT writes the cell twice (the Paxos proposal, then the row); half of that leaves room for both
 * and for clusters with a smaller segment. An intent over it is refused before anything is
 * written: it would be refused by the database at every attempt.
 */
export const MAX_INTENT_BYTES = 8 * 1024 * 1024;

/** The log partition of a seq: floor(seq / bucketSize). */
export function bucketOf(seq: number, bucketSize: number): number {
  return Math.floor(seq / bucketSize);
}

/** The expiry slot of a time in milliseconds. */
export function slotOf(atMs: number): number {
  return Math.floor(atMs / IDEMPOTENCY_SLOT_MS);
}

/** The expiry-index shard of a conversation: the project's FNV-1a of its id, IDEMPOTENCY_SHARDS ways. */
export function shardOf(conversationId: string): number {
  return shardBy(conversationId, IDEMPOTENCY_SHARDS);
}

/** One entry, encoded. */
export interface EncodedEntry {
  /** The entry's seq. */
  seq: number;
  /** The Entry message's wire form, as stored in log_entries.entry. */
  bytes: Uint8Array;
}

/** Splits entries (ascending, contiguous) into batches within one bucket and MAX_BATCH_BYTES. */
export function entrySlices(entries: readonly EncodedEntry[], bucketSize: number): EncodedEntry[][] {
  const out: EncodedEntry[][] = [];
  let current: EncodedEntry[] = [];
  let bytes = 0;
  for (const e of entries) {
    const last = current[current.length - 1];
    if (
      last !== undefined &&
      (bucketOf(last.seq, bucketSize) !== bucketOf(e.seq, bucketSize) ||
        bytes + e.bytes.length > MAX_BATCH_BYTES)
    ) {
      out.push(current);
      current = [];
      bytes = 0;
    }
    current.push(e);
    bytes += e.bytes.length;
  }
  if (current.length > 0) out.push(current);
  return out;
}

/** An entry back from its blob (the driver's Buffer, read in place). */
export function decodeEntry(value: Uint8Array): Entry {
  return fromBinary(EntrySchema, new Uint8Array(value.buffer, value.byteOffset, value.byteLength));
}

/** The empty blob: what a cleared log_heads.pending holds. */
export const EMPTY = Buffer.alloc(0);

// The driver takes blobs only as Buffer; this is a view, not a copy.
export function blob(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Entry.expires_at_ms's field number (switchboard/v1/entry.proto). */
const EXPIRES_AT_FIELD = 22;

/**
 * An encoded entry's expires_at_ms (0 for never), read off the wire without decoding the entry:
 * commits hold entries encoded, and the payloads need not be copied to find one number.
 */
export function expiresAtOf(bytes: Uint8Array): number {
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [field, wire] = reader.tag();
    if (field === EXPIRES_AT_FIELD && wire === WireType.Varint) return Number(reader.int64());
    reader.skip(wire, field);
  }
  return 0;
}

/** The largest TTL the database accepts, in seconds (20 years). */
const MAX_TTL = 630_720_000;

/**
 * An entry row's TTL, in seconds (0 for none): the entries' own TTL, or less when the entry
 * expires sooner (a disappearing message). At least 1 second, as 0 would mean forever; reads
 * step over an entry past its expiry that the database still holds.
 *
 * One second more than the age it stands for: Cassandra and ScyllaDB count a TTL from the
 * current time truncated to the second, so a row can vanish up to a second early. Early would
 * put it out of the store (and take its attachments, services/media/retention.ts) while the
 * sequencer, which masks by the exact age, still serves it; a second late only keeps a row the
 * readers already mask.
 */
export function entryTtlOf(bytes: Uint8Array, entryTtlSeconds: number, nowMs: number): number {
  const own = entryTtlSeconds > 0 ? Math.min(MAX_TTL, entryTtlSeconds + 1) : 0;
  const expiresAtMs = expiresAtOf(bytes);
  if (expiresAtMs <= 0) return own;
  const left = Math.min(MAX_TTL, Math.max(1, Math.ceil((expiresAtMs - nowMs) / 1000) + 1));
  return own > 0 ? Math.min(own, left) : left;
}
