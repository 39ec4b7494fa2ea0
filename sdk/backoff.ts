/**
 * Exponential backoff with full jitter: the n-th delay is uniform in [0, min(cap, base * 2^n)).
 * Full jitter spreads the reconnects of many devices after a server restart instead of letting
 * them arrive in synchronized waves.
 */
export class Backoff {
  private attempt = 0;

  /**
   * @param baseMs the cap of the first delay, in milliseconds
   * @param capMs the largest delay, in milliseconds
   * @param random a source of uniform numbers in [0, 1); injectable for tests
   */
  constructor(
    private readonly baseMs: number,
    private readonly capMs: number,
    private readonly random: () => number = Math.random,
  ) {
    if (!(baseMs > 0) || !(capMs >= baseMs)) throw new RangeError("backoff needs 0 < baseMs <= capMs");
  }

  /** Attempts since the last reset. */
  get attempts(): number {
    return this.attempt;
  }

  /** The upper bound of the next delay, in milliseconds. */
  ceiling(): number {
    // 2^attempt overflows to Infinity long after the cap is reached; min() keeps it finite.
    return Math.min(this.capMs, this.baseMs * 2 ** Math.min(this.attempt, 60));
  }

  /** The next delay, in milliseconds; each call moves one attempt further. */
  next(): number {
    const delay = Math.floor(this.random() * this.ceiling());
    this.attempt += 1;
    return delay;
  }

  /** Starts again from the base, after a connection proved stable. */
  reset(): void {
    this.attempt = 0;
  }
}
