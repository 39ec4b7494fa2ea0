/**
 * Rate limits as a port, so one limit can be kept per gateway (embedded) or shared by every gateway
 * (Redis, rate-limiter-redis.ts) without the caller knowing which.
 *
 * Both engines run the same algorithm, GCRA: a bucket is one number, the time at which it would be
 * full again. A take of `cost` moves that time forward by cost / rate and is allowed while it stays
 * within burst / rate of now. This is exactly a token bucket holding
 * `burst - (fullAt - now) * rate` tokens, but with a single value to store and nothing to update
 * on a refusal, which keeps the Redis script to one GET and one SET and lets both engines agree
 * to the millisecond.
 */

/** A named limit: `rate` tokens per second, bursts up to `burst`. */
export interface RateLimit {
  /** Names the limit in keys and logs; letters, digits, "_", "-" or "." (it becomes part of a Redis key). */
  name: string;
  /** Tokens added per second; positive. */
  rate: number;
  /** Tokens a full bucket holds; positive. */
  burst: number;
}

/** Shared counters that throttle a key (a device, a user, an address) under a named limit. */
export interface RateLimiter {
  /**
   * Takes `cost` tokens (default 1) from key's bucket under `limit`; resolves 0 when taken, else the
   * milliseconds until enough are available (nothing taken). A cost above the burst can never be
   * taken and resolves Infinity. Rejects with a RangeError on a malformed limit or cost.
   */
  take(limit: RateLimit, key: string, cost?: number): Promise<number>;
  /** Releases what the limiter holds; it must not be used afterwards. */
  close(): Promise<void>;
}

/**
 * A refusal closer than this, in milliseconds, counts as allowed: the bucket times are sums of
 * floating-point steps around 1.7e12 ms (Redis) whose rounding is about 2.4e-4 ms, and a take must
 * not be refused for rounding alone. One microsecond is also the resolution of Redis TIME.
 */
export const GCRA_EPSILON_MS = 0.001;

const LIMIT_NAME = /^[A-Za-z0-9_.-]+$/;

/**
 * Throws a RangeError unless the limit and cost can be honoured. The name rule keeps Redis keys
 * unambiguous, since a name is followed by the caller's key.
 */
export function checkTake(limit: RateLimit, cost: number): void {
  if (!LIMIT_NAME.test(limit.name)) {
    throw new RangeError(`rate limit name must match ${LIMIT_NAME}: ${JSON.stringify(limit.name)}`);
  }
  if (!(Number.isFinite(limit.rate) && limit.rate > 0)) {
    throw new RangeError(`rate limit ${limit.name}: rate must be a positive number, got ${limit.rate}`);
  }
  if (!(Number.isFinite(limit.burst) && limit.burst > 0)) {
    throw new RangeError(`rate limit ${limit.name}: burst must be a positive number, got ${limit.burst}`);
  }
  if (!(Number.isFinite(cost) && cost > 0)) {
    throw new RangeError(`rate limit ${limit.name}: cost must be a positive number, got ${cost}`);
  }
}

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
