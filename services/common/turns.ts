/**
 * Turns of the event loop, handed out one at a time in the order they were asked for.
 *
 * Why: work that becomes ready together (every shard's commit answered by the same write-thread
 * message) otherwise runs as one task, with everything its promises set off in that task's
 * microtasks. A caller that awaits `take()` runs its part in a task of its own, with timers and
 * I/O polled between the parts, so the loop's longest stall is one part, not their sum.
 *
 * One `Turns` serves every caller that should take turns with the others: callers with a queue
 * each would all run in the same check phase of the loop. The waiters are bounded by the callers
 * (a sequencer shard waits once per commit, with one commit in flight).
 */
export class Turns {
  private waiting: Array<() => void> = [];
  private next = 0;
  private scheduled = false;

  /** Resolves in a turn of the loop of its own, after every turn taken before it. */
  take(): Promise<void> {
    return new Promise<void>((resolve) => {
      this.waiting.push(resolve);
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(this.run);
      }
    });
  }

  /** Turns asked for and not yet given. */
  get pending(): number {
    return this.waiting.length - this.next;
  }

  private readonly run = (): void => {
    const resolve = this.waiting[this.next++]!;
    if (this.next === this.waiting.length) {
      this.waiting = [];
      this.next = 0;
      this.scheduled = false;
    } else {
      // Set during this check phase, it runs in the next turn: after the timers and a poll for I/O.
      setImmediate(this.run);
      // Under steady load the queue may never empty: drop the turns given, now and then.
      if (this.next >= 1024 && this.next * 2 >= this.waiting.length) {
        this.waiting = this.waiting.slice(this.next);
        this.next = 0;
      }
    }
    resolve();
  };
}
