import { fromBinary } from "@bufbuild/protobuf";
import type { Database, Key } from "lmdb";
import { type Entry, EntrySchema } from "../../../gen/switchboard/v1/entry_pb.js";
import { entryBytes } from "../../common/entry-bytes.js";
import { StoreError } from "../errors.js";
import { conflict, conversationRecord, entryTimes, memberRecord, seqOf } from "../records.js";
import type {
  ConversationRecord,
  ConversationStore,
  ConversationWrite,
  DeviceCursor,
  DeviceFloor,
  MemberCursor,
  MemberRecord,
  ReceivedUpTo,
  UserConversation,
} from "../types.js";

/** Runs fn as one abortable unit inside the next group-committed transaction (see engine.ts). */
export type WriteUnit = <T>(fn: () => T) => Promise<T>;

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

// Buffers sort after every string and number in lmdb's ordered-binary keys, so [prefix, HIGH] is an
// exclusive upper bound for every key that starts with prefix.
const HIGH = Buffer.from([0xff]);

// Expiry deletes in slices so that a large backlog neither builds one huge transaction nor holds
// the event loop for long.
const EXPIRE_SLICE = 2_000;

// Conversations one retention call walks at most, so a store of many conversations with nothing
// old is walked in bounded steps too.
const RETENTION_CONVERSATIONS_PER_CALL = 10_000;

interface EncodedEntry {
  seq: number;
  bytes: Uint8Array;
  /** When the entry expires, in ms since the Unix epoch; 0 for never. */
  expiresAtMs: number;
}

function encode(entry: Entry, conversationId: string): EncodedEntry {
  return {
    seq: seqOf(entry, conversationId),
    bytes: entryBytes(entry),
    expiresAtMs: Number(entry.expiresAtMs),
  };
}

interface PreparedWrite {
  write: ConversationWrite;
  append: EncodedEntry[];
  replace: EncodedEntry[];
}

// Encoding happens before the write transaction so the transaction (which holds LMDB's single
// writer lock) only does key checks and puts.
function prepare(write: ConversationWrite): PreparedWrite {
  const id = write.conversationId;
  const append = (write.append ?? []).map((entry) => encode(entry, id));
  for (let i = 1; i < append.length; i++) {
    if (append[i]!.seq !== append[i - 1]!.seq + 1) {
      throw conflict(
        `appended seqs of ${id} are not contiguous: ${append[i - 1]!.seq} then ${append[i]!.seq}`,
      );
    }
  }
  const replace = (write.replace ?? []).map((entry) => encode(entry, id));
  return { write, append, replace };
}

function decodeEntry(value: Uint8Array): Entry {
  // Through a plain Uint8Array view, so bytes fields decode as Uint8Array (as protobuf-es creates
  // them) rather than as Buffer slices.
  return fromBinary(EntrySchema, new Uint8Array(value.buffer, value.byteOffset, value.byteLength));
}

/** The record to store: one written with pins undefined keeps the stored pins (the port's rule). */
function withStoredPins(dbs: ConversationDbs, c: ConversationRecord): ConversationRecord {
  const record = conversationRecord(c);
  if (record.pins !== undefined) return record;
  const pins = dbs.conversations.get(c.id)?.pins;
  return pins === undefined ? record : { ...record, pins };
}

/** The conversation port on LMDB. */
export class LmdbConversationStore implements ConversationStore {
  constructor(
    private readonly dbs: ConversationDbs,
    private readonly writeUnit: WriteUnit,
  ) {}

  async commit(writes: ConversationWrite[]): Promise<void> {
    if (writes.length === 0) return;
    const prepared = writes.map(prepare);
    await this.writeUnit(() => this.apply(prepared));
  }

  // Runs inside the write transaction, so its reads see every unit committed before it in the same
  // batch; that is what makes the seq fence hold between concurrent callers. Everything is checked
  // before the first put, and the unit is a child transaction besides, so a refused or failed call
  // leaves nothing behind and does not disturb the other callers in the batch.
  private apply(prepared: PreparedWrite[]): void {
    const { dbs } = this;
    const heads = new Map<string, number>();
    for (const { write, append, replace } of prepared) {
      const id = write.conversationId;
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
    for (const { write, append, replace } of prepared) {
      const id = write.conversationId;
      if (write.conversation !== undefined)
        dbs.conversations.put(id, withStoredPins(dbs, write.conversation));
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

  async getConversation(conversationId: string): Promise<ConversationRecord | undefined> {
    return this.dbs.conversations.get(conversationId);
  }

  async getMembers(conversationId: string): Promise<MemberRecord[]> {
    return [...this.dbs.members.getRange({ start: [conversationId], end: [conversationId, HIGH] })].map(
      ({ value }) => value,
    );
  }

  async getLastSeq(conversationId: string): Promise<number> {
    return this.dbs.heads.get(conversationId) ?? 0;
  }

  /** The same as getLastSeq: a commit is one transaction here, never seen half-done. */
  peekLastSeq(conversationId: string): Promise<number> {
    return this.getLastSeq(conversationId);
  }

  async readEntries(conversationId: string, afterSeq: number, limit: number): Promise<Entry[]> {
    if (!(limit >= 1) || Number.isNaN(afterSeq)) return [];
    const start = Math.max(0, Math.floor(afterSeq)) + 1;
    const range = this.dbs.entries.getRange({
      start: [conversationId, start],
      end: [conversationId, HIGH],
      limit: Math.floor(limit),
    });
    return [...range].map(({ value }) => decodeEntry(value));
  }

  async getIdempotency(
    conversationId: string,
    deviceId: string,
    clientMsgId: string,
  ): Promise<number | undefined> {
    return this.dbs.idempotency.get([conversationId, deviceId, clientMsgId])?.seq;
  }

  async listUserConversations(userId: string): Promise<UserConversation[]> {
    return [...this.dbs.userConversations.getRange({ start: [userId], end: [userId, HIGH] })].map(
      ({ key, value }) => ({ conversationId: (key as [string, string])[1], joinedSeq: value }),
    );
  }

  async getDeviceCursors(conversationId: string, deviceIds: readonly string[]): Promise<DeviceCursor[]> {
    const out: DeviceCursor[] = [];
    for (const deviceId of new Set(deviceIds)) {
      const value = this.dbs.deviceCursors.get([conversationId, deviceId]);
      if (value !== undefined) {
        out.push({ conversationId, deviceId, deliveredUpTo: value.deliveredUpTo, readUpTo: value.readUpTo });
      }
    }
    return out;
  }

  async saveCursors(devices: readonly DeviceCursor[], members: readonly MemberCursor[]): Promise<void> {
    if (devices.length === 0 && members.length === 0) return;
    const { dbs } = this;
    await this.writeUnit(() => {
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
        dbs.members.put(key, { ...member, deliveredUpTo: m.deliveredUpTo, readUpTo: m.readUpTo });
      }
    });
  }

  async putDeviceFloors(floors: readonly DeviceFloor[]): Promise<void> {
    if (floors.length === 0) return;
    await this.writeUnit(() => {
      for (const f of floors) this.dbs.deviceFloors.put([f.deviceId, f.conversationId], f.floorSeq);
    });
  }

  async getDeviceFloor(deviceId: string, conversationId: string): Promise<number | undefined> {
    return this.dbs.deviceFloors.get([deviceId, conversationId]);
  }

  async listDeviceFloors(deviceId: string): Promise<Map<string, number>> {
    const range = this.dbs.deviceFloors.getRange({ start: [deviceId], end: [deviceId, HIGH] });
    return new Map([...range].map(({ key, value }) => [(key as [string, string])[1], value]));
  }

  /** Where each retention sweep resumes: the conversation it stopped in (absent: the first). */
  private readonly retentionCursors = new Map<"age" | "delivered", string>();

  deleteEntriesOlderThan(olderThanMs: number, limit: number): Promise<number> {
    return this.deletePrefixes("age", olderThanMs, limit, () => Number.POSITIVE_INFINITY);
  }

  async deleteDeliveredOlderThan(
    olderThanMs: number,
    limit: number,
    receivedUpTo: ReceivedUpTo,
  ): Promise<number> {
    if (!(limit >= 1) || !Number.isFinite(olderThanMs)) return 0;
    const { dbs } = this;
    // The bounds are asked for before the write unit (they are asynchronous), for the same
    // conversations the unit walks: those of them whose oldest entry is old enough. One that
    // changes in between is safe: members added later joined past these entries, devices linked
    // later start past them, and a conversation without a bound deletes nothing.
    const from = this.retentionCursors.get("delivered");
    const bounds = new Map<string, number>();
    // Collected first: no read transaction is held across the awaits below.
    const ids = [
      ...dbs.heads.getKeys({
        ...(from !== undefined && { start: from }),
        limit: RETENTION_CONVERSATIONS_PER_CALL,
      }),
    ] as string[];
    for (const id of ids) {
      const [first] = dbs.entries.getRange({ start: [id, 0], end: [id, HIGH], limit: 1 });
      if (first === undefined || entryTimes(first.value).serverTimeMs >= olderThanMs) continue;
      const members = [...dbs.members.getRange({ start: [id], end: [id, HIGH] })].map((m) => m.value);
      bounds.set(id, await receivedUpTo(id, members));
    }
    return this.deletePrefixes("delivered", olderThanMs, limit, (id) => bounds.get(id) ?? 0);
  }

  /**
   * Deletes, conversation by conversation, the entries committed before olderThanMs up to the seq
   * upTo(conversation) gives, at most limit per call; walks a bounded number of conversations
   * and resumes after the last on the next call.
   */
  private async deletePrefixes(
    sweep: "age" | "delivered",
    olderThanMs: number,
    limit: number,
    upTo: (conversationId: string) => number,
  ): Promise<number> {
    if (!(limit >= 1) || !Number.isFinite(olderThanMs)) return 0;
    const { dbs } = this;
    const max = Math.min(Math.floor(limit), EXPIRE_SLICE);
    return this.writeUnit(() => {
      let deleted = 0;
      const from = this.retentionCursors.get(sweep);
      this.retentionCursors.delete(sweep);
      // Keys are collected before anything is removed: nothing is deleted under a live iterator.
      const ids = [
        ...dbs.heads.getKeys({
          ...(from !== undefined && { start: from }),
          limit: RETENTION_CONVERSATIONS_PER_CALL + 1,
        }),
      ] as string[];
      for (const [i, id] of ids.entries()) {
        // Bounded work even where nothing is old: the next call resumes here.
        if (i === RETENTION_CONVERSATIONS_PER_CALL) {
          this.retentionCursors.set(sweep, id);
          break;
        }
        const bound = upTo(id);
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
        if (deleted >= max) {
          // This conversation may have more: the next call starts with it.
          this.retentionCursors.set(sweep, id);
          break;
        }
      }
      return deleted;
    });
  }

  async deleteExpiredEntries(nowMs: number, limit: number): Promise<number> {
    if (!(limit >= 1) || !Number.isFinite(nowMs)) return 0;
    const { dbs } = this;
    return this.writeUnit(() => {
      // Keys are [expiresAtMs, conversationId, seq]; [nowMs, HIGH] sorts after every key that
      // expires at nowMs. The head stays: the seqs keep their place in the numbering. LMDB reuses
      // the freed pages for later writes, so the file stops growing rather than shrinking.
      const keys = [
        ...dbs.entriesByExpiry.getKeys({
          end: [nowMs, HIGH],
          limit: Math.min(Math.floor(limit), EXPIRE_SLICE),
        }),
      ];
      for (const key of keys) {
        const [, id, seq] = key as [number, string, number];
        dbs.entriesByExpiry.remove(key);
        dbs.entries.remove([id, seq]);
      }
      return keys.length;
    });
  }

  async expireIdempotency(olderThanMs: number): Promise<number> {
    const { dbs } = this;
    let removed = 0;
    for (;;) {
      const slice = await this.writeUnit(() => {
        let count = 0;
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
            count++;
          }
        }
        return { scanned: keys.length, count };
      });
      removed += slice.count;
      if (slice.scanned < EXPIRE_SLICE) return removed;
    }
  }
}
