/**
 * The distributed route store: Redis through ioredis.
 *
 * Key layout, P the prefix (default "sb:") and s the user's shard, 0..15, a hash of the user id:
 *
 *   P{s}:r:<userId>  ZSET  member "deviceId\nsessionId", score = expiresAtMs (the route's expiry)
 *   P{s}:g:<userId>  HASH  field  "deviceId\nsessionId" -> gatewayId
 *   P{s}:seen:<userId> STRING last seen in ms; Redis TTL 90 days so departed users vanish
 *   P{s}:due         ZSET  member userId, score = the user's earliest route expiry
 *
 * The two route keys carry a Redis TTL equal to their latest route's expiry, so a user whose
 * gateways all died without a sweep still disappears. Redis 7.0 has no per-field TTL, hence the
 * ZSET of expiries next to the HASH of gateways.
 *
 * "{s}" is a hash tag: a user's keys and the due index they are listed in share one cluster slot,
 * so each per-user Lua script is legal on a cluster. Sixteen index shards keep the sweep cheap while
 * spreading the load; the number is part of the layout and must not change under live data. The
 * prefix must not contain "{" or "}".
 *
 * Atomicity: every change of one user's routes is one Lua script that reads the live count, writes,
 * and decides the presence transition together, so concurrent gateways and sweepers report each
 * came-online and went-offline exactly once. Membership in the due index means "counted online";
 * leaving it is the went-offline transition. All times are the caller's nowMs (passed as ARGV),
 * never Redis TIME, except the keys' own TTLs, which are relative and only collect garbage.
 */
import type { ChainableCommander, ClientContext, Cluster, Redis, Result } from "ioredis";
import { UnavailableError } from "../common/errors.js";
import { shardOf } from "../common/shard.js";
import type { Route, RouteStore, UserPresence } from "./types.js";

/** The three per-user route scripts share one shape: the user's keys, then their arguments. */
type RouteScript<Context extends ClientContext> = (
  routes: string,
  gateways: string,
  due: string,
  seen: string,
  ...argv: string[]
) => Result<number, Context>;

declare module "ioredis" {
  interface RedisCommander<Context> {
    switchboardRouteRegister: RouteScript<Context>;
    switchboardRouteUnregister: RouteScript<Context>;
    switchboardRouteExpire: RouteScript<Context>;
    switchboardRouteLookup(routes: string, gateways: string, now: string): Result<string[], Context>;
  }
}

const SHARDS = 16;
const SEEN_TTL_MS = 90 * 24 * 60 * 60 * 1000;
const DEFAULT_EXPIRE_BATCH = 200;

// Shared by the writing scripts. KEYS: routes, gateways, due, seen. ARGV: now, userId, seenTtlMs.
// A user with no live route left loses their keys and index entry and gets a last-seen time;
// otherwise the index score follows their earliest route, expired or not, so the sweep comes back.
const SETTLE = `
local function settle()
  local now = ARGV[1]
  if redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf') > 0 then
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    redis.call('ZADD', KEYS[3], first[2], ARGV[2])
    return 0
  end
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('ZREM', KEYS[3], ARGV[2])
  redis.call('SET', KEYS[4], now, 'PX', ARGV[3])
  return 1
end
local function dropExpired()
  local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
  for _, member in ipairs(stale) do redis.call('HDEL', KEYS[2], member) end
  if #stale > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1]) end
end
`;

// ARGV: now, userId, seenTtlMs, expiresAtMs, then member, gatewayId pairs. Returns 1 if the user
// had no live route before.
const REGISTER = `${SETTLE}
local live = redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[1], '+inf')
dropExpired()
for i = 5, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
redis.call('ZADD', KEYS[3], first[2], ARGV[2])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local ttl = math.ceil(tonumber(last[2]) - tonumber(ARGV[1]))
if ttl < 1 then ttl = 1 end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
if live == 0 then return 1 end
return 0
`;

// ARGV: now, userId, seenTtlMs, then members. Returns 1 if the user went offline.
const UNREGISTER = `${SETTLE}
local removed = 0
for i = 4, #ARGV do
  removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
if removed == 0 then return 0 end
return settle()
`;

// ARGV: now, userId, seenTtlMs. Returns 1 if the user went offline. The index check makes a
// sweep that lost a race (to an unregister, another sweeper, or a refresh) a no-op; a user whose
// route keys vanished (key TTL, Redis restarted with the index but not them) goes offline here.
const EXPIRE = `${SETTLE}
local due = redis.call('ZSCORE', KEYS[3], ARGV[2])
if not due or tonumber(due) > tonumber(ARGV[1]) then return 0 end
dropExpired()
return settle()
`;

// KEYS: routes, gateways. ARGV: now. Returns member, gatewayId pairs of live routes.
const LOOKUP = `
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
local out = {}
for _, member in ipairs(members) do
  local gateway = redis.call('HGET', KEYS[2], member)
  if gateway then
    out[#out + 1] = member
    out[#out + 1] = gateway
  end
end
return out
`;

/** Options for the Redis route store. */
export interface RedisRouteStoreOptions {
  /** Users settled per index shard per round trip of a sweep. */
  expireBatch?: number;
}

type Client = Redis | Cluster;

interface Job {
  shard: number;
  queue(pipeline: ChainableCommander): void;
}

/** Routes and presence in Redis, shared by every gateway and presence instance. */
export class RedisRouteStore implements RouteStore {
  private readonly expireBatch: number;

  constructor(
    private readonly client: Client,
    private readonly prefix = "sb:",
    options: RedisRouteStoreOptions = {},
  ) {
    if (/[{}]/.test(prefix)) throw new Error(`route store prefix must not contain braces: ${prefix}`);
    this.expireBatch = options.expireBatch ?? DEFAULT_EXPIRE_BATCH;
    // Defining again on a shared client is harmless: same name, same script.
    client.defineCommand("switchboardRouteRegister", { numberOfKeys: 4, lua: REGISTER });
    client.defineCommand("switchboardRouteUnregister", { numberOfKeys: 4, lua: UNREGISTER });
    client.defineCommand("switchboardRouteExpire", { numberOfKeys: 4, lua: EXPIRE });
    client.defineCommand("switchboardRouteLookup", { numberOfKeys: 2, lua: LOOKUP, readOnly: true });
  }

  async register(routes: readonly Route[], ttlMs: number, nowMs: number): Promise<string[]> {
    const byUser = groupByUser(routes);
    const users = [...byUser.keys()];
    const now = String(nowMs);
    const expiresAt = String(nowMs + ttlMs);
    const results = await this.run(
      users.map((userId) => {
        const k = this.keys(userId);
        const argv = [now, userId, String(SEEN_TTL_MS), expiresAt];
        for (const route of byUser.get(userId) ?? []) argv.push(member(route), route.gatewayId);
        return {
          shard: k.shard,
          queue: (p) => p.switchboardRouteRegister(k.routes, k.gateways, k.due, k.seen, ...argv),
        };
      }),
    );
    return users.filter((_, i) => results[i] === 1);
  }

  async unregister(routes: readonly Route[], nowMs: number): Promise<string[]> {
    const byUser = groupByUser(routes);
    const users = [...byUser.keys()];
    const now = String(nowMs);
    const results = await this.run(
      users.map((userId) => {
        const k = this.keys(userId);
        const argv = [now, userId, String(SEEN_TTL_MS), ...(byUser.get(userId) ?? []).map(member)];
        return {
          shard: k.shard,
          queue: (p) => p.switchboardRouteUnregister(k.routes, k.gateways, k.due, k.seen, ...argv),
        };
      }),
    );
    return users.filter((_, i) => results[i] === 1);
  }

  async expire(nowMs: number): Promise<string[]> {
    const now = String(nowMs);
    const wentOffline: string[] = [];
    let shards = Array.from({ length: SHARDS }, (_, shard) => shard);
    // Each round settles up to a batch of due users per shard. A settled user leaves the index or
    // moves past now, so the rounds end.
    while (shards.length > 0) {
      const due = await this.run(
        shards.map((shard) => ({
          shard,
          queue: (p) => p.zrangebyscore(this.dueKey(shard), "-inf", now, "LIMIT", 0, this.expireBatch),
        })),
      );
      const users = due.flatMap((list) => strings(list));
      if (users.length === 0) break;
      const results = await this.run(
        users.map((userId) => {
          const k = this.keys(userId);
          return {
            shard: k.shard,
            queue: (p) =>
              p.switchboardRouteExpire(k.routes, k.gateways, k.due, k.seen, now, userId, String(SEEN_TTL_MS)),
          };
        }),
      );
      users.forEach((userId, i) => {
        if (results[i] === 1) wentOffline.push(userId);
      });
      shards = shards.filter((_, i) => strings(due[i]).length === this.expireBatch);
    }
    return wentOffline;
  }

  async lookup(userIds: readonly string[], nowMs: number): Promise<Route[]> {
    const now = String(nowMs);
    const results = await this.run(
      userIds.map((userId) => {
        const k = this.keys(userId);
        return { shard: k.shard, queue: (p) => p.switchboardRouteLookup(k.routes, k.gateways, now) };
      }),
    );
    const out: Route[] = [];
    userIds.forEach((userId, i) => {
      const pairs = strings(results[i]);
      for (let j = 0; j + 1 < pairs.length; j += 2) {
        const m = pairs[j]!;
        const cut = m.indexOf("\n");
        out.push({
          userId,
          deviceId: m.slice(0, cut),
          gatewayId: pairs[j + 1]!,
          sessionId: m.slice(cut + 1),
        });
      }
    });
    return out;
  }

  async presence(userIds: readonly string[], nowMs: number): Promise<UserPresence[]> {
    const now = String(nowMs);
    const results = await this.run(
      userIds.flatMap((userId) => {
        const k = this.keys(userId);
        return [
          { shard: k.shard, queue: (p: ChainableCommander) => p.zcount(k.routes, `(${now}`, "+inf") },
          { shard: k.shard, queue: (p: ChainableCommander) => p.get(k.seen) },
        ];
      }),
    );
    return userIds.map((userId, i) => {
      const online = Number(results[2 * i]) > 0;
      const seen = results[2 * i + 1];
      return { userId, online, lastSeenMs: online ? nowMs : typeof seen === "string" ? Number(seen) : 0 };
    });
  }

  private keys(userId: string): {
    shard: number;
    routes: string;
    gateways: string;
    due: string;
    seen: string;
  } {
    // The project's FNV-1a, SHARDS ways: stable across processes and versions, which the layout needs.
    const shard = shardOf(userId, SHARDS);
    const base = `${this.prefix}{${shard}}:`;
    return {
      shard,
      routes: `${base}r:${userId}`,
      gateways: `${base}g:${userId}`,
      due: `${base}due`,
      seen: `${base}seen:${userId}`,
    };
  }

  private dueKey(shard: number): string {
    return `${this.prefix}{${shard}}:due`;
  }

  /**
   * Runs the jobs in one round trip and returns their results in order, throwing the first error.
   * A cluster pipeline must stay within one slot, so there it is one pipeline per shard, in parallel.
   */
  private async run(jobs: readonly Job[]): Promise<unknown[]> {
    if (jobs.length === 0) return [];
    const groups = new Map<number, number[]>();
    if (this.client.isCluster) {
      jobs.forEach((job, i) => {
        const group = groups.get(job.shard);
        if (group === undefined) groups.set(job.shard, [i]);
        else group.push(i);
      });
    } else {
      groups.set(
        0,
        jobs.map((_, i) => i),
      );
    }
    const out = new Array<unknown>(jobs.length);
    await Promise.all(
      [...groups.values()].map(async (indexes) => {
        const pipeline = this.client.pipeline();
        for (const i of indexes) jobs[i]!.queue(pipeline);
        const replies = await pipeline.exec().catch((err: unknown) => {
          throw unavailable(err);
        });
        if (replies === null) throw new Error("redis pipeline was discarded");
        indexes.forEach((jobIndex, i) => {
          const reply = replies[i];
          if (reply === undefined) throw new Error("redis pipeline returned too few replies");
          const [err, value] = reply;
          if (err) throw err.name === "ReplyError" ? err : unavailable(err);
          out[jobIndex] = value;
        });
      }),
    );
    return out;
  }
}

/**
 * A failure to reach Redis (down, restarting: ioredis fails each queued command with
 * MaxRetriesPerRequestError or "Connection is closed"), as opposed to Redis refusing a command
 * (ReplyError). Callers (gateways registering routes, fanout looking them up) must see UNAVAILABLE
 * (the boundary's code for an UnavailableError) and retry, not a bare INTERNAL logged as a bug.
 */
function unavailable(err: unknown): UnavailableError {
  const message = err instanceof Error ? err.message : String(err);
  return new UnavailableError(`route store unavailable: ${message}`, { cause: err });
}

function member(route: Route): string {
  return `${route.deviceId}\n${route.sessionId}`;
}

function groupByUser(routes: readonly Route[]): Map<string, Route[]> {
  const byUser = new Map<string, Route[]>();
  for (const route of routes) {
    const list = byUser.get(route.userId);
    if (list === undefined) byUser.set(route.userId, [route]);
    else list.push(route);
  }
  return byUser;
}

function strings(value: unknown): string[] {
  return Array.isArray(value) ? value.filter((v): v is string => typeof v === "string") : [];
}
