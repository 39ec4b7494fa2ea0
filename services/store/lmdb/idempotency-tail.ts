/**
 * The idempotency records of recent commits: in a log on disk, written with their entries, and in
 * memory here, until they are moved into the index, once a second.
 *
 * Why. The index is keyed [conversationId, deviceId, clientMsgId], so each commit's records land
 * on leaves all over its B-tree, and LMDB writes every page a transaction touched before its
 * fsync: at 5,000 msgs/s the records were about two fifths of the pages the write thread wrote
 * (docs/benchmarks.md, sixteenth and seventeenth passes). A commit now writes one row at the end
 * of the log instead. A move puts a second's records into the index together, so the records a
 * device sent in one conversation that second share their leaf's write.
 *
 * A move goes in slices of about MOVE_SLICE records, each its own unit on the write thread, the
 * next handed over once the last is answered, so commits are not held behind one long
 * transaction (5,000 records took 30-40 ms in one). Records are sliced by (conversation, device),
 * never splitting one, which keeps the records that share leaves in one transaction. When every
 * slice is in, one more unit removes the log's rows the move covered.
 *
 * What stays the same. A record is durable with its entries, in the same transaction, and stays
 * in the log until it is in the index: a crash in the middle of a move leaves rows whose records
 * are put again, the same, after the next open reads the log back. The index's expiry, hourly,
 * moves what is waiting first, and expires by each commit's own time.
 *
 * Lookups check, in order: the records here (committed, not yet moved); the index; and the
 * records of commits whose outcome is unknown (the write thread did not answer in time, or died
 * holding them), which count if their log row is there. Such a commit may land after its caller
 * was refused, and a retry must then get its seq (docs/architecture.md, "the store stops
 * answering"). The move's last unit puts the records of such rows that the index lacks, and once
 * it is answered, each such commit is in the index or was never applied, and is forgotten here.
 *
 * Bounds. Records wait here for at most an interval, or until `maxRecords` of them start a move;
 * past `maxBytes` (moves failing, as they do when the disk does), commits write their records to
 * the index directly, as every commit did before.
 */
import { UnavailableError } from "../../common/errors.js";
import type { ConversationDbs, IdempotencyRecord, IndexedRecord, RunUnit } from "./conversation-writes.js";

/** How records reach the index, and how many wait. */
export interface IdempotencyTailOptions {
  /** How often waiting records are moved into the index, in milliseconds. */
  intervalMs: number;
  /** A move starts at once when this many records wait. */
  maxRecords: number;
  /** Past this many bytes of waiting records, commits write to the index directly. */
  maxBytes: number;
}

export const DEFAULT_TAIL_OPTIONS: IdempotencyTailOptions = {
  intervalMs: 1_000,
  maxRecords: 16_384,
  maxBytes: 16 * 1024 * 1024,
};

/** Records one unit of a move puts into the index, about (a device's records are not split). */
export const MOVE_SLICE = 1_024;

/** A committed record waiting here: its seq, the log row it is in, and its commit's time. */
interface Waiting {
  seq: number;
  logId: number;
  atMs: number;
}

/** The waiting records of one device in one conversation, by client_msg_id. */
interface Pair {
  conversationId: string;
  deviceId: string;
  records: Map<string, Waiting>;
}

// What a waiting record costs here, beyond its client_msg_id: map slots and objects (roughly; the
// bound needs the order of magnitude, not the byte).
const RECORD_OVERHEAD_BYTES = 160;

/** One string per (conversation, device); the length first, so no pair of ids can forge another's. */
function pairKey(conversationId: string, deviceId: string): string {
  return `${conversationId.length}:${conversationId}${deviceId}`;
}

export class IdempotencyTail {
  /** Committed records not yet moved, by (conversation, device): the latest record of each key. */
  private readonly waiting = new Map<string, Pair>();
  /** The (pair, client_msg_id) of each log row's records here, by log id. */
  private readonly rows = new Map<number, Array<[pair: string, clientMsgId: string]>>();
  /** Records of commits whose outcome is unknown: by pair, then client_msg_id. */
  private readonly unknown = new Map<string, Map<string, { seq: number; logId: number }>>();
  private records = 0;
  private bytes = 0;
  private nextLogId: number;
  /** Log ids handed out whose commits have not been answered, in the order handed out. */
  private readonly inFlight = new Set<number>();
  private moving: Promise<void> | undefined;
  private closed = false;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly dbs: ConversationDbs,
    private readonly run: RunUnit,
    private readonly options: IdempotencyTailOptions = DEFAULT_TAIL_OPTIONS,
  ) {
    // What a crash (or a close) left in the log: read back, to be found and moved as if just
    // committed. Log ids go on from the last one, so none is used twice.
    let last = 0;
    for (const { key, value } of dbs.idempotencyLog.getRange()) {
      last = key as number;
      this.remember(last, value.records, value.atMs);
    }
    this.nextLogId = last + 1;
    this.timer = setInterval(() => void this.move(), options.intervalMs).unref();
  }

  /** The seq a committed record gives, if any, wherever it is. */
  get(conversationId: string, deviceId: string, clientMsgId: string): number | undefined {
    const pair = pairKey(conversationId, deviceId);
    const waiting = this.waiting.get(pair)?.records.get(clientMsgId);
    if (waiting !== undefined) return waiting.seq;
    const indexed = this.dbs.idempotency.get([conversationId, deviceId, clientMsgId]);
    if (indexed !== undefined) return indexed.seq;
    const unknown = this.unknown.get(pair)?.get(clientMsgId);
    // Its row is there only if its commit was applied: rows are written by commits alone, and
    // the unit that removes one has put its records in the index, read above.
    if (unknown !== undefined && this.dbs.idempotencyLog.doesExist(unknown.logId)) return unknown.seq;
    return undefined;
  }

  /** The log row for a commit's records, or undefined: write them to the index directly. */
  logIdFor(records: readonly IdempotencyRecord[]): number | undefined {
    if (records.length === 0 || this.bytes >= this.options.maxBytes) return undefined;
    const logId = this.nextLogId++;
    this.inFlight.add(logId);
    return logId;
  }

  /** A commit was applied at atMs: its records are found here until they are moved. */
  committed(logId: number | undefined, records: readonly IdempotencyRecord[], atMs: number): void {
    if (logId !== undefined) this.inFlight.delete(logId);
    if (logId === undefined) {
      // Written to the index, which now holds the latest record of these keys.
      for (const [c, d, m] of records) this.drop(pairKey(c, d), m);
      return;
    }
    this.remember(logId, records, atMs);
    if (this.records >= this.options.maxRecords) void this.move();
  }

  /**
   * A commit was refused. One known to have stored nothing (a conflict, a failed transaction)
   * leaves nothing to find; any other may yet be applied.
   */
  refused(logId: number | undefined, records: readonly IdempotencyRecord[], storedNothing: boolean): void {
    if (logId === undefined) return;
    this.inFlight.delete(logId);
    if (storedNothing) return;
    for (const [c, d, m, seq] of records) {
      const pair = pairKey(c, d);
      const byId = this.unknown.get(pair) ?? new Map<string, { seq: number; logId: number }>();
      byId.set(m, { seq, logId });
      this.unknown.set(pair, byId);
    }
  }

  /**
   * Moves every record logged so far into the index; resolves once that is done, or has failed
   * (what was not moved stays in the log and here, and the next interval tries again). One move
   * at a time.
   */
  move(): Promise<void> {
    if (this.moving !== undefined) return this.moving;
    if (this.rows.size === 0 && this.unknown.size === 0) return Promise.resolve();
    // Up to the first commit not answered yet: its records are not here to be put, and the trim
    // must not remove its row.
    const [unanswered] = this.inFlight;
    this.moving = this.moveUpTo((unanswered ?? this.nextLogId) - 1)
      .catch((err: unknown) => {
        // A storage fault is the engine's to report (writeProblem); anything else is a bug,
        // which would otherwise only show as commits writing to the index directly.
        if (!(err instanceof UnavailableError)) {
          console.error("moving idempotency records into the index failed", err);
        }
      })
      .finally(() => {
        this.moving = undefined;
      });
    return this.moving;
  }

  /** Stops moving; waits for a move in flight. What is left stays in the log for the next open. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    await this.moving;
  }

  // Every commit up to upTo has been answered, so its records are here, or it is known to have
  // stored nothing, or its outcome is unknown. Those of unknown outcome were handed to the write
  // thread before this move's units, and it applies units in order: by the time the trim is
  // answered, each is in the index or was never applied.
  private async moveUpTo(upTo: number): Promise<void> {
    const pairs = [...this.waiting.values()];
    let slice: IndexedRecord[] = [];
    for (const [i, pair] of pairs.entries()) {
      for (const [clientMsgId, w] of pair.records) {
        if (w.logId <= upTo) slice.push([pair.conversationId, pair.deviceId, clientMsgId, w.seq, w.atMs]);
      }
      if (slice.length >= MOVE_SLICE || (i === pairs.length - 1 && slice.length > 0)) {
        if (this.closed) return;
        await this.run({ op: "indexIdempotency", records: slice });
        slice = [];
      }
    }
    const reindex = [...this.unknown.values()].some((byId) =>
      [...byId.values()].some(({ logId }) => logId <= upTo),
    );
    await this.run({ op: "trimIdempotencyLog", upTo, reindex });
    this.forget(upTo);
  }

  private remember(logId: number, records: readonly IdempotencyRecord[], atMs: number): void {
    const keys: Array<[string, string]> = [];
    for (const [c, d, m, seq] of records) {
      const key = pairKey(c, d);
      let pair = this.waiting.get(key);
      if (pair === undefined) {
        pair = { conversationId: c, deviceId: d, records: new Map() };
        this.waiting.set(key, pair);
        this.bytes += key.length * 2;
      }
      if (!pair.records.has(m)) {
        this.records++;
        this.bytes += m.length * 2 + RECORD_OVERHEAD_BYTES;
      }
      pair.records.set(m, { seq, logId, atMs });
      keys.push([key, m]);
    }
    this.rows.set(logId, keys);
  }

  private drop(key: string, clientMsgId: string): void {
    const pair = this.waiting.get(key);
    if (pair === undefined || !pair.records.delete(clientMsgId)) return;
    this.records--;
    this.bytes -= clientMsgId.length * 2 + RECORD_OVERHEAD_BYTES;
    if (pair.records.size === 0) {
      this.waiting.delete(key);
      this.bytes -= key.length * 2;
    }
  }

  /** Forgets what a move up to upTo put in the index. */
  private forget(upTo: number): void {
    for (const [logId, keys] of this.rows) {
      if (logId > upTo) continue;
      this.rows.delete(logId);
      for (const [key, clientMsgId] of keys) {
        // A later row of the same key, not moved yet, keeps it.
        if (this.waiting.get(key)?.records.get(clientMsgId)?.logId === logId) this.drop(key, clientMsgId);
      }
    }
    for (const [key, byId] of this.unknown) {
      for (const [clientMsgId, { logId }] of byId) if (logId <= upTo) byId.delete(clientMsgId);
      if (byId.size === 0) this.unknown.delete(key);
    }
  }
}
