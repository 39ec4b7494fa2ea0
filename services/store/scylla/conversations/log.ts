/**
 * The fence: how commits append to a conversation's log so that two writers can never both take
 * a seq. A conversation's head row (log_heads) is written only by LWT. A commit that appends
 * first reserves its seqs there (`IF last_seq = first - 1 AND pending_id = ''`), storing its whole
 * intent; then writes the entries and everything else; then advances last_seq and clears the
 * reservation (`IF pending_id = mine`). docs/scylla.md gives the crash analysis.
 */
import type { Logger } from "../../../common/log.js";
import { StoreError } from "../../errors.js";
import { conflict } from "../../records.js";
import type { ConversationWrite, RecoveredCommit } from "../../types.js";
import { type Cql, sleep } from "../schema.js";
import { type Head, PENDING_GRACE_MS, readHead } from "./head.js";
import { decodeIntent, encodeIntent, type Intent, intentOf, plan } from "./intent.js";
import { decodeEntry, EMPTY, MAX_INTENT_BYTES } from "./layout.js";
import { allOrFirstError } from "./parallel.js";
import type { CommitRows } from "./rows.js";

/** Commits through the fence, and reads the head as a sequencer may trust it. */
export class ConversationLog {
  /** Ids of this process's intents whose commit failed after the reservation. */
  private readonly unfinished = new Set<string>();
  /** Told of every intent this process completed for a writer that did not (see onRecovered). */
  private readonly recoveredListeners = new Set<(recovered: RecoveredCommit) => void>();

  constructor(
    private readonly cql: Cql,
    private readonly rows: CommitRows,
    private readonly log?: Logger,
  ) {}

  /** Applies writes: every check before any write, then reserve, write, advance per conversation. */
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

    const intents = plans.map((p, i) => (p.firstSeq > 0 ? intentOf(p, heads[i]!.commitTs) : undefined));
    // Encoded once: the size check and the reservation use the same bytes. An intent the database
    // would refuse at every attempt is refused here, before anything is written.
    const encoded = intents.map((intent) => (intent === undefined ? undefined : encodeIntent(intent)));
    for (const [i, bytes] of encoded.entries()) {
      if (bytes !== undefined && bytes.length > MAX_INTENT_BYTES) {
        const intent = intents[i]!;
        throw new StoreError(
          "limit",
          `the commit of seqs ${intent.firstSeq}..${intent.lastSeq} to ${intent.conversationId} is ` +
            `${bytes.length} bytes as an intent; the limit is ${MAX_INTENT_BYTES} (commit fewer entries at once)`,
        );
      }
    }
    const reservations = await Promise.allSettled(
      intents.map((intent, i) =>
        intent === undefined ? Promise.resolve() : this.reserve(intent, encoded[i]!, heads[i]!),
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
          await this.rows.applyUnfenced(p);
          return;
        }
        try {
          await this.rows.apply(intent);
          await this.finish(intent);
        } catch (err) {
          // Ours, so nobody needs to wait out the grace period before completing it.
          this.unfinished.add(intent.id);
          throw err;
        }
      }),
    );
  }

  /** The last committed seq, after settling any commit left pending. */
  async getLastSeq(conversationId: string): Promise<number> {
    return (await this.settledHead(conversationId, "wait")).lastSeq;
  }

  /**
   * Registers a listener told of every intent this process completes for a writer that did not
   * (the port's onRecovered): nobody published its entries' events. Returns the unsubscribe.
   */
  onRecovered(listener: (recovered: RecoveredCommit) => void): () => void {
    this.recoveredListeners.add(listener);
    return () => this.recoveredListeners.delete(listener);
  }

  /** The fence: takes seqs firstSeq..lastSeq, or refuses with "conflict". */
  private async reserve(intent: Intent, pending: Buffer, head: Head): Promise<void> {
    const id = intent.conversationId;
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

  /** Advances the head past an applied intent and ends its reservation. */
  private async finish(intent: Intent): Promise<void> {
    if (await this.advance(intent, intent.id)) return;
    // A recoverer claimed it while this writer applied it: the rows are written (by this writer,
    // identically by the recoverer), so whichever of the two advances the head first is right.
    if (await this.advance(intent, claimOf(intent.id))) return;
    // Only a recoverer finishing the same intent ends a reservation other than its writer.
    const head = await readHead(this.cql, intent.conversationId, true);
    if (head.lastSeq < intent.lastSeq) {
      throw new Error(
        `the reservation of seqs ${intent.firstSeq}..${intent.lastSeq} of ${intent.conversationId} was lost`,
      );
    }
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
      const head = await readHead(this.cql, conversationId, young === "wait");
      if (head.pendingId === "") return head;
      const age = Date.now() - head.pendingAtMs;
      const intentId = intentIdOf(head.pendingId);
      if ((age >= PENDING_GRACE_MS || this.unfinished.has(intentId)) && head.pending !== undefined) {
        await this.recover(decodeIntent(head.pending), head.pendingId);
        this.unfinished.delete(intentId);
        continue;
      }
      if (young === "refuse") {
        throw conflict(`a commit to ${conversationId} is in flight in another process`);
      }
      await sleep(Math.min(delay, Math.max(1, PENDING_GRACE_MS - age)));
    }
  }

  /**
   * Completes an intent whose writer stopped between reserving and advancing the head. It first
   * claims the reservation (renames pending_id, by LWT), so that its writer, if alive after all,
   * can no longer release it: a release after this process wrote the intent's entries and
   * idempotency records would free the seqs for other messages while the records still pointed
   * at them. Never roll back what another process may be rolling forward.
   */
  private async recover(intent: Intent, pendingId: string): Promise<void> {
    const claim = claimOf(intent.id);
    if (pendingId !== claim) {
      const claimed = await this.cql.lwt(
        "UPDATE log_heads SET pending_id = ? WHERE conversation_id = ? IF pending_id = ?",
        [claim, intent.conversationId, pendingId],
      );
      // The writer finished or released it first, or another reader claimed it: read again.
      if (!claimed.wasApplied()) return;
    }
    this.log?.warn(
      { conversationId: intent.conversationId, firstSeq: intent.firstSeq, lastSeq: intent.lastSeq },
      "completing a commit its writer left pending",
    );
    await this.rows.apply(intent);
    // Only the process whose advance ended the reservation tells its listeners: a writer that
    // advanced first (it was slow, not dead) publishes its events itself.
    if (await this.advance(intent, claim)) this.tellRecovered(intent);
  }

  private tellRecovered(intent: Intent): void {
    if (this.recoveredListeners.size === 0) return;
    const recovered: RecoveredCommit = {
      conversationId: intent.conversationId,
      entries: intent.entries.map((e) => decodeEntry(e.bytes)),
    };
    for (const listener of this.recoveredListeners) {
      try {
        listener(recovered);
      } catch (err) {
        // A listener's bug must not turn a completed recovery into a failed read.
        this.log?.error({ err, conversationId: intent.conversationId }, "a recovery listener failed");
      }
    }
  }

  /** Advances the head past an applied intent if its reservation is still `pendingId`. */
  private async advance(intent: Intent, pendingId: string): Promise<boolean> {
    const result = await this.cql.lwt(
      `UPDATE log_heads SET last_seq = ?, commit_ts = ?, pending_id = '', pending_last = 0, pending = ?,
        pending_at_ms = 0 WHERE conversation_id = ? IF pending_id = ?`,
      [intent.lastSeq, intent.tsMicros, EMPTY, intent.conversationId, pendingId],
    );
    return result.wasApplied();
  }
}

/** The pending_id of a reservation a recovering reader has claimed. */
function claimOf(intentId: string): string {
  return `${intentId}~claimed`;
}

/** The intent id of a pending_id, claimed or not. */
function intentIdOf(pendingId: string): string {
  return pendingId.endsWith("~claimed") ? pendingId.slice(0, -"~claimed".length) : pendingId;
}
