/**
 * Every row a commit writes besides the head: entries, conversation metadata, idempotency records
 * and their expiry index, members and the per-user index. The fence (log.ts) decides when; these
 * writes are idempotent, so a writer and a recoverer may both run them.
 */
import type { ConversationRecord, IdempotencyKey } from "../../types.js";
import type { Cql } from "../schema.js";
import { nextWriteTs } from "./clock.js";
import type { Intent, MemberOp, Plan } from "./intent.js";
import {
  blob,
  bucketOf,
  type ConversationSettings,
  type EncodedEntry,
  entrySlices,
  entryTtlOf,
  shardOf,
  slotOf,
} from "./layout.js";
import { allOrFirstError } from "./parallel.js";

/** Writes a commit's rows. */
export class CommitRows {
  constructor(
    private readonly cql: Cql,
    private readonly settings: ConversationSettings,
  ) {}

  /** Writes everything an intent holds. Idempotent, so its writer and a recoverer may both run it. */
  async apply(intent: Intent): Promise<void> {
    const ts = { timestampMicros: intent.tsMicros };
    const ttl = this.settings.entryTtlSeconds;
    const id = intent.conversationId;
    const nowMs = Date.now();
    const insert =
      "INSERT INTO log_entries (conversation_id, bucket, seq, entry) VALUES (?, ?, ?, ?) USING TTL ?";
    const params = (e: EncodedEntry) => [
      id,
      bucketOf(e.seq, this.settings.bucketSize),
      e.seq,
      blob(e.bytes),
      entryTtlOf(e.bytes, ttl, nowMs),
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
    for (const k of intent.idempotency) writes.push(...this.idempotency(id, k, intent.atMs, intent.tsMicros));
    for (const op of intent.members) writes.push(this.member(id, op, ts));
    await allOrFirstError(writes);
  }

  /** A write with no append needs no fence: members, metadata, rewrites of existing entries. */
  async applyUnfenced(p: Plan): Promise<void> {
    const ttl = this.settings.entryTtlSeconds;
    const id = p.conversationId;
    const writes: Promise<unknown>[] = [];
    // Cells that fenced commits also write take the conversation's write clock (clock.ts), never
    // the driver's: a commit stamped by a writer whose clock ran ahead would otherwise win over
    // them, and an unmute or a rename after it would be lost.
    const ts =
      p.replaced.size > 0 || p.conversation !== undefined || p.members.size > 0
        ? { timestampMicros: await nextWriteTs(this.cql, id) }
        : {};
    for (const [seq, bytes] of p.replaced) {
      writes.push(
        this.cql.run(
          "INSERT INTO log_entries (conversation_id, bucket, seq, entry) VALUES (?, ?, ?, ?) USING TTL ?",
          [id, bucketOf(seq, this.settings.bucketSize), seq, blob(bytes), entryTtlOf(bytes, ttl, Date.now())],
          ts,
        ),
      );
    }
    if (p.conversation !== undefined) writes.push(this.putConversation(p.conversation, ts));
    const atMs = Date.now();
    for (const k of p.idempotency.values()) writes.push(...this.idempotency(id, k, atMs, atMs * 1000));
    for (const op of p.members.values()) writes.push(this.member(id, op, ts));
    await allOrFirstError(writes);
  }

  /**
   * An idempotency record, written at `tsMicros`. With idempotencyTtlSeconds the database expires
   * it (within the entries' own TTL, if shorter); otherwise its expiry index row goes with it, for
   * the sweep (expiry.ts), which deletes the record at this same timestamp.
   */
  private idempotency(id: string, k: IdempotencyKey, atMs: number, tsMicros: number): Promise<unknown>[] {
    const entryTtl = this.settings.entryTtlSeconds;
    const ownTtl = this.settings.idempotencyTtlSeconds ?? 0;
    const ttl = ownTtl > 0 && (entryTtl === 0 || ownTtl < entryTtl) ? ownTtl : entryTtl;
    const ts = { timestampMicros: tsMicros };
    const record = this.cql.run(
      `INSERT INTO idempotency (conversation_id, device_id, client_msg_id, seq, at_ms)
        VALUES (?, ?, ?, ?, ?) USING TTL ?`,
      [id, k.deviceId, k.clientMsgId, k.seq, atMs, ttl],
      ts,
    );
    if (ownTtl > 0) return [record];
    const indexed = this.cql.run(
      `INSERT INTO idempotency_by_time (slot, shard, at_ms, conversation_id, device_id, client_msg_id, write_ts)
        VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL ?`,
      [slotOf(atMs), shardOf(id), atMs, id, k.deviceId, k.clientMsgId, tsMicros, entryTtl],
      ts,
    );
    return [record, indexed];
  }

  private putConversation(c: ConversationRecord, ts: { timestampMicros?: number }): Promise<unknown> {
    const row = this.cql.run(
      `INSERT INTO conversations (conversation_id, kind, title, created_at_ms, members_version)
        VALUES (?, ?, ?, ?, ?)`,
      [c.id, c.kind, c.title, c.createdAtMs, c.membersVersion],
      ts,
    );
    const writes = [row];
    // Only records that ever had a timer carry one: most conversations never write this row.
    if (c.disappearingSeconds !== undefined) {
      writes.push(
        this.cql.run(
          "INSERT INTO conversation_timers (conversation_id, disappearing_seconds, admins_only) VALUES (?, ?, ?)",
          [c.id, c.disappearingSeconds, c.disappearingAdminsOnly ?? false],
          ts,
        ),
      );
    }
    // Likewise pins (migration 0012): a record without them leaves the stored ones be.
    if (c.pins !== undefined) {
      writes.push(
        this.cql.run(
          "INSERT INTO conversation_pins (conversation_id, pins) VALUES (?, ?)",
          [c.id, JSON.stringify(c.pins)],
          ts,
        ),
      );
    }
    return Promise.all(writes);
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
}
