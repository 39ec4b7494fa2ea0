import { setImmediate } from "node:timers/promises";
import { fromBinary } from "@bufbuild/protobuf";
import { type Entry, EntrySchema } from "../../../gen/switchboard/v1/entry_pb.js";
import { entryBytes } from "../../common/entry-bytes.js";
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
import {
  type ConversationDbs,
  type ConversationUnit,
  CURSOR_ROWS_PER_TRANSACTION,
  type EncodedEntry,
  EXPIRE_SLICE,
  HIGH,
  type IdempotencySlice,
  type PrefixesResult,
  type PreparedWrite,
  RETENTION_CONVERSATIONS_PER_CALL,
  RETENTION_CONVERSATIONS_PER_UNIT,
} from "./conversation-writes.js";

/** Applies a unit of the conversation port's writes (write-thread.ts) and gives its result. */
export type RunUnit = (unit: ConversationUnit) => Promise<unknown>;

function encode(entry: Entry, conversationId: string): EncodedEntry {
  return {
    seq: seqOf(entry, conversationId),
    bytes: entryBytes(entry),
    expiresAtMs: Number(entry.expiresAtMs),
  };
}

// Encoding happens before the unit is handed over, so the write transaction (which holds LMDB's
// single writer lock) only does key checks and puts, and only plain data crosses to the writer.
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
  return {
    conversationId: id,
    append,
    replace,
    // Copies with exactly the port's fields (records.ts): what crosses to the write thread is
    // what is stored, whatever else the caller's objects carried.
    ...(write.conversation !== undefined && { conversation: conversationRecord(write.conversation) }),
    ...(write.idempotency !== undefined && {
      idempotency: write.idempotency.map(({ deviceId, clientMsgId, seq }) => ({
        deviceId,
        clientMsgId,
        seq,
      })),
    }),
    ...(write.putMembers !== undefined && { putMembers: write.putMembers.map(memberRecord) }),
    ...(write.removeMembers !== undefined && { removeMembers: write.removeMembers }),
  };
}

function decodeEntry(value: Uint8Array): Entry {
  // Through a plain Uint8Array view, so bytes fields decode as Uint8Array (as protobuf-es creates
  // them) rather than as Buffer slices.
  return fromBinary(EntrySchema, new Uint8Array(value.buffer, value.byteOffset, value.byteLength));
}

/** The conversation port on LMDB. */
export class LmdbConversationStore implements ConversationStore {
  constructor(
    private readonly dbs: ConversationDbs,
    private readonly run: RunUnit,
  ) {}

  async commit(writes: ConversationWrite[]): Promise<void> {
    if (writes.length === 0) return;
    await this.run({ op: "commit", writes: writes.map(prepare) });
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
    // Units of CURSOR_ROWS_PER_TRANSACTION rows, handed over in one turn: a transaction takes that
    // many cursor rows at most (takeUnits), so the commits beside a large call wait for one unit
    // of it, not all. A unit that fails leaves the others stored, which is safe: cursors only
    // move forward, and the caller's save fails as a whole (it issues no receipts).
    const units: Array<Promise<unknown>> = [];
    for (let i = 0; i < devices.length; i += CURSOR_ROWS_PER_TRANSACTION) {
      units.push(
        this.run({ op: "cursors", devices: devices.slice(i, i + CURSOR_ROWS_PER_TRANSACTION), members: [] }),
      );
    }
    for (let i = 0; i < members.length; i += CURSOR_ROWS_PER_TRANSACTION) {
      units.push(
        this.run({ op: "cursors", devices: [], members: members.slice(i, i + CURSOR_ROWS_PER_TRANSACTION) }),
      );
    }
    await Promise.all(units);
  }

  async putDeviceFloors(floors: readonly DeviceFloor[]): Promise<void> {
    if (floors.length === 0) return;
    await this.run({ op: "floors", floors });
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
    return this.deletePrefixes("age", olderThanMs, limit);
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
    for (const [i, id] of ids.entries()) {
      // Reads on the server's thread: give way between stretches of them.
      if (i > 0 && i % RETENTION_CONVERSATIONS_PER_UNIT === 0) await setImmediate();
      const [first] = dbs.entries.getRange({ start: [id, 0], end: [id, HIGH], limit: 1 });
      if (first === undefined || entryTimes(first.value).serverTimeMs >= olderThanMs) continue;
      const members = [...dbs.members.getRange({ start: [id], end: [id, HIGH] })].map((m) => m.value);
      bounds.set(id, await receivedUpTo(id, members));
    }
    return this.deletePrefixes("delivered", olderThanMs, limit, bounds);
  }

  /**
   * Deletes, conversation by conversation, the entries committed before olderThanMs up to each
   * conversation's bound (none given: no bound but age), at most limit per call; walks at most
   * RETENTION_CONVERSATIONS_PER_CALL conversations and resumes where it stopped on the next call.
   * The walk goes to the write thread in units of RETENTION_CONVERSATIONS_PER_UNIT, one after
   * another, so the sends committed meanwhile wait behind one unit at most, not the whole walk.
   */
  private async deletePrefixes(
    sweep: "age" | "delivered",
    olderThanMs: number,
    limit: number,
    bounds?: Map<string, number>,
  ): Promise<number> {
    if (!(limit >= 1) || !Number.isFinite(olderThanMs)) return 0;
    const max = Math.min(Math.floor(limit), EXPIRE_SLICE);
    let from = this.retentionCursors.get(sweep);
    this.retentionCursors.delete(sweep);
    let deleted = 0;
    for (
      let walked = 0;
      walked < RETENTION_CONVERSATIONS_PER_CALL;
      walked += RETENTION_CONVERSATIONS_PER_UNIT
    ) {
      const unit = (await this.run({
        op: "prefixes",
        olderThanMs,
        max: max - deleted,
        ...(from !== undefined && { from }),
        ...(bounds !== undefined && { bounds }),
      })) as PrefixesResult;
      deleted += unit.deleted;
      from = unit.resumeAt;
      // The walk reached the last conversation (the next call starts with the first), or the
      // call deleted all it may.
      if (from === undefined || deleted >= max) break;
    }
    if (from !== undefined) this.retentionCursors.set(sweep, from);
    return deleted;
  }

  async deleteExpiredEntries(nowMs: number, limit: number): Promise<number> {
    if (!(limit >= 1) || !Number.isFinite(nowMs)) return 0;
    return (await this.run({
      op: "expired",
      nowMs,
      max: Math.min(Math.floor(limit), EXPIRE_SLICE),
    })) as number;
  }

  async expireIdempotency(olderThanMs: number): Promise<number> {
    let removed = 0;
    for (;;) {
      const slice = (await this.run({ op: "idempotency", olderThanMs })) as IdempotencySlice;
      removed += slice.removed;
      if (slice.scanned < EXPIRE_SLICE) return removed;
    }
  }
}
