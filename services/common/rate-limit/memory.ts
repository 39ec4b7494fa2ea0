import { checkTake, GCRA_EPSILON_MS, type RateLimit, type RateLimiter } from "./types.js";

// The embedded engine of the RateLimiter port (types.ts): GCRA buckets in this process's memory.

/** Options for the embedded engine. */
export interface LocalRateLimiterOptions {
  /**
   * Buckets kept at most; beyond it the least recently used are forgotten, which at worst hands
   * that key a fresh burst. Default 100,000 (a few MB).
   */
  maxKeys?: number;
  /** The clock, in milliseconds. Default `performance.now`: monotonic, so a wall-clock step grants nothing. */
  now?: () => number;
}

const DEFAULT_MAX_KEYS = 100_000;

/** Rate limits in this process's memory: exact for one gateway, per gateway when there are several. */
export class LocalRateLimiter implements RateLimiter {
  private readonly maxKeys: number;
  private readonly now: () => number;
  /** `name:key` -> the time, in ms of `now`, at which the bucket is full again. Map order is recency. */
  private readonly fullAt = new Map<string, number>();

  constructor(options: LocalRateLimiterOptions = {}) {
    this.maxKeys = options.maxKeys ?? DEFAULT_MAX_KEYS;
    if (!(Number.isInteger(this.maxKeys) && this.maxKeys > 0)) {
      throw new RangeError(`maxKeys must be a positive integer, got ${this.maxKeys}`);
    }
    this.now = options.now ?? (() => performance.now());
  }

  async take(limit: RateLimit, key: string, cost = 1): Promise<number> {
    return this.takeSync(limit, key, cost);
  }

  /**
   * `take` without the promise, for callers on a synchronous path (the single-process gateway, the
   * Redis engine's fallback). Throws where `take` rejects.
   */
  takeSync(limit: RateLimit, key: string, cost = 1): number {
    checkTake(limit, cost);
    if (cost > limit.burst) return Number.POSITIVE_INFINITY;
    const now = this.now();
    const id = `${limit.name}:${key}`;
    const interval = 1000 / limit.rate;
    const previous = this.fullAt.get(id);
    const fullAt = Math.max(previous ?? now, now);
    const after = fullAt + cost * interval;
    const wait = after - limit.burst * interval - now;
    // Delete then set moves the key to the end of the map's order, which the trim relies on.
    this.fullAt.delete(id);
    if (wait > GCRA_EPSILON_MS) {
      // A refusal takes nothing but still marks the key as recently used.
      if (previous !== undefined) this.fullAt.set(id, previous);
      return Math.ceil(wait);
    }
    this.fullAt.set(id, after);
    this.trim();
    return 0;
  }

  /** Buckets currently remembered (full ones may linger until trimmed; they behave as absent). */
  get size(): number {
    return this.fullAt.size;
  }

  async close(): Promise<void> {
    this.fullAt.clear();
  }

  private trim(): void {
    for (const id of this.fullAt.keys()) {
      if (this.fullAt.size <= this.maxKeys) return;
      this.fullAt.delete(id);
    }
  }
}
