/**
 * The conversation port's writes on LMDB, as units of plain data: what the write thread
 * (write-thread.ts) posts to its worker and the worker applies, each unit inside the group-committed
 * write transaction as a child transaction of its own (engine.ts, "Writes"). Everything here runs
 * on the worker; nothing holds a closure over the caller's state, so a unit survives the structured
 * clone between the threads unchanged.
 */
import type { Database, Key, RootDatabase } from "lmdb";
import { StoreError } from "../errors.js";
import { conflict, conversationRecord, entryTimes, memberRecord } from "../records.js";
import type {
  ConversationRecord,
  DeviceCursor,
  DeviceFloor,
  IdempotencyKey,
  MemberCursor,
  MemberRecord,
} from "../types.js";

/** An idempotency record: the committed seq and when it was written, in ms since the Unix epoch. */
export interface IdempotencyValue {
  seq: number;
  atMs: number;
}

/** A device's cursors, keyed by [conversationId, deviceId]. */
export interface DeviceCursorValue {
  deliveredUpTo: number;
  readUpTo: number;
}

/** The sub-databases of the conversation port; engine.ts documents the key layout. */
export interface ConversationDbs {
  conversations: Database<ConversationRecord, Key>;
  entries: Database<Uint8Array, Key>;
  heads: Database<number, Key>;
  idempotency: Database<IdempotencyValue, Key>;
  idempotencyByTime: Database<true, Key>;
  /** Entries that expire, keyed [expiresAtMs, conversationId, seq]: what deleteExpiredEntries walks. */
  entriesByExpiry: Database<true, Key>;
  members: Database<MemberRecord, Key>;
  userConversations: Database<number, Key>;
  deviceCursors: Database<DeviceCursorValue, Key>;
  deviceFloors: Database<number, Key>;
}

/** Opens the conversation port's sub-databases; the engine and the write worker open the same. */
export function conversationDbs(root: RootDatabase): ConversationDbs {
  const db = <V>(name: string, encoding: "msgpack" | "binary" = "msgpack"): Database<V, Key> =>
    root.openDB<V, Key>({ name, encoding });
  return {
    conversations: db("conversations"),
    entries: db("entries", "binary"),
    heads: db("heads"),
    idempotency: db("idempotency"),
    idempotencyByTime: db("idempotencyByTime"),
    entriesByExpiry: db("entriesByExpiry"),
    members: db("members"),
    userConversations: db("userConversations"),
    deviceCursors: db("deviceCursors"),
    deviceFloors: db("deviceFloors"),
  };
}

// Buffers sort after every string and number in lmdb's ordered-binary keys, so [prefix, HIGH] is an
// exclusive upper bound for every key that starts with prefix.
export const HIGH = Buffer.from([0xff]);

// Expiry deletes in slices so that a large backlog neither builds one huge transaction nor holds
// the writer for long.
export const EXPIRE_SLICE = 2_000;

// Conversations one retention call walks at most, so a store of many conversations with nothing
// old is walked in bounded steps too.
export const RETENTION_CONVERSATIONS_PER_CALL = 10_000;

// Conversations one unit of that walk covers at most. The write thread applies a unit in the
// transaction that commits the sends waiting beside it, so a unit that walked all 10,000 held
// those sends as long: 134 ms at 5,000 conversations, once a minute (docs/benchmarks.md,
// thirty-ninth pass). 500 keeps a unit to a few milliseconds; a call takes several.
export const RETENTION_CONVERSATIONS_PER_UNIT = 500;

// Cursor rows (devices and members) one write transaction takes, past its first cursor unit
// (takeUnits), and the rows of one cursor unit (LmdbConversationStore.saveCursors). The port
// promises that saving cursors never blocks entry commits. When 10,000 streams caught up at once,
// units of 812-6,279 cursors shared a transaction with sends for 44-113 ms (docs/benchmarks.md,
// thirty-ninth pass). 250 rows take under a millisecond to put; a storm takes more transactions,
// and the sends beside it wait for one of them, not for the storm (fortieth pass).
export const CURSOR_ROWS_PER_TRANSACTION = 250;

/** An entry encoded for storage, before the transaction. */
export interface EncodedEntry {
  seq: number;
  bytes: Uint8Array;
  /** When the entry expires, in ms since the Unix epoch; 0 for never. */
  expiresAtMs: number;
}

/** A ConversationWrite with its entries encoded (conversations.ts, prepare). */
export interface PreparedWrite {
  conversationId: string;
  conversation?: ConversationRecord;
  append: EncodedEntry[];
  replace: EncodedEntry[];
  idempotency?: IdempotencyKey[];
  putMembers?: MemberRecord[];
  removeMembers?: string[];
}

/** The conversation port's writes, each applied as one abortable unit. */
export type ConversationUnit =
  | { op: "commit"; writes: PreparedWrite[] }
  | { op: "cursors"; devices: readonly DeviceCursor[]; members: readonly MemberCursor[] }
  | { op: "floors"; floors: readonly DeviceFloor[] }
  | {
      op: "prefixes";
      olderThanMs: number;
      /** Entries deleted at most. */
      max: number;
      /** The conversation to start with (where the last call stopped); absent: the first. */
      from?: string;
      /** The seq up to which each conversation may lose entries; absent: no bound but age. */
      bounds?: Map<string, number>;
    }
  | { op: "expired"; nowMs: number; max: number }
  | { op: "idempotency"; olderThanMs: number };

/** What a "prefixes" unit did: how many entries it deleted and where the next call starts. */
export interface PrefixesResult {
  deleted: number;
  resumeAt?: string;
}

/** What an "idempotency" unit did: index rows walked (a full slice: call again) and records removed. */
export interface IdempotencySlice {
  scanned: number;
  removed: number;
}

/**
 * The write thread's units for its next transaction, in arrival order, and those it defers to
 * the one after. Every unit but a cursor unit is taken. Cursor units are taken in their order
 * while the transaction holds fewer than CURSOR_ROWS_PER_TRANSACTION cursor rows (the first
 * always), and once one is deferred, every cursor unit after it is too: cursor units keep their
 * order among themselves, and the commits queued behind a reconnect storm's cursors go ahead of
 * what does not fit. Overtaking them loses nothing, since a member's cursors only move forward
 * (applyCursors), and device cursors have no other writer.
 */
export function takeUnits<Q extends { unit: ConversationUnit }>(
  queued: readonly Q[],
): { units: Q[]; deferred: Q[] } {
  const units: Q[] = [];
  const deferred: Q[] = [];
  let rows = 0;
  let full = false;
  for (const queuedUnit of queued) {
    const { unit } = queuedUnit;
    if (unit.op === "cursors") {
      const n = unit.devices.length + unit.members.length;
      full ||= rows > 0 && rows + n > CURSOR_ROWS_PER_TRANSACTION;
      if (full) {
        deferred.push(queuedUnit);
        continue;
      }
      rows += n;
    }
    units.push(queuedUnit);
  }
  return { units, deferred };
}

/** Applies a unit inside the write transaction; the caller runs it as a child transaction. */
export function applyUnit(dbs: ConversationDbs, unit: ConversationUnit): unknown {
  switch (unit.op) {
    case "commit":
      return applyCommit(dbs, unit.writes);
    case "cursors":
      return applyCursors(dbs, unit.devices, unit.members);
    case "floors":
      for (const f of unit.floors) dbs.deviceFloors.put([f.deviceId, f.conversationId], f.floorSeq);
      return undefined;
    case "prefixes":
      return deletePrefixes(dbs, unit);
    case "expired":
      return deleteExpired(dbs, unit.nowMs, unit.max);
    case "idempotency":
      return expireIdempotencySlice(dbs, unit.olderThanMs);
  }
}

// Its reads see every unit committed before it in the same batch; that is what makes the seq fence
// hold between concurrent callers. Everything is checked before the first put, and the unit is a
// child transaction besides, so a refused or failed call leaves nothing behind and does not disturb
// the other callers in the batch.
function applyCommit(dbs: ConversationDbs, prepared: readonly PreparedWrite[]): void {
  const heads = new Map<string, number>();
  for (const { conversationId: id, append, replace } of prepared) {
    let head = heads.get(id) ?? dbs.heads.get(id) ?? 0;
    const first = append[0];
    if (first !== undefined) {
      if (first.seq !== head + 1) {
        throw conflict(`append to ${id} starts at seq ${first.seq} but the last seq is ${head}`);
      }
      for (const e of append) {
        if (dbs.entries.doesExist([id, e.seq])) throw conflict(`seq ${e.seq} of ${id} is already written`);
      }
      head = append[append.length - 1]!.seq;
    }
    for (const e of replace) {
      // The log has no holes, so 1..head is exactly the set of written seqs.
      if (e.seq > head) throw new StoreError("not_found", `cannot replace unwritten seq ${e.seq} of ${id}`);
    }
    heads.set(id, head);
  }

  const atMs = Date.now();
  for (const write of prepared) {
    const { conversationId: id, append, replace } = write;
    if (write.conversation !== undefined) dbs.conversations.put(id, withStoredPins(dbs, write.conversation));
    for (const e of append) {
      dbs.entries.put([id, e.seq], e.bytes);
      if (e.expiresAtMs > 0) dbs.entriesByExpiry.put([e.expiresAtMs, id, e.seq], true);
    }
    const last = append[append.length - 1];
    if (last !== undefined) dbs.heads.put(id, last.seq);
    for (const k of write.idempotency ?? []) {
      const key = [id, k.deviceId, k.clientMsgId];
      const previous = dbs.idempotency.get(key);
      if (previous !== undefined) dbs.idempotencyByTime.remove([previous.atMs, ...key]);
      dbs.idempotency.put(key, { seq: k.seq, atMs });
      dbs.idempotencyByTime.put([atMs, ...key], true);
    }
    for (const e of replace) {
      // A rewrite (a tombstone) keeps its entry's expiry, so the index row stays the same.
      dbs.entries.put([id, e.seq], e.bytes);
      if (e.expiresAtMs > 0) dbs.entriesByExpiry.put([e.expiresAtMs, id, e.seq], true);
    }
    for (const m of write.putMembers ?? []) {
      dbs.members.put([id, m.userId], memberRecord(m));
      dbs.userConversations.put([m.userId, id], m.joinedSeq);
    }
    for (const userId of write.removeMembers ?? []) {
      dbs.members.remove([id, userId]);
      dbs.userConversations.remove([userId, id]);
    }
  }
}

/** The record to store: one written with pins undefined keeps the stored pins (the port's rule). */
function withStoredPins(dbs: ConversationDbs, c: ConversationRecord): ConversationRecord {
  const record = conversationRecord(c);
  if (record.pins !== undefined) return record;
  const pins = dbs.conversations.get(c.id)?.pins;
  return pins === undefined ? record : { ...record, pins };
}

function applyCursors(
  dbs: ConversationDbs,
  devices: readonly DeviceCursor[],
  members: readonly MemberCursor[],
): void {
  for (const d of devices) {
    dbs.deviceCursors.put([d.conversationId, d.deviceId], {
      deliveredUpTo: d.deliveredUpTo,
      readUpTo: d.readUpTo,
    });
  }
  for (const m of members) {
    const key = [m.conversationId, m.userId];
    const member = dbs.members.get(key);
    // A cursor can trail a removal; it must not bring the member back.
    if (member === undefined) continue;
    // Only forward: a commit queued behind this unit may have been applied first (takeUnits), and
    // a commit that puts the member (a promotion, a demotion) carries the sequencer's cursors as
    // they were then, the same as this unit's or higher.
    const deliveredUpTo = Math.max(member.deliveredUpTo, m.deliveredUpTo);
    const readUpTo = Math.max(member.readUpTo, m.readUpTo);
    if (deliveredUpTo === member.deliveredUpTo && readUpTo === member.readUpTo) continue;
    dbs.members.put(key, { ...member, deliveredUpTo, readUpTo });
  }
}

/**
 * Deletes, conversation by conversation, the entries committed before olderThanMs up to each
 * conversation's bound, at most max; walks at most RETENTION_CONVERSATIONS_PER_UNIT conversations
 * and says where the next unit resumes.
 */
function deletePrefixes(
  dbs: ConversationDbs,
  unit: Extract<ConversationUnit, { op: "prefixes" }>,
): PrefixesResult {
  const { olderThanMs, max, from, bounds } = unit;
  let deleted = 0;
  // Keys are collected before anything is removed: nothing is deleted under a live iterator.
  const ids = [
    ...dbs.heads.getKeys({
      ...(from !== undefined && { start: from }),
      limit: RETENTION_CONVERSATIONS_PER_UNIT + 1,
    }),
  ] as string[];
  for (const [i, id] of ids.entries()) {
    // Bounded work even where nothing is old: the next unit resumes here.
    if (i === RETENTION_CONVERSATIONS_PER_UNIT) return { deleted, resumeAt: id };
    // A conversation without a bound deletes nothing.
    const bound = bounds === undefined ? Number.POSITIVE_INFINITY : (bounds.get(id) ?? 0);
    // Entries are in commit order, so the old ones are a prefix of what is left of the log.
    const old: Array<{ key: [string, number]; expiresAtMs: number }> = [];
    for (const { key, value } of dbs.entries.getRange({ start: [id, 0], end: [id, HIGH] })) {
      const seq = (key as [string, number])[1];
      const times = entryTimes(value);
      if (seq > bound || times.serverTimeMs >= olderThanMs || deleted + old.length >= max) break;
      old.push({ key: key as [string, number], expiresAtMs: times.expiresAtMs });
    }
    for (const { key, expiresAtMs } of old) {
      dbs.entries.remove(key);
      if (expiresAtMs > 0) dbs.entriesByExpiry.remove([expiresAtMs, id, key[1]]);
    }
    deleted += old.length;
    // This conversation may have more: the next call starts with it.
    if (deleted >= max) return { deleted, resumeAt: id };
  }
  return { deleted };
}

function deleteExpired(dbs: ConversationDbs, nowMs: number, max: number): number {
  // Keys are [expiresAtMs, conversationId, seq]; [nowMs, HIGH] sorts after every key that
  // expires at nowMs. The head stays: the seqs keep their place in the numbering. LMDB reuses
  // the freed pages for later writes, so the file stops growing rather than shrinking.
  const keys = [...dbs.entriesByExpiry.getKeys({ end: [nowMs, HIGH], limit: max })];
  for (const key of keys) {
    const [, id, seq] = key as [number, string, number];
    dbs.entriesByExpiry.remove(key);
    dbs.entries.remove([id, seq]);
  }
  return keys.length;
}

function expireIdempotencySlice(dbs: ConversationDbs, olderThanMs: number): IdempotencySlice {
  let removed = 0;
  // Keys are [atMs, conversationId, deviceId, clientMsgId]; [olderThanMs] sorts before every
  // key written at exactly olderThanMs, so those stay.
  const keys = [...dbs.idempotencyByTime.getKeys({ end: [olderThanMs], limit: EXPIRE_SLICE })];
  for (const key of keys) {
    const [atMs, ...primary] = key as [number, string, string, string];
    dbs.idempotencyByTime.remove(key);
    // A rewrite drops the old index row in the same unit; the check still keeps any stray
    // row from deleting a record written later than it.
    if (dbs.idempotency.get(primary)?.atMs === atMs) {
      dbs.idempotency.remove(primary);
      removed++;
    }
  }
  return { scanned: keys.length, removed };
}
