/**
 * A conversation's head row (log_heads): its last seq and the commit reserved on it, if any. Only
 * the fence (log.ts) writes it, and only by LWT.
 */
import { type Cql, num, type Row } from "../schema.js";

/**
 * How long a reserved commit may stay pending before another process completes it for its writer,
 * in milliseconds. Longer than any healthy commit (the driver's request timeout is 12 s), short
 * enough that a conversation whose writer crashed is blocked only briefly.
 */
export const PENDING_GRACE_MS = 15_000;

/**
 * A process's own observations of pending reservations: when (on this process's monotonic clock,
 * in milliseconds) it first saw each conversation's current pending_id. Age is never measured
 * against the writer's clock, which may run ahead (stalling the conversation by the skew) or
 * behind; see pendingAgeMs.
 */
const firstSeen = new Map<string, { pendingId: string; atMs: number }>();

/** Observations kept at most; the oldest is forgotten first (it only restarts that one's count). */
const MAX_OBSERVED = 10_000;

/** The head row as read. */
export interface Head {
  /** False before the conversation's first append: the reservation is then an INSERT. */
  exists: boolean;
  /** The last committed seq; 0 for none. */
  lastSeq: number;
  /**
   * The write timestamp a new commit's cells must sort after, in microseconds: the larger of the
   * last commit's (log_heads.commit_ts) and the highest unfenced write's to the conversation's
   * rows (conversation_clocks.plain_ts, see clock.ts). 0 for none.
   */
  commitTs: number;
  /** The reservation's id; empty when no commit is pending. */
  pendingId: string;
  /** The last seq reserved by the pending commit; 0 for none. */
  pendingLast: number;
  /**
   * When the pending commit counts as reserved, in milliseconds since the Unix epoch on THIS
   * process's clock: now minus the reservation's age (pendingAgeMs), so that `Date.now() -
   * pendingAtMs` is an age measured on one clock. 0 when nothing is pending.
   */
  pendingAtMs: number;
  /** The pending commit's encoded intent. */
  pending: Uint8Array | undefined;
}

// WRITETIME(pending_id) is the Paxos ballot's time of the LWT that set it (the database
// coordinator's clock, in microseconds), and toUnixTimestamp(now()) the reading coordinator's
// time (milliseconds): both database clocks, neither the writer's.
const HEAD_COLUMNS =
  "last_seq, commit_ts, pending_id, pending_last, pending, WRITETIME(pending_id) AS pending_ts, " +
  "toUnixTimestamp(now()) AS db_now_ms";

/**
 * The age of a pending reservation, in milliseconds, measured on one clock at a time and never on
 * the writer's (its pending_at_ms is ignored):
 *
 * - this process's monotonic clock, from the moment it first saw this pending_id on this
 *   conversation: however wrong any other clock is, a reservation a crashed writer left is
 *   recovered PENDING_GRACE_MS after a reader first sees it;
 * - the database's clock: now on the reading coordinator minus the ballot time of the LWT that set
 *   pending_id, so a process that starts long after a writer died does not wait the grace out
 *   again. Database nodes run NTP; should one run ahead, a live writer's reservation is claimed
 *   early, which the claim makes safe (its writer's advance accepts the claim, log.ts).
 *
 * The larger of the two counts.
 */
function pendingAgeMs(conversationId: string, pendingId: string, row: Row): number {
  const now = performance.now();
  const seen = firstSeen.get(conversationId);
  let observedMs = 0;
  if (seen !== undefined && seen.pendingId === pendingId) {
    observedMs = now - seen.atMs;
  } else {
    firstSeen.delete(conversationId);
    firstSeen.set(conversationId, { pendingId, atMs: now });
    if (firstSeen.size > MAX_OBSERVED) firstSeen.delete(firstSeen.keys().next().value as string);
  }
  const ballotMicros = row.get("pending_ts");
  const dbNowMs = row.get("db_now_ms");
  const dbMs =
    ballotMicros === null || ballotMicros === undefined || dbNowMs === null || dbNowMs === undefined
      ? 0
      : num(dbNowMs) - num(ballotMicros) / 1000;
  return Math.max(0, observedMs, dbMs);
}

function headOf(conversationId: string, row: Row | undefined, plainTs: number): Head {
  if (row === undefined) {
    return {
      exists: false,
      lastSeq: 0,
      commitTs: plainTs,
      pendingId: "",
      pendingLast: 0,
      pendingAtMs: 0,
      pending: undefined,
    };
  }
  const pending = row.get("pending") as Buffer | null;
  const pendingId = (row.get("pending_id") as string | null) ?? "";
  if (pendingId === "") firstSeen.delete(conversationId);
  return {
    exists: true,
    lastSeq: num(row.get("last_seq")),
    commitTs: Math.max(num(row.get("commit_ts")), plainTs),
    pendingId,
    pendingLast: num(row.get("pending_last")),
    pendingAtMs: pendingId === "" ? 0 : Date.now() - pendingAgeMs(conversationId, pendingId, row),
    pending: pending === null || pending.length === 0 ? undefined : pending,
  };
}

/** Reads the head; serial (LOCAL_SERIAL) also finishes an LWT left half-done on it. */
export async function readHead(
  cql: Cql,
  conversationId: string,
  serial: boolean,
  withClock = true,
): Promise<Head> {
  const [row, plainTs] = await Promise.all([
    cql.one(`SELECT ${HEAD_COLUMNS} FROM log_heads WHERE conversation_id = ?`, [conversationId], {
      serial,
    }),
    withClock ? readPlainTs(cql, conversationId) : 0,
  ]);
  return headOf(conversationId, row, plainTs);
}

/** The highest write timestamp of the conversation's unfenced writes (clock.ts), in microseconds. */
export async function readPlainTs(cql: Cql, conversationId: string): Promise<number> {
  const row = await cql.one("SELECT plain_ts FROM conversation_clocks WHERE conversation_id = ?", [
    conversationId,
  ]);
  return num(row?.get("plain_ts"));
}

/** The write timestamp of the conversation's last commit (log_heads.commit_ts), in microseconds. */
export async function readCommitTs(cql: Cql, conversationId: string): Promise<number> {
  const row = await cql.one("SELECT commit_ts FROM log_heads WHERE conversation_id = ?", [conversationId]);
  return num(row?.get("commit_ts"));
}
