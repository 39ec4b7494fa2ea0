import type { Logger } from "../common/log.js";
import type { ObjectStore } from "./types.js";

/** Where a conversation's stored log begins, as the sequencer says (GetRetentionHorizon). */
export type RetentionHorizon = (conversationId: string) => Promise<number>;

/** How attachment retention runs. */
export interface AttachmentRetentionOptions {
  /**
   * How far the media and sequencer processes' clocks may differ, in milliseconds: a claim goes
   * only once the horizon (the sequencer's clock) has passed its time (this process's) by this.
   */
  marginMs: number;
  /** Conversations one sweep walks at most; the next sweep resumes after the last. */
  conversationsPerSweep?: number;
  /** Objects one sweep deletes per conversation at most; the rest go at the next. */
  batch?: number;
}

const DEFAULT_CONVERSATIONS_PER_SWEEP = 1_000;
const DEFAULT_BATCH = 500;

/**
 * Attachments go with the entries retention deletes. The server cannot tell which message points
 * at which object (the pointer is inside end-to-end encrypted content), but it knows each object's
 * conversation and claim time, and the sender's device claims an object after its message was
 * acknowledged (a member's first download claims it too, later still). So the message was
 * committed before the claim: once the conversation's stored log begins after the claim time
 * (every entry committed before it is gone, horizon.ts), the message is gone and the object
 * goes. This errs late, never early: an object outlives its message by the time between the
 * message's commit and its claim, plus the sweeps' intervals. A client that claims before it
 * sends breaks the premise and may lose its attachment before its message; the SDK never does.
 *
 * Deletions need no lock with claims: a claimed object is never claimed again (claim returns at
 * once), and this deletes claimed objects only.
 */
export class AttachmentRetention {
  /** The last conversation a sweep walked, after which the next resumes (undefined: the first). */
  private cursor: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<number> | undefined;
  /** Objects deleted since start. */
  deleted = 0;

  constructor(
    private readonly store: ObjectStore,
    private readonly horizon: RetentionHorizon,
    private readonly log: Logger,
    private readonly options: AttachmentRetentionOptions,
  ) {}

  /** Sweeps every intervalMs until stop. */
  start(intervalMs: number): void {
    this.timer ??= setInterval(() => {
      this.sweep().catch((err: unknown) => this.log.warn({ err }, "attachment retention sweep failed"));
    }, intervalMs);
    this.timer.unref();
  }

  /** Stops the timer and waits for a sweep in progress. */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    await this.running?.catch(() => {});
  }

  /** One sweep (joins the one running); resolves with how many objects it deleted. */
  sweep(): Promise<number> {
    this.running ??= this.sweepOnce().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async sweepOnce(): Promise<number> {
    const perSweep = this.options.conversationsPerSweep ?? DEFAULT_CONVERSATIONS_PER_SWEEP;
    const batch = this.options.batch ?? DEFAULT_BATCH;
    const { marginMs } = this.options;
    const ids = await this.store.listClaimConversations(this.cursor, perSweep);
    // A short page means the walk reached the end: the next sweep starts again from the first.
    this.cursor = ids.length < perSweep ? undefined : ids[ids.length - 1];
    let deleted = 0;
    for (const id of ids) {
      // A conversation whose claims all went (its folder or prefix may stay) is not worth a question.
      if ((await this.store.listClaimed(id, Number.MAX_SAFE_INTEGER, 1)).length === 0) continue;
      const horizon = await this.horizon(id);
      if (horizon <= 0) continue;
      for (const record of await this.store.listClaimed(id, horizon - marginMs, batch)) {
        await this.store.delete(record.objectId);
        deleted++;
      }
    }
    this.deleted += deleted;
    if (deleted > 0) this.log.info({ deleted }, "attachments of entries past the retention deleted");
    return deleted;
  }
}
