/**
 * Reads of a conversation: metadata, members, the log (paged bucket by bucket), idempotency
 * records, and a user's conversations.
 */
import type { Entry } from "../../../../gen/switchboard/v1/entry_pb.js";
import type { ConversationRecord, MemberRecord, PinRecord, UserConversation } from "../../types.js";
import { type Cql, num } from "../schema.js";
import { readHead } from "./head.js";
import { bucketOf, type ConversationSettings, decodeEntry } from "./layout.js";

/** The conversation port's reads. */
export class ConversationReads {
  constructor(
    private readonly cql: Cql,
    private readonly settings: ConversationSettings,
  ) {}

  /**
   * last_seq at LOCAL_QUORUM: what the last advance (an LWT, committed to a quorum) wrote. An LWT
   * still in its Paxos round is not seen, nor a pending reservation, so the answer may trail the
   * log (and what readEntries shows of a commit in flight), never lead it.
   */
  async peekLastSeq(conversationId: string): Promise<number> {
    const row = await this.cql.one("SELECT last_seq FROM log_heads WHERE conversation_id = ?", [
      conversationId,
    ]);
    return num(row?.get("last_seq"));
  }

  async getConversation(conversationId: string): Promise<ConversationRecord | undefined> {
    const [row, timer, pinned] = await Promise.all([
      this.cql.one(
        "SELECT kind, title, created_at_ms, members_version FROM conversations WHERE conversation_id = ?",
        [conversationId],
      ),
      this.cql.one(
        "SELECT disappearing_seconds, admins_only FROM conversation_timers WHERE conversation_id = ?",
        [conversationId],
      ),
      this.cql.one("SELECT pins FROM conversation_pins WHERE conversation_id = ?", [conversationId]),
    ]);
    if (row === undefined) return undefined;
    return {
      id: conversationId,
      kind: row.get("kind") as ConversationRecord["kind"],
      title: (row.get("title") as string | null) ?? "",
      createdAtMs: num(row.get("created_at_ms")),
      membersVersion: num(row.get("members_version")),
      ...(timer !== undefined && {
        disappearingSeconds: num(timer.get("disappearing_seconds")),
        disappearingAdminsOnly: (timer.get("admins_only") as boolean | null) ?? false,
      }),
      ...(typeof pinned?.get("pins") === "string" && { pins: JSON.parse(pinned.get("pins")) as PinRecord[] }),
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

  async readEntries(conversationId: string, afterSeq: number, limit: number): Promise<Entry[]> {
    if (!(limit >= 1) || Number.isNaN(afterSeq)) return [];
    const want = Math.floor(limit);
    const start = Math.max(0, Math.floor(afterSeq)) + 1;
    const head = await readHead(this.cql, conversationId, false, false);
    // Entries of a reserved commit may already be written; they are never taken back.
    const bound = Math.max(head.lastSeq, head.pendingLast);
    const out: Entry[] = [];
    if (start > bound) return out;
    // Above the committed head the entries are a commit's, written bucket slice by bucket slice
    // while this read walks the buckets: a slice may land after its bucket was read and before
    // the next bucket is, so the read stops at the first missing seq there instead of returning
    // a hole. Below the head every seq was written; a missing one is the entry TTL's doing.
    let expected = Math.max(head.lastSeq, start - 1) + 1;
    // Walking bucket by bucket up to the head, rather than stopping at the first short bucket,
    // also steps over buckets emptied by the entry TTL.
    const { bucketSize } = this.settings;
    // An entry past its expiry may outlive it by up to its TTL's rounding: stepped over, as if gone.
    const nowMs = Date.now();
    for (let bucket = bucketOf(start, bucketSize); bucket <= bucketOf(bound, bucketSize); bucket++) {
      let from = Math.max(start, bucket * bucketSize);
      for (;;) {
        const asked = want - out.length;
        let rows = 0;
        for await (const row of this.cql.pages(
          "SELECT entry FROM log_entries WHERE conversation_id = ? AND bucket = ? AND seq >= ? LIMIT ?",
          [conversationId, bucket, from, asked],
        )) {
          rows++;
          const entry = decodeEntry(row.get("entry") as Buffer);
          const seq = Number(entry.seq);
          from = seq + 1;
          if (seq > head.lastSeq) {
            if (seq !== expected) return out;
            expected++;
          }
          if (entry.expiresAtMs > 0n && Number(entry.expiresAtMs) <= nowMs) continue;
          out.push(entry);
        }
        // Rows stepped over as expired left room in the page: read on in this bucket.
        if (rows < asked || out.length >= want) break;
      }
      if (out.length >= want) break;
      // The pending commit's next slice is not written yet: nothing later is readable either.
      if (expected <= Math.min(bound, (bucket + 1) * bucketSize - 1)) return out;
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
}
