import type { Logger } from "../common/log.js";
import type { ConversationStore } from "../store/types.js";
import type { DeviceDeliveryBound } from "./delivery-bound.js";

/** How the sweep of expired entries runs. */
export interface ExpirySweepOptions {
  /** Time between sweeps, in milliseconds. */
  intervalMs: number;
  /** Entries one step deletes at most (one bounded write). */
  batch: number;
  /** Steps one sweep takes at most, so a huge backlog is spread over several sweeps. */
  maxSteps?: number;
  /** The server-wide maximum age of entries, in milliseconds; 0 or absent keeps them. */
  retentionMs?: number;
  /**
   * Entries every active device of every member received are deleted this long after their
   * commit, in ms; 0: off. Needs `delivery`.
   */
  afterDeliveryMs?: number;
  /** Who has received what, for afterDeliveryMs (required with it). */
  delivery?: DeviceDeliveryBound;
}

/** Steps one sweep takes unless told otherwise: a million entries at the default batch. */
const DEFAULT_MAX_STEPS = 1_000;

/**
 * Deletes entries past their expiry (disappearing messages) and entries older than the retention
 * from the store in the background, in bounded batches. Until it reaches them they are already
 * served as expired (log.ts), so its pace decides when space is freed, never what a device sees.
 */
export class ExpirySweep {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<number> | undefined;
  /** Entries deleted since start. */
  deleted = 0;

  constructor(
    private readonly store: ConversationStore,
    private readonly log: Logger,
    private readonly options: ExpirySweepOptions,
    /** The clock, in milliseconds since the Unix epoch. */
    private readonly now: () => number = Date.now,
  ) {
    if ((options.afterDeliveryMs ?? 0) > 0 && options.delivery === undefined) {
      throw new Error("retention after delivery needs a DeviceDeliveryBound");
    }
  }

  start(): void {
    this.timer = setInterval(() => void this.sweep(), this.options.intervalMs);
    this.timer.unref();
  }

  /** One sweep (joins the one running); resolves with how many entries it deleted. */
  sweep(): Promise<number> {
    this.running ??= this.steps().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  /** Stops the timer and waits for a sweep in progress. */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.running;
  }

  private async steps(): Promise<number> {
    const nowMs = this.now();
    const expired = await this.run("expired entries", (batch) =>
      this.store.deleteExpiredEntries(nowMs, batch),
    );
    const retentionMs = this.options.retentionMs ?? 0;
    const old =
      retentionMs > 0 && this.store.retentionByTtl !== true
        ? await this.run("entries past the retention", (batch) =>
            this.store.deleteEntriesOlderThan(nowMs - retentionMs, batch),
          )
        : 0;
    const afterDeliveryMs = this.options.afterDeliveryMs ?? 0;
    const delivery = this.options.delivery;
    delivery?.startSweep();
    const delivered =
      afterDeliveryMs > 0 && delivery !== undefined
        ? await this.run("delivered entries past the window", (batch) =>
            this.store.deleteDeliveredOlderThan(nowMs - afterDeliveryMs, batch, delivery.receivedUpTo),
          )
        : 0;
    this.deleted += expired + old + delivered;
    return expired + old + delivered;
  }

  /** Takes bounded steps of one kind of deletion until one deletes less than a batch. */
  private async run(what: string, step: (batch: number) => Promise<number>): Promise<number> {
    let total = 0;
    try {
      for (let i = 0; i < (this.options.maxSteps ?? DEFAULT_MAX_STEPS); i++) {
        const n = await step(this.options.batch);
        total += n;
        if (n < this.options.batch) break;
      }
    } catch (err) {
      this.log.warn({ err, deleted: total }, `deleting ${what} failed; the next sweep retries`);
    }
    if (total > 0) this.log.info({ deleted: total }, `deleted ${what}`);
    return total;
  }
}
