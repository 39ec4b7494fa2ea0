/**
 * One timestamp source for every write to a conversation's rows outside the fence: member changes
 * and mutes with no append, member cursors, metadata and rewrites of existing entries.
 *
 * A fenced commit writes its cells at its intent's timestamp, `max(writer's clock, commitTs + 1)`
 * (intent.ts), which runs ahead of real time when a writer's clock did and stays ahead: each
 * commit sorts after the last. A write stamped by the driver's clock meanwhile sorts BEFORE the
 * commit it follows, and is silently lost (an unmute, a cursor move). So these writes take
 * `max(now, commitTs + 1)` too, where commitTs is the larger of the head's last commit and the
 * conversation's clock row, and record their timestamp in that row (conversation_clocks.plain_ts)
 * before writing: the next fenced commit reads it with the head (head.ts) and sorts after them in
 * turn. Writes to one conversation's rows are thus ordered by one Lamport-style clock carried by
 * the database, whichever process makes them; only writes racing each other (which the sequencer,
 * one writer per conversation, does not make) are ordered by whichever stamp is higher.
 */
import type { Cql } from "../schema.js";
import { readCommitTs, readPlainTs } from "./head.js";

/** The last microsecond this process's clock gave, so that two writes never share one. */
let lastNow = 0;

/** The process's clock in microseconds, strictly increasing (Date.now has millisecond steps). */
function nowMicros(): number {
  lastNow = Math.max(Date.now() * 1000, lastNow + 1);
  return lastNow;
}

/**
 * A write timestamp, in microseconds, later than every commit and every unfenced write made so far
 * to the conversation's rows; recorded in conversation_clocks before it is returned.
 */
export async function nextWriteTs(cql: Cql, conversationId: string): Promise<number> {
  const [commitTs, plainTs] = await Promise.all([
    readCommitTs(cql, conversationId),
    readPlainTs(cql, conversationId),
  ]);
  // The floors come from the database, so a later write re-reads what an earlier one recorded.
  const ts = Math.max(nowMicros(), commitTs + 1, plainTs + 1);
  // The value is the write's own timestamp, so the row keeps the highest one ever written.
  await cql.run(
    "INSERT INTO conversation_clocks (conversation_id, plain_ts) VALUES (?, ?)",
    [conversationId, ts],
    { timestampMicros: ts },
  );
  return ts;
}
