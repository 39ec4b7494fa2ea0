import { randomUUID } from "node:crypto";
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { type Entry, EntrySchema } from "../../../gen/switchboard/v1/entry_pb.js";
import type { Logger } from "../../common/log.js";
import { shardOf as shardBy } from "../../common/shard.js";
import { StoreError } from "../errors.js";
import { conflict, conversationRecord, memberRecord, seqOf } from "../records.js";
import type {
  ConversationRecord,
  ConversationStore,
  ConversationWrite,
  DeviceCursor,
  DeviceFloor,
  IdempotencyKey,
  MemberCursor,
  MemberRecord,
  UserConversation,
} from "../types.js";
import { type Cql, IDEMPOTENCY_SHARDS, IDEMPOTENCY_SLOT_MS, num, type Row, sleep } from "./schema.js";

/**
 * How long a reserved commit may stay pending before another process completes it for its writer,
 * in milliseconds. Longer than any healthy commit (the driver's request timeout is 12 s), short
 * enough that a conversation whose writer crashed is blocked only briefly.
 */
export const PENDING_GRACE_MS = 15_000;

/** The largest unconditional batch of entries, in bytes (ScyllaDB refuses batches over 1 MiB). */
const MAX_BATCH_BYTES = 256 * 1024;

/** Parallel statements per expiry step, so a large backlog does not flood the driver's queue. */
const EXPIRE_CONCURRENCY = 64;

/** Engine settings the conversation port needs. */
export interface ConversationSettings {
  /** Seqs per log partition. */
  bucketSize: number;
  /** TTL of entries and idempotency records, in seconds; 0 keeps them forever. */
  entryTtlSeconds: number;
}

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
  seq: number;
  bytes: Uint8Array;
}

/** The final state of one member after a commit. */
export type MemberOp = { put: MemberRecord } | { remove: string };

/**
 * Everything one commit does to one conversation that appends, stored in the conversation's head
 * row when the seqs are reserved. Any process can finish the commit from it alone, which is what
 * makes a crash between the reservation and the head's advance harmless (see docs/scylla.md).
 */
export interface Intent {
  /** Names this reservation; the head row's pending_id. */
  id: string;
  conversationId: string;
  /** The write timestamp of every cell the commit writes, in microseconds. */
  tsMicros: number;
  /** When the commit was made, in milliseconds (idempotency records' time). */
  atMs: number;
  firstSeq: number;
  lastSeq: number;
  /** The bytes of every seq firstSeq..lastSeq, rewrites within the commit already applied. */
  entries: EncodedEntry[];
  /** Rewrites of seqs before firstSeq. */
  replaced: EncodedEntry[];
  conversation?: ConversationRecord;
  idempotency: IdempotencyKey[];
  members: MemberOp[];
}

interface IntentJson extends Omit<Intent, "entries" | "replaced"> {
  entries: { seq: number; bytes: string }[];
  replaced: { seq: number; bytes: string }[];
}

/** The intent as stored in log_heads.pending. */
export function encodeIntent(intent: Intent): Buffer {
  const b64 = (e: EncodedEntry) => ({ seq: e.seq, bytes: Buffer.from(e.bytes).toString("base64") });
  const json: IntentJson = {
    ...intent,
    entries: intent.entries.map(b64),
    replaced: intent.replaced.map(b64),
  };
  return Buffer.from(JSON.stringify(json));
}

/** Reads an intent back from log_heads.pending. */
export function decodeIntent(bytes: Uint8Array): Intent {
  const json = JSON.parse(Buffer.from(bytes).toString("utf8")) as IntentJson;
  const raw = (e: { seq: number; bytes: string }) => ({
    seq: e.seq,
    bytes: new Uint8Array(Buffer.from(e.bytes, "base64")),
  });
  return { ...json, entries: json.entries.map(raw), replaced: json.replaced.map(raw) };
}

/** What a commit does to one conversation, all of the commit's writes to it merged in order. */
interface Plan {
  conversationId: string;
  conversation?: ConversationRecord;
  /** 0 when nothing is appended. */
  firstSeq: number;
  lastSeq: number;
  appended: Map<number, Uint8Array>;
  /** Rewrites of seqs that must already be in the log. */
  replaced: Map<number, Uint8Array>;
  /** The highest seq rewritten that must already be in the log; 0 for none. */
  needsHead: number;
  idempotency: Map<string, IdempotencyKey>;
  members: Map<string, MemberOp>;
}

interface Head {
  exists: boolean;
  lastSeq: number;
  commitTs: number;
  pendingId: string;
  pendingLast: number;
  pendingAtMs: number;
  pending: Uint8Array | undefined;
}

// Merges a commit's writes per conversation and checks everything that needs no read. The rules
// are the LMDB engine's, where writes apply one after another in the order given.
function plan(writes: ConversationWrite[]): Plan[] {
  const plans = new Map<string, Plan>();
  for (const write of writes) {
    const id = write.conversationId;
    let p = plans.get(id);
    if (p === undefined) {
      p = {
        conversationId: id,
        firstSeq: 0,
        lastSeq: 0,
        appended: new Map(),
        replaced: new Map(),
        needsHead: 0,
        idempotency: new Map(),
        members: new Map(),
      };
      plans.set(id, p);
    }
    if (write.conversation !== undefined) p.conversation = conversationRecord(write.conversation);
    const append = (write.append ?? []).map((e) => ({ seq: seqOf(e, id), bytes: toBinary(EntrySchema, e) }));
    for (const [i, e] of append.entries()) {
      const expected = i === 0 ? (p.lastSeq > 0 ? p.lastSeq + 1 : e.seq) : append[i - 1]!.seq + 1;
      if (e.seq !== expected) {
        throw conflict(`appended seqs of ${id} are not contiguous: ${expected - 1} then ${e.seq}`);
      }
      if (p.firstSeq === 0) p.firstSeq = e.seq;
      p.lastSeq = e.seq;
      p.appended.set(e.seq, e.bytes);
    }
    for (const entry of write.replace ?? []) {
      const seq = seqOf(entry, id);
      const bytes = toBinary(EntrySchema, entry);
      if (p.lastSeq > 0 && seq > p.lastSeq) {
        throw new StoreError("not_found", `cannot replace unwritten seq ${seq} of ${id}`);
      }
      if (p.appended.has(seq)) {
        p.appended.set(seq, bytes);
      } else {
        p.replaced.set(seq, bytes);
        p.needsHead = Math.max(p.needsHead, seq);
      }
    }
    for (const k of write.idempotency ?? []) {
      p.idempotency.set(`${k.deviceId}\n${k.clientMsgId}`, {
        deviceId: k.deviceId,
        clientMsgId: k.clientMsgId,
        seq: k.seq,
      });
    }
    for (const m of write.putMembers ?? []) p.members.set(m.userId, { put: memberRecord(m) });
    for (const userId of write.removeMembers ?? []) p.members.set(userId, { remove: userId });
  }
  return [...plans.values()];
}

function decodeEntry(value: Uint8Array): Entry {
  return fromBinary(EntrySchema, new Uint8Array(value.buffer, value.byteOffset, value.byteLength));
}

function headOf(row: Row | undefined): Head {
  if (row === undefined) {
    return {
      exists: false,
      lastSeq: 0,
      commitTs: 0,
      pendingId: "",
      pendingLast: 0,
      pendingAtMs: 0,
      pending: undefined,
    };
  }
  const pending = row.get("pending") as Buffer | null;
  return {
    exists: true,
    lastSeq: num(row.get("last_seq")),
    commitTs: num(row.get("commit_ts")),
    pendingId: (row.get("pending_id") as string | null) ?? "",
    pendingLast: num(row.get("pending_last")),
    pendingAtMs: num(row.get("pending_at_ms")),
    pending: pending === null || pending.length === 0 ? undefined : pending,
  };
}

// Settles every promise, then throws the first failure in input order, so which error a caller
// sees does not depend on timing.
async function allOrFirstError<T>(promises: Promise<T>[]): Promise<T[]> {
  const results = await Promise.allSettled(promises);
  for (const r of results) if (r.status === "rejected") throw r.reason;
  return results.map((r) => (r as PromiseFulfilledResult<T>).value);
}

async function inSlices<T>(items: T[], size: number, fn: (item: T) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += size) await Promise.all(items.slice(i, i + size).map(fn));
}

const EMPTY = Buffer.alloc(0);

// The driver takes blobs only as Buffer; this is a view, not a copy.
function blob(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

const HEAD_COLUMNS = "last_seq, commit_ts, pending_id, pending_last, pending, pending_at_ms";

/**
 * The conversation port on ScyllaDB.
 *
 * The fence: a conversation's head row (log_heads) is written only by LWT. A commit that appends
 * first reserves its seqs there (`IF last_seq = first - 1 AND pending_id = ''`), storing its whole
 * intent; then writes the entries and everything else; then advances last_seq and clears the
 * reservation (`IF pending_id = mine`). docs/scylla.md gives the crash analysis.
 */
export class ScyllaConversationStore implements ConversationStore {
  /** Ids of this process's intents whose commit failed after the reservation. */
  private readonly unfinished = new Set<string>();

  constructor(
    private readonly cql: Cql,
    private readonly settings: ConversationSettings,
    private readonly log?: Logger,
  ) {}

  async commit(writes: ConversationWrite[]): Promise<void> {
    if (writes.length === 0) return;
    const plans = plan(writes);

    // Every check that needs the store runs before anything is written, so a refused commit
    // writes nothing (beyond reservations it releases).
    const heads = await allOrFirstError(
      plans.map(async (p) => {
        if (p.firstSeq === 0 && p.needsHead === 0) return undefined;
        const head = await this.settledHead(p.conversationId, "refuse");
        if (p.firstSeq > 0 && p.firstSeq !== head.lastSeq + 1) {
          throw conflict(
            `append to ${p.conversationId} starts at seq ${p.firstSeq} but the last seq is ${head.lastSeq}`,
          );
        }
        if (p.needsHead > head.lastSeq) {
          throw new StoreError(
            "not_found",
            `cannot replace unwritten seq ${p.needsHead} of ${p.conversationId}`,
          );
        }
        return head;
      }),
    );

    const intents = plans.map((p, i) => (p.firstSeq > 0 ? this.intentOf(p, heads[i]!) : undefined));
    const reservations = await Promise.allSettled(
      intents.map((intent, i) =>
        intent === undefined ? Promise.resolve() : this.reserve(intent, heads[i]!),
      ),
    );
    const refused = reservations.find((r) => r.status === "rejected");
    if (refused !== undefined) {
      await Promise.all(
        intents.map((intent, i) =>
          intent !== undefined && reservations[i]!.status === "fulfilled" ? this.release(intent) : undefined,
        ),
      );
      throw (refused as PromiseRejectedResult).reason;
    }

    await allOrFirstError(
      plans.map(async (p, i) => {
        const intent = intents[i];
        if (intent === undefined) {
          await this.applyUnfenced(p);
          return;
        }
        try {
          await this.apply(intent);
          await this.finish(intent);
        } catch (err) {
          // Ours, so nobody needs to wait out the grace period before completing it.
          this.unfinished.add(intent.id);
          throw err;
        }
      }),
    );
  }

  async getConversation(conversationId: string): Promise<ConversationRecord | undefined> {
    const row = await this.cql.one(
      "SELECT kind, title, created_at_ms, members_version FROM conversations WHERE conversation_id = ?",
      [conversationId],
    );
    if (row === undefined) return undefined;
    return {
      id: conversationId,
      kind: row.get("kind") as ConversationRecord["kind"],
      title: (row.get("title") as string | null) ?? "",
      createdAtMs: num(row.get("created_at_ms")),
      membersVersion: num(row.get("members_version")),
    };
  }

  async getMembers(conversationId: string): Promise<MemberRecord[]> {
    const out: MemberRecord[] = [];
    for await (const row of this.cql.pages(
      `SELECT user_id, role, joined_seq, added_at_ms, delivered_up_to, read_up_to, muted_until_ms
        FROM members WHERE conversation_id = ?`,
      [conversationId],
    )) {
      // A cursor saved after a removal leaves a row with cursor columns only: not a member.
      const role = row.get("role") as MemberRecord["role"] | null;
      if (role === null) continue;
      const muted = row.get("muted_until_ms");
      out.push({
        userId: row.get("user_id") as string,
        role,
        joinedSeq: num(row.get("joined_seq")),
        addedAtMs: num(row.get("added_at_ms")),
        deliveredUpTo: num(row.get("delivered_up_to")),
        readUpTo: num(row.get("read_up_to")),
        ...(muted !== null && muted !== undefined && { mutedUntilMs: num(muted) }),
      });
    }
    return out;
  }

  async getLastSeq(conversationId: string): Promise<number> {
    return (await this.settledHead(conversationId, "wait")).lastSeq;
  }

  async readEntries(conversationId: string, afterSeq: number, limit: number): Promise<Entry[]> {
    if (!(limit >= 1) || Number.isNaN(afterSeq)) return [];
    const want = Math.floor(limit);
    const start = Math.max(0, Math.floor(afterSeq)) + 1;
    const head = await this.readHead(conversationId, false);
    // Entries of a reserved commit may already be written; they are never taken back.
    const bound = Math.max(head.lastSeq, head.pendingLast);
    const out: Entry[] = [];
    if (start > bound) return out;
    // Walking bucket by bucket up to the head, rather than stopping at the first short bucket,
    // also steps over buckets emptied by the entry TTL.
    const { bucketSize } = this.settings;
    for (let bucket = bucketOf(start, bucketSize); bucket <= bucketOf(bound, bucketSize); bucket++) {
      const from = Math.max(start, bucket * bucketSize);
      for await (const row of this.cql.pages(
        "SELECT entry FROM log_entries WHERE conversation_id = ? AND bucket = ? AND seq >= ? LIMIT ?",
        [conversationId, bucket, from, want - out.length],
      )) {
        out.push(decodeEntry(row.get("entry") as Buffer));
      }
      if (out.length >= want) break;
    }
    return out;
  }

  async getIdempotency(
    conversationId: string,
    deviceId: string,
    clientMsgId: string,
  ): Promise<number | undefined> {
    const row = await this.cql.one(
      "SELECT seq FROM idempotency WHERE conversation_id = ? AND device_id = ? AND client_msg_id = ?",
      [conversationId, deviceId, clientMsgId],
    );
    return row === undefined ? undefined : num(row.get("seq"));
  }

  async listUserConversations(userId: string): Promise<UserConversation[]> {
    const out: UserConversation[] = [];
    for await (const row of this.cql.pages(
      "SELECT conversation_id, joined_seq FROM user_conversations WHERE user_id = ?",
      [userId],
    )) {
      out.push({
        conversationId: row.get("conversation_id") as string,
        joinedSeq: num(row.get("joined_seq")),
      });
    }
    return out;
  }

  async getDeviceCursors(conversationId: string, deviceIds: readonly string[]): Promise<DeviceCursor[]> {
    const ids = [...new Set(deviceIds)];
    const out: DeviceCursor[] = [];
    for (let i = 0; i < ids.length; i += 100) {
      const result = await this.cql.run(
        `SELECT device_id, delivered_up_to, read_up_to FROM device_cursors
          WHERE conversation_id = ? AND device_id IN ?`,
        [conversationId, ids.slice(i, i + 100)],
      );
      for (const row of result.rows ?? []) {
        out.push({
          conversationId,
          deviceId: row.get("device_id") as string,
          deliveredUpTo: num(row.get("delivered_up_to")),
          readUpTo: num(row.get("read_up_to")),
        });
      }
    }
    return out;
  }

  async saveCursors(devices: readonly DeviceCursor[], members: readonly MemberCursor[]): Promise<void> {
    // One unlogged batch per partition: atomic, and one round trip for a conversation's cursors.
    const byPartition = new Map<string, { query: string; params: unknown[] }[]>();
    const add = (key: string, query: string, params: unknown[]) => {
      const list = byPartition.get(key) ?? [];
      list.push({ query, params });
      byPartition.set(key, list);
    };
    for (const d of devices) {
      add(
        `d\n${d.conversationId}`,
        "UPDATE device_cursors SET delivered_up_to = ?, read_up_to = ? WHERE conversation_id = ? AND device_id = ?",
        [d.deliveredUpTo, d.readUpTo, d.conversationId, d.deviceId],
      );
    }
    for (const m of members) {
      // Only the cursor columns: a removed member's row gets no role back, so it stays removed
      // (getMembers skips rows without one).
      add(
        `m\n${m.conversationId}`,
        "UPDATE members SET delivered_up_to = ?, read_up_to = ? WHERE conversation_id = ? AND user_id = ?",
        [m.deliveredUpTo, m.readUpTo, m.conversationId, m.userId],
      );
    }
    await Promise.all(
      [...byPartition.values()].flatMap((statements) => {
        const slices: Promise<unknown>[] = [];
        for (let i = 0; i < statements.length; i += 100)
          slices.push(this.cql.batch(statements.slice(i, i + 100)));
        return slices;
      }),
    );
  }

  async putDeviceFloors(floors: readonly DeviceFloor[]): Promise<void> {
    // One unlogged batch per device (its partition) and slice: atomic per slice, one round trip.
    const byDevice = new Map<string, { query: string; params: unknown[] }[]>();
    for (const f of floors) {
      const list = byDevice.get(f.deviceId) ?? [];
      list.push({
        query: "INSERT INTO device_floors (device_id, conversation_id, floor_seq) VALUES (?, ?, ?)",
        params: [f.deviceId, f.conversationId, f.floorSeq],
      });
      byDevice.set(f.deviceId, list);
    }
    await Promise.all(
      [...byDevice.values()].flatMap((statements) => {
        const slices: Promise<unknown>[] = [];
        for (let i = 0; i < statements.length; i += 100)
          slices.push(this.cql.batch(statements.slice(i, i + 100)));
        return slices;
      }),
    );
  }

  async getDeviceFloor(deviceId: string, conversationId: string): Promise<number | undefined> {
    const row = await this.cql.one(
      "SELECT floor_seq FROM device_floors WHERE device_id = ? AND conversation_id = ?",
      [deviceId, conversationId],
    );
    return row === undefined ? undefined : num(row.get("floor_seq"));
  }

  async listDeviceFloors(deviceId: string): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    for await (const row of this.cql.pages(
      "SELECT conversation_id, floor_seq FROM device_floors WHERE device_id = ?",
      [deviceId],
    )) {
      out.set(row.get("conversation_id") as string, num(row.get("floor_seq")));
    }
    return out;
  }

  async expireIdempotency(olderThanMs: number): Promise<number> {
    if (!Number.isFinite(olderThanMs)) return 0;
    const meta = async (name: string) => {
      const row = await this.cql.one("SELECT value FROM store_meta WHERE name = ?", [name]);
      return row === undefined ? undefined : num(row.get("value"));
    };
    const [swept, epoch] = await Promise.all([
      meta("idempotency_swept_before_slot"),
      meta("idempotency_epoch_ms"),
    ]);
    const last = slotOf(olderThanMs);
    // One slot back from where the last sweep ended catches records whose writer's clock lagged.
    const first = Math.max(0, (swept ?? slotOf(epoch ?? olderThanMs)) - 1);
    let removed = 0;
    for (let slot = first; slot <= last; slot++) {
      const shards = Array.from({ length: IDEMPOTENCY_SHARDS }, (_, shard) => shard);
      const counts = await Promise.all(
        shards.map((shard) => this.expireSlot(slot, shard, olderThanMs, slot < last)),
      );
      for (const c of counts) removed += c;
    }
    if (swept === undefined || last > swept) {
      await this.cql.run("UPDATE store_meta SET value = ? WHERE name = 'idempotency_swept_before_slot'", [
        last,
      ]);
    }
    return removed;
  }

  private async expireSlot(
    slot: number,
    shard: number,
    olderThanMs: number,
    whole: boolean,
  ): Promise<number> {
    const rows: Row[] = [];
    for await (const row of this.cql.pages(
      `SELECT at_ms, conversation_id, device_id, client_msg_id, write_ts FROM idempotency_by_time
        WHERE slot = ? AND shard = ? AND at_ms < ?`,
      [slot, shard, olderThanMs],
      { fetchSize: 1000 },
    )) {
      rows.push(row);
    }
    if (rows.length === 0) return 0;
    let removed = 0;
    await inSlices(rows, EXPIRE_CONCURRENCY, async (row) => {
      const key = [row.get("conversation_id"), row.get("device_id"), row.get("client_msg_id")];
      const current = await this.cql.one(
        "SELECT at_ms FROM idempotency WHERE conversation_id = ? AND device_id = ? AND client_msg_id = ?",
        key,
      );
      // A record written again later has a later at_ms: it stays.
      if (current === undefined || num(current.get("at_ms")) !== num(row.get("at_ms"))) return;
      // At the record's own write timestamp: a rewrite racing this delete has a later one and wins.
      await this.cql.run(
        "DELETE FROM idempotency USING TIMESTAMP ? WHERE conversation_id = ? AND device_id = ? AND client_msg_id = ?",
        [row.get("write_ts"), ...key],
      );
      removed++;
    });
    if (whole) {
      await this.cql.run("DELETE FROM idempotency_by_time WHERE slot = ? AND shard = ?", [slot, shard]);
    } else {
      await this.cql.run("DELETE FROM idempotency_by_time WHERE slot = ? AND shard = ? AND at_ms < ?", [
        slot,
        shard,
        olderThanMs,
      ]);
    }
    return removed;
  }

  private intentOf(p: Plan, head: Head): Intent {
    return {
      id: randomUUID(),
      conversationId: p.conversationId,
      // Each commit's cells must sort after the previous commit's, even if this process's clock is
      // behind the last writer's.
      tsMicros: Math.max(Date.now() * 1000, head.commitTs + 1),
      atMs: Date.now(),
      firstSeq: p.firstSeq,
      lastSeq: p.lastSeq,
      entries: [...p.appended].map(([seq, bytes]) => ({ seq, bytes })),
      replaced: [...p.replaced].map(([seq, bytes]) => ({ seq, bytes })),
      ...(p.conversation !== undefined && { conversation: p.conversation }),
      idempotency: [...p.idempotency.values()],
      members: [...p.members.values()],
    };
  }

  /** The fence: takes seqs firstSeq..lastSeq, or refuses with "conflict". */
  private async reserve(intent: Intent, head: Head): Promise<void> {
    const id = intent.conversationId;
    const pending = encodeIntent(intent);
    const result = head.exists
      ? await this.cql.lwt(
          `UPDATE log_heads SET pending_id = ?, pending_last = ?, pending = ?, pending_at_ms = ?
            WHERE conversation_id = ? IF last_seq = ? AND pending_id = ''`,
          [intent.id, intent.lastSeq, pending, intent.atMs, id, intent.firstSeq - 1],
        )
      : await this.cql.lwt(
          `INSERT INTO log_heads (conversation_id, last_seq, commit_ts, pending_id, pending_last, pending, pending_at_ms)
            VALUES (?, 0, 0, ?, ?, ?, ?) IF NOT EXISTS`,
          [id, intent.id, intent.lastSeq, pending, intent.atMs],
        );
    if (!result.wasApplied()) {
      throw conflict(`seqs ${intent.firstSeq}..${intent.lastSeq} of ${id} were taken by another writer`);
    }
  }

  /** Gives a reservation back when another part of its commit was refused. */
  private async release(intent: Intent): Promise<void> {
    try {
      const result = await this.cql.lwt(
        `UPDATE log_heads SET pending_id = '', pending_last = 0, pending = ?, pending_at_ms = 0
          WHERE conversation_id = ? IF pending_id = ?`,
        [EMPTY, intent.conversationId, intent.id],
      );
      if (!result.wasApplied()) {
        this.log?.warn(
          { conversationId: intent.conversationId },
          "a refused commit's reservation was completed by another process before it could be released",
        );
      }
    } catch (err) {
      // Left pending, it is completed after the grace period: the commit then takes effect late
      // instead of not at all, as after any I/O failure.
      this.log?.warn({ err, conversationId: intent.conversationId }, "releasing a reservation failed");
    }
  }

  /** Writes everything an intent holds. Idempotent, so its writer and a recoverer may both run it. */
  private async apply(intent: Intent): Promise<void> {
    const ts = { timestampMicros: intent.tsMicros };
    const ttl = this.settings.entryTtlSeconds;
    const id = intent.conversationId;
    const insert =
      "INSERT INTO log_entries (conversation_id, bucket, seq, entry) VALUES (?, ?, ?, ?) USING TTL ?";
    const params = (e: EncodedEntry) => [
      id,
      bucketOf(e.seq, this.settings.bucketSize),
      e.seq,
      blob(e.bytes),
      ttl,
    ];

    // In seq order, one bucket's slice at a time: a reader sees a prefix of the commit, never a hole.
    for (const slice of entrySlices(intent.entries, this.settings.bucketSize)) {
      if (slice.length === 1) await this.cql.run(insert, params(slice[0]!), ts);
      else
        await this.cql.batch(
          slice.map((e) => ({ query: insert, params: params(e) })),
          ts,
        );
    }

    const writes: Promise<unknown>[] = [];
    for (const e of intent.replaced) writes.push(this.cql.run(insert, params(e), ts));
    if (intent.conversation !== undefined) writes.push(this.putConversation(intent.conversation, ts));
    for (const k of intent.idempotency) {
      writes.push(
        this.cql.run(
          `INSERT INTO idempotency (conversation_id, device_id, client_msg_id, seq, at_ms)
            VALUES (?, ?, ?, ?, ?) USING TTL ?`,
          [id, k.deviceId, k.clientMsgId, k.seq, intent.atMs, ttl],
          ts,
        ),
        this.cql.run(
          `INSERT INTO idempotency_by_time (slot, shard, at_ms, conversation_id, device_id, client_msg_id, write_ts)
            VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL ?`,
          [
            slotOf(intent.atMs),
            shardOf(id),
            intent.atMs,
            id,
            k.deviceId,
            k.clientMsgId,
            intent.tsMicros,
            ttl,
          ],
          ts,
        ),
      );
    }
    for (const op of intent.members) writes.push(this.member(id, op, ts));
    await allOrFirstError(writes);
  }

  /** A write with no append needs no fence: members, metadata, rewrites of existing entries. */
  private async applyUnfenced(p: Plan): Promise<void> {
    const ttl = this.settings.entryTtlSeconds;
    const id = p.conversationId;
    const writes: Promise<unknown>[] = [];
    for (const [seq, bytes] of p.replaced) {
      writes.push(
        this.cql.run(
          "INSERT INTO log_entries (conversation_id, bucket, seq, entry) VALUES (?, ?, ?, ?) USING TTL ?",
          [id, bucketOf(seq, this.settings.bucketSize), seq, blob(bytes), ttl],
        ),
      );
    }
    if (p.conversation !== undefined) writes.push(this.putConversation(p.conversation, {}));
    const atMs = Date.now();
    const tsMicros = atMs * 1000;
    for (const k of p.idempotency.values()) {
      writes.push(
        this.cql.run(
          `INSERT INTO idempotency (conversation_id, device_id, client_msg_id, seq, at_ms)
            VALUES (?, ?, ?, ?, ?) USING TTL ?`,
          [id, k.deviceId, k.clientMsgId, k.seq, atMs, ttl],
          { timestampMicros: tsMicros },
        ),
        this.cql.run(
          `INSERT INTO idempotency_by_time (slot, shard, at_ms, conversation_id, device_id, client_msg_id, write_ts)
            VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL ?`,
          [slotOf(atMs), shardOf(id), atMs, id, k.deviceId, k.clientMsgId, tsMicros, ttl],
          { timestampMicros: tsMicros },
        ),
      );
    }
    for (const op of p.members.values()) writes.push(this.member(id, op, {}));
    await allOrFirstError(writes);
  }

  private putConversation(c: ConversationRecord, ts: { timestampMicros?: number }): Promise<unknown> {
    return this.cql.run(
      `INSERT INTO conversations (conversation_id, kind, title, created_at_ms, members_version)
        VALUES (?, ?, ?, ?, ?)`,
      [c.id, c.kind, c.title, c.createdAtMs, c.membersVersion],
      ts,
    );
  }

  private async member(
    conversationId: string,
    op: MemberOp,
    ts: { timestampMicros?: number },
  ): Promise<void> {
    if ("remove" in op) {
      await Promise.all([
        this.cql.run(
          "DELETE FROM members WHERE conversation_id = ? AND user_id = ?",
          [conversationId, op.remove],
          ts,
        ),
        this.cql.run(
          "DELETE FROM user_conversations WHERE user_id = ? AND conversation_id = ?",
          [op.remove, conversationId],
          ts,
        ),
      ]);
      return;
    }
    const m = op.put;
    await Promise.all([
      this.cql.run(
        `INSERT INTO members (conversation_id, user_id, role, joined_seq, added_at_ms, delivered_up_to,
          read_up_to, muted_until_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
        [
          conversationId,
          m.userId,
          m.role,
          m.joinedSeq,
          m.addedAtMs,
          m.deliveredUpTo,
          m.readUpTo,
          // null clears an earlier mute.
          m.mutedUntilMs ?? null,
        ],
        ts,
      ),
      this.cql.run(
        "INSERT INTO user_conversations (user_id, conversation_id, joined_seq) VALUES (?, ?, ?)",
        [m.userId, conversationId, m.joinedSeq],
        ts,
      ),
    ]);
  }

  /** Advances the head past an applied intent and ends its reservation. */
  private async finish(intent: Intent): Promise<void> {
    const result = await this.cql.lwt(
      `UPDATE log_heads SET last_seq = ?, commit_ts = ?, pending_id = '', pending_last = 0, pending = ?,
        pending_at_ms = 0 WHERE conversation_id = ? IF pending_id = ?`,
      [intent.lastSeq, intent.tsMicros, EMPTY, intent.conversationId, intent.id],
    );
    if (result.wasApplied()) return;
    // Only a recoverer finishing the same intent ends a reservation other than its writer.
    const head = await this.readHead(intent.conversationId, true);
    if (head.lastSeq < intent.lastSeq) {
      throw new Error(
        `the reservation of seqs ${intent.firstSeq}..${intent.lastSeq} of ${intent.conversationId} was lost`,
      );
    }
  }

  private async readHead(conversationId: string, serial: boolean): Promise<Head> {
    return headOf(
      await this.cql.one(
        `SELECT ${HEAD_COLUMNS} FROM log_heads WHERE conversation_id = ?`,
        [conversationId],
        {
          serial,
        },
      ),
    );
  }

  /**
   * The head with no commit pending: a pending commit older than the grace period is completed
   * (its writer is presumed dead); a younger one is waited for, or refused as a conflict when the
   * caller is itself a commit (two live writers of one conversation).
   */
  private async settledHead(conversationId: string, young: "wait" | "refuse"): Promise<Head> {
    for (let delay = 20; ; delay = Math.min(delay * 2, 1_000)) {
      // A commit only needs a hint (its reservation is the real check); a reader that hands the
      // last seq to a sequencer reads at LOCAL_SERIAL, which also finishes an LWT left half-done.
      const head = await this.readHead(conversationId, young === "wait");
      if (head.pendingId === "") return head;
      const age = Date.now() - head.pendingAtMs;
      if ((age >= PENDING_GRACE_MS || this.unfinished.has(head.pendingId)) && head.pending !== undefined) {
        await this.recover(decodeIntent(head.pending));
        this.unfinished.delete(head.pendingId);
        continue;
      }
      if (young === "refuse") {
        throw conflict(`a commit to ${conversationId} is in flight in another process`);
      }
      await sleep(Math.min(delay, Math.max(1, PENDING_GRACE_MS - age)));
    }
  }

  /** Completes an intent whose writer stopped between reserving and advancing the head. */
  private async recover(intent: Intent): Promise<void> {
    this.log?.warn(
      { conversationId: intent.conversationId, firstSeq: intent.firstSeq, lastSeq: intent.lastSeq },
      "completing a commit its writer left pending",
    );
    await this.apply(intent);
    await this.cql.lwt(
      `UPDATE log_heads SET last_seq = ?, commit_ts = ?, pending_id = '', pending_last = 0, pending = ?,
        pending_at_ms = 0 WHERE conversation_id = ? IF pending_id = ?`,
      [intent.lastSeq, intent.tsMicros, EMPTY, intent.conversationId, intent.id],
    );
  }
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
