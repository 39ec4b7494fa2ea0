/**
 * Turns for work that becomes ready together, each a task of its own, given in the order they
 * were asked for, with the loop let through to its timers and I/O once a slice of them has run
 * for `sliceMs`.
 *
 * Why: every shard's commit answered by one write-thread message ran as one task, with the acks
 * and deliveries each set off in that task's microtasks: at 10,000 devices the loop's longest
 * stall was all of them together. Not a turn of the loop each: a turn of the loop at 10,000
 * devices reads every socket that became readable meanwhile, and one commit's answer a turn let
 * the reads outrun the answers until almost no send was answered (docs/benchmarks.md,
 * twenty-second pass). A slice gives as many turns as fit in its time, so the answers keep their
 * share of the loop whatever a turn of it costs.
 *
 * One `Turns` serves every caller that should take turns with the others. The waiters are
 * bounded by the callers (a sequencer shard waits once per commit, with one commit in flight).
 */
export class Turns {
  private waiting: Array<() => void> = [];
  private next = 0;
  /** When the current slice's first turn was given; undefined between slices. */
  private sliceStart: number | undefined;

  constructor(private readonly sliceMs = SLICE_MS) {}

  /** Resolves in a task of its own, after every turn taken before it. */
  take(): Promise<void> {
    return new Promise<void>((resolve) => {
      this.waiting.push(resolve);
      // One immediate a turn: the immediates queued before a check phase each run as a task of
      // their own in it, with the microtasks of each drained before the next.
      setImmediate(this.give);
    });
  }

  /** Turns asked for and not yet given. */
  get pending(): number {
    return this.waiting.length - this.next;
  }

  /** Gives the oldest waiter its turn, or, past the slice's time, leaves it for the next turn of the loop. */
  private readonly give = (): void => {
    const now = performance.now();
    if (this.sliceStart === undefined) {
      this.sliceStart = now;
      // Queued now, it runs first in the next check phase, before the turns left for it.
      setImmediate(this.endSlice);
    } else if (now - this.sliceStart >= this.sliceMs) {
      // Whichever immediate runs, the oldest waiter is the next given: order holds.
      setImmediate(this.give);
      return;
    }
    const resolve = this.waiting[this.next++]!;
    if (this.next === this.waiting.length) {
      this.waiting = [];
      this.next = 0;
    } else if (this.next >= 1024 && this.next * 2 >= this.waiting.length) {
      // Under steady load the queue may never empty: drop the turns given, now and then.
      this.waiting = this.waiting.slice(this.next);
      this.next = 0;
    }
    resolve();
  };

  private readonly endSlice = (): void => {
    this.sliceStart = undefined;
  };
}

/**
 * A slice's time, in ms. A stall is a slice plus the turn that ends it plus a turn of the loop's
 * reads; the answers keep at least this share of a loop whose reads take longer.
 */
const SLICE_MS = 10;
