/**
 * Rate limits shared by every gateway: Redis through ioredis, one Lua script per take. The
 * distributed engine of the RateLimiter port (types.ts); services/server/engines.ts imports this
 * module, and with it ioredis, only when Redis is configured.
 *
 * Key layout, P the prefix (default "sb:"):
 *
 *   P rl:<limit name>:{<key>}  STRING  the bucket's GCRA state: the Redis time, in ms with a
 *                                      fraction, at which the bucket is full again. PEXPIREs at
 *                                      that moment, so an idle key vanishes exactly when it would
 *                                      read as a full bucket anyway.
 *
 * (Written without the space: "sb:rl:send:{device-1}".) Each script touches one key, so it is legal
 * on a cluster whatever the slot; the "{key}" hash tag puts every limit of one key in the same slot,
 * so a later script that takes from several limits of a device at once stays legal too. Limit names
 * cannot contain ":" (checkTake), so the layout is unambiguous. The prefix must not contain braces.
 *
 * Time comes from Redis TIME inside the script, never from the caller, so gateways whose clocks
 * disagree still share one bucket consistently. Redis 7 replicates scripts by their effects, so a
 * replica receives the computed SET, not the TIME call. A Redis clock step backwards (NTP, failover
 * to a replica with another clock) only makes buckets look emptier for the size of the step.
 *
 * Failure: Redis is an accelerator of fairness, not a gate on sending. A take that fails, or gets no
 * answer within `commandTimeoutMs`, is answered by a per-process LocalRateLimiter instead and
 * counted in `metrics.fallbacks`; after a failure every take goes straight to that fallback for
 * `retryAfterMs`, then a single take probes Redis again. A Redis that restarts empty (no
 * persistence is needed for these keys) simply resets every bucket to full: one fresh burst per key,
 * which is acceptable for a rate limit and cheaper than persisting it.
 */
import { type Cluster, Redis, type Result } from "ioredis";
import { UnavailableError } from "../errors.js";
import type { Logger } from "../log.js";
import { LocalRateLimiter } from "./memory.js";
import { checkTake, GCRA_EPSILON_MS, type RateLimit, type RateLimiter } from "./types.js";

declare module "ioredis" {
  interface RedisCommander<Context> {
    switchboardRateTake(
      bucket: string,
      rate: string,
      burst: string,
      cost: string,
      epsilonMs: string,
    ): Result<number, Context>;
  }
}

// KEYS[1]: the bucket. ARGV: rate (tokens per second), burst, cost, epsilon (ms). Returns 0 when
// taken, else the whole milliseconds until it would be. Numbers go to SET and PEXPIRE as Lua
// numbers, which Redis formats with full precision (tostring or .. would keep only 14 digits).
const TAKE = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = 1000 / tonumber(ARGV[1])
local fullAt = tonumber(redis.call('GET', KEYS[1]) or 0)
if fullAt < now then fullAt = now end
local after = fullAt + tonumber(ARGV[3]) * interval
local wait = after - tonumber(ARGV[2]) * interval - now
if wait > tonumber(ARGV[4]) then return math.ceil(wait) end
redis.call('SET', KEYS[1], after, 'PX', math.max(1, math.ceil(after - now)))
return 0
`;

/** What the limiter logs: once when Redis becomes unusable, once when it is back. */
export type RateLimiterLogger = Pick<Logger, "warn" | "info">;

/** Options for the Redis engine. */
export interface RedisRateLimiterOptions {
  /** Prepended to every key; must not contain "{" or "}". Default "sb:". */
  keyPrefix?: string;
  /** How long a take waits for Redis before answering from the local fallback, in ms. Default 150. */
  commandTimeoutMs?: number;
  /** After a failure, how long takes skip Redis before one probes it again, in ms. Default 1000. */
  retryAfterMs?: number;
  /** Buckets the local fallback keeps at most (see LocalRateLimiterOptions.maxKeys). */
  fallbackMaxKeys?: number;
  /** Where outages are reported. Default: nowhere. */
  logger?: RateLimiterLogger;
  /**
   * Clock of the local fallback and of the retry delay, in ms; never of the shared buckets, which
   * use Redis time. Default `performance.now`.
   */
  now?: () => number;
}

/** Counters an operator reads. */
export interface RedisRateLimiterMetrics {
  /** Takes answered by the local fallback because Redis failed, was too slow, or had just failed. */
  fallbacks: number;
}

type Client = Redis | Cluster;

/** Client states in which a command could only wait in ioredis's offline queue. */
const UNUSABLE = new Set(["reconnecting", "close", "end", "disconnecting"]);

const DEFAULT_TIMEOUT_MS = 150;
const DEFAULT_RETRY_AFTER_MS = 1000;

/**
 * Redis did not answer in time. Its own class so the outage warning names it (the log's err.type);
 * an UnavailableError like every other reason Redis cannot be used.
 */
class RedisTimeoutError extends UnavailableError {
  constructor(ms: number) {
    super(`redis did not answer a rate-limit take within ${ms} ms`);
    this.name = "RedisTimeoutError";
  }
}

const silent: RateLimiterLogger = { warn: () => {}, info: () => {} };

/** Rate limits in Redis, shared by every gateway, falling back to local limits during an outage. */
export class RedisRateLimiter implements RateLimiter {
  readonly metrics: RedisRateLimiterMetrics = { fallbacks: 0 };
  private readonly client: Client;
  private readonly ownsClient: boolean;
  private readonly prefix: string;
  private readonly timeoutMs: number;
  private readonly retryAfterMs: number;
  private readonly log: RateLimiterLogger;
  private readonly now: () => number;
  private readonly fallback: LocalRateLimiter;
  /** When the current outage began (by `now`), or undefined while Redis answers. */
  private downSince: number | undefined;
  private fallbacksAtDown = 0;
  private retryAt = 0;
  private probing = false;
  private closed = false;

  /**
   * `redis` is a client the caller owns (and closes), or a URL for a client this limiter owns.
   */
  constructor(redis: Client | string, options: RedisRateLimiterOptions = {}) {
    this.prefix = options.keyPrefix ?? "sb:";
    if (/[{}]/.test(this.prefix)) {
      throw new Error(`rate limiter prefix must not contain braces: ${this.prefix}`);
    }
    this.timeoutMs = options.commandTimeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.retryAfterMs = options.retryAfterMs ?? DEFAULT_RETRY_AFTER_MS;
    this.log = options.logger ?? silent;
    this.now = options.now ?? (() => performance.now());
    this.fallback = new LocalRateLimiter({
      now: this.now,
      ...(options.fallbackMaxKeys === undefined ? {} : { maxKeys: options.fallbackMaxKeys }),
    });
    if (typeof redis === "string") {
      // One retry per command is enough: the take has its own deadline and a fallback. The takes
      // of one turn of the event loop (a gateway reads many frames at once) go as one write: a
      // command per send was 7 % of a mesh gateway's main thread.
      this.client = new Redis(redis, { maxRetriesPerRequest: 1, enableAutoPipelining: true });
      // Outages are reported by take, once each; the client's own error events would repeat per
      // reconnect attempt.
      this.client.on("error", () => {});
      this.ownsClient = true;
    } else {
      this.client = redis;
      this.ownsClient = false;
    }
    // Defining again on a shared client is harmless: same name, same script.
    this.client.defineCommand("switchboardRateTake", { numberOfKeys: 1, lua: TAKE });
  }

  async take(limit: RateLimit, key: string, cost = 1): Promise<number> {
    checkTake(limit, cost);
    if (this.closed) throw new UnavailableError("rate limiter is closed");
    if (cost > limit.burst) return Number.POSITIVE_INFINITY;
    const startedAt = this.now();
    const status = this.client.status;
    if (UNUSABLE.has(status)) {
      this.markDown(new UnavailableError(`redis client is ${status}`), startedAt);
      return this.fallBack(limit, key, cost);
    }
    const probe = this.downSince !== undefined;
    if (probe) {
      if (this.probing || startedAt < this.retryAt) return this.fallBack(limit, key, cost);
      this.probing = true;
    }
    try {
      const wait = await this.viaRedis(limit, key, cost);
      // Only a probe ends an outage: a take sent before it began may still come back late and
      // would otherwise make the log flap while Redis is merely slow.
      if (probe) this.markUp();
      return wait;
    } catch (err) {
      this.markDown(err, this.now());
      return this.fallBack(limit, key, cost);
    } finally {
      if (probe) this.probing = false;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.fallback.close();
    if (this.ownsClient) await this.client.quit().catch(() => this.client.disconnect());
  }

  private async viaRedis(limit: RateLimit, key: string, cost: number): Promise<number> {
    const call = this.client.switchboardRateTake(
      `${this.prefix}rl:${limit.name}:{${key}}`,
      String(limit.rate),
      String(limit.burst),
      String(cost),
      String(GCRA_EPSILON_MS),
    );
    // After a timeout nobody awaits the call; its late failure must not become an unhandled
    // rejection. A late success has taken a token the caller never used: a slight over-count
    // only while Redis is slow.
    call.catch(() => {});
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new RedisTimeoutError(this.timeoutMs)), this.timeoutMs);
    });
    try {
      const wait = await Promise.race([call, deadline]);
      if (typeof wait !== "number") throw new Error(`rate-limit script returned ${typeof wait}`);
      return wait;
    } finally {
      clearTimeout(timer);
    }
  }

  private fallBack(limit: RateLimit, key: string, cost: number): number {
    this.metrics.fallbacks++;
    return this.fallback.takeSync(limit, key, cost);
  }

  private markDown(err: unknown, at: number): void {
    this.retryAt = at + this.retryAfterMs;
    if (this.downSince !== undefined) return;
    this.downSince = at;
    this.fallbacksAtDown = this.metrics.fallbacks;
    this.log.warn(
      { err },
      "rate limits: Redis unavailable, each gateway limits on its own until it answers again",
    );
  }

  private markUp(): void {
    if (this.downSince === undefined) return;
    this.log.info(
      {
        outageMs: Math.round(this.now() - this.downSince),
        fallbacks: this.metrics.fallbacks - this.fallbacksAtDown,
      },
      "rate limits: Redis answers again, limits are shared",
    );
    this.downSince = undefined;
  }
}
