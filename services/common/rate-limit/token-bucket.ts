// Not an engine of the RateLimiter port (types.ts): a bucket an object owns and takes from
// synchronously (a device's stream, the notifier's per-device pushes), where nothing is shared
// and a promise per frame would cost more than the check.

/**
 * A token bucket: `rate` tokens per second up to `burst`. Time comes from the caller so the
 * bucket is deterministic in tests.
 */
export class TokenBucket {
  private tokens: number;
  private updatedAt: number;

  constructor(
    private readonly rate: number,
    private readonly burst: number,
    now: number,
  ) {
    this.tokens = burst;
    this.updatedAt = now;
  }

  /**
   * Takes one token. Returns 0 when taken, otherwise how many milliseconds until one is
   * available (nothing is taken then).
   */
  take(now: number): number {
    const elapsed = Math.max(0, now - this.updatedAt);
    this.tokens = Math.min(this.burst, this.tokens + (elapsed * this.rate) / 1000);
    this.updatedAt = now;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return 0;
    }
    if (this.rate <= 0) return Number.POSITIVE_INFINITY;
    return Math.ceil(((1 - this.tokens) * 1000) / this.rate);
  }
}
