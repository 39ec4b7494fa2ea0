/**
 * Rate limits as a port, so one limit can be kept per gateway (embedded, memory.ts) or shared by
 * every gateway (Redis, redis.ts) without the caller knowing which. The engine is chosen in
 * services/server/engines.ts; both pass conformance.ts.
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
 * Throws a RangeError unless the limit and cost can be honoured; every engine checks the same way.
 * The name rule keeps Redis keys unambiguous, since a name is followed by the caller's key.
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
