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

/** The head row as read. */
export interface Head {
  /** False before the conversation's first append: the reservation is then an INSERT. */
  exists: boolean;
  /** The last committed seq; 0 for none. */
  lastSeq: number;
  /** The write timestamp of the last commit's cells, in microseconds. */
  commitTs: number;
  /** The reservation's id; empty when no commit is pending. */
  pendingId: string;
  /** The last seq reserved by the pending commit; 0 for none. */
  pendingLast: number;
  /** When the pending commit reserved its seqs, in milliseconds since the Unix epoch. */
  pendingAtMs: number;
  /** The pending commit's encoded intent. */
  pending: Uint8Array | undefined;
}

const HEAD_COLUMNS = "last_seq, commit_ts, pending_id, pending_last, pending, pending_at_ms";

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

/** Reads the head; serial (LOCAL_SERIAL) also finishes an LWT left half-done on it. */
export async function readHead(cql: Cql, conversationId: string, serial: boolean): Promise<Head> {
  return headOf(
    await cql.one(`SELECT ${HEAD_COLUMNS} FROM log_heads WHERE conversation_id = ?`, [conversationId], {
      serial,
    }),
  );
}
