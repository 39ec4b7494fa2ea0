/**
 * Deletion of the delivered part of conversations' logs (deleteDeliveredOlderThan). A TTL cannot
 * wait for acknowledgements, so this walks log_heads by token, bounded per call, and deletes each
 * conversation's deletable prefix by range, bucket by bucket.
 */
import type { ReceivedUpTo } from "../../types.js";
import type { Cql } from "../schema.js";
import { bucketOf, type ConversationSettings } from "./layout.js";
import type { ConversationReads } from "./reads.js";

/** Conversations one call walks at most; the next call resumes after them. */
const CONVERSATIONS_PER_CALL = 1_000;

/** Entries read per conversation and call at most (and so deleted): one bounded read. */
const ENTRIES_PER_CONVERSATION = 1_000;

/** Deletes entries every member has received once they are old enough. */
export class DeliveredRetention {
  /** The last conversation a call finished, by whose token the next call resumes. */
  private cursor: string | undefined;

  constructor(
    private readonly cql: Cql,
    private readonly reads: ConversationReads,
    private readonly settings: ConversationSettings,
  ) {}

  async deleteDeliveredOlderThan(
    olderThanMs: number,
    limit: number,
    receivedUpTo: ReceivedUpTo,
  ): Promise<number> {
    if (!(limit >= 1) || !Number.isFinite(olderThanMs)) return 0;
    const from = this.cursor;
    const ids: string[] = [];
    for await (const row of this.cql.pages(
      from === undefined
        ? "SELECT conversation_id FROM log_heads LIMIT ?"
        : "SELECT conversation_id FROM log_heads WHERE token(conversation_id) > token(?) LIMIT ?",
      from === undefined ? [CONVERSATIONS_PER_CALL] : [from, CONVERSATIONS_PER_CALL],
    )) {
      ids.push(row.get("conversation_id") as string);
    }
    // A short page means the walk reached the end: the next call starts again from the first.
    this.cursor = ids.length < CONVERSATIONS_PER_CALL ? undefined : ids[ids.length - 1];
    let deleted = 0;
    let done = from;
    for (const id of ids) {
      if (deleted >= limit) {
        // Resume with this conversation next time.
        this.cursor = done;
        break;
      }
      deleted += await this.deletePrefix(
        id,
        olderThanMs,
        Math.min(limit - deleted, ENTRIES_PER_CONVERSATION),
        receivedUpTo,
      );
      done = id;
    }
    return deleted;
  }

  /** Deletes one conversation's received entries older than olderThanMs, at most `most`. */
  private async deletePrefix(
    id: string,
    olderThanMs: number,
    most: number,
    receivedUpTo: ReceivedUpTo,
  ): Promise<number> {
    const entries = await this.reads.readEntries(id, 0, most);
    // The bound (device cursors, accounts) is asked for only where something is old enough.
    const oldest = entries[0];
    if (oldest === undefined || Number(oldest.serverTimeMs) >= olderThanMs) return 0;
    const bound = await receivedUpTo(id, await this.reads.getMembers(id));
    if (bound < 1) return 0;
    let first = 0;
    let last = 0;
    for (const e of entries) {
      const seq = Number(e.seq);
      if (seq > bound || Number(e.serverTimeMs) >= olderThanMs) break;
      if (first === 0) first = seq;
      last = seq;
    }
    if (last === 0) return 0;
    const { bucketSize } = this.settings;
    // Range deletes, one per bucket: entries between first and last that the read stepped over
    // (expired by their own TTL) go too, and nothing past last.
    for (let bucket = bucketOf(first, bucketSize); bucket <= bucketOf(last, bucketSize); bucket++) {
      await this.cql.run(
        "DELETE FROM log_entries WHERE conversation_id = ? AND bucket = ? AND seq >= ? AND seq <= ?",
        [id, bucket, Math.max(first, bucket * bucketSize), Math.min(last, (bucket + 1) * bucketSize - 1)],
      );
    }
    return entries.filter((e) => Number(e.seq) <= last).length;
  }
}
