import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Redis, type RedisOptions } from "ioredis";
import {
  cleanUpRedis,
  keysWith,
  pingRedis,
  requireRedis,
  startRedisServer,
  testRedisUrl,
} from "../../../test/helpers/backends.js";
import { UnavailableError } from "../errors.js";
import { runRateLimiterConformance } from "./conformance.js";
import { type RateLimiterLogger, RedisRateLimiter } from "./redis.js";
import type { RateLimit } from "./types.js";

const key = (): string => `k-${randomUUID()}`;

// The Redis engine against the redis-server test/run.mjs starts (SWITCHBOARD_TEST_REDIS_URL).

const url = testRedisUrl();
// Every key this file writes starts with this, so a shared Redis can be cleaned after the run.
const runPrefix = `sb-test-${randomUUID()}:`;
let prefixes = 0;
const nextPrefix = (): string => `${runPrefix}${prefixes++}:`;

const clients: Redis[] = [];
function connect(to: string, options: RedisOptions = {}): Redis {
  const client = new Redis(to, { maxRetriesPerRequest: 1, ...options });
  // Outages are provoked on purpose; the limiter reports them itself.
  client.on("error", () => {});
  clients.push(client);
  return client;
}

/** Fails if the promise has not settled within a bound far above anything expected. */
async function within<T>(ms: number, promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** A logger that remembers what it was told. */
function recordingLogger(): RateLimiterLogger & { warns: string[]; infos: string[] } {
  const warns: string[] = [];
  const infos: string[] = [];
  return {
    warns,
    infos,
    warn: (...args: unknown[]) => {
      warns.push(String(args[1] ?? args[0]));
    },
    info: (...args: unknown[]) => {
      infos.push(String(args[1] ?? args[0]));
    },
  };
}

if (!(await pingRedis(url))) {
  // Skips here, or fails under CI=true: a missing backend must be visible.
  test("RedisRateLimiter (needs Redis)", async (t) => {
    await requireRedis(t, url);
  });
} else {
  const shared = connect(url);

  after(() => cleanUpRedis(shared, runPrefix, clients));

  runRateLimiterConformance("RedisRateLimiter", async () => {
    // Generous: this suite is about the buckets, and a loaded machine must not push it into fallback.
    const limiter = new RedisRateLimiter(shared, { keyPrefix: nextPrefix(), commandTimeoutMs: 5_000 });
    return {
      limiter,
      advance: (ms) => sleep(ms + 5),
      exact: false,
      close: async () => {
        assert.equal(limiter.metrics.fallbacks, 0, "the conformance run must not have fallen back");
        await limiter.close();
      },
    };
  });

  describe("RedisRateLimiter specifics", () => {
    test("one key per bucket, expiring when the bucket would be full again", async (t) => {
      if ((await requireRedis(t, url)) === undefined) return;
      const prefix = nextPrefix();
      const limiter = new RedisRateLimiter(shared, { keyPrefix: prefix, commandTimeoutMs: 5_000 });
      assert.equal(await limiter.take({ name: "send", rate: 1, burst: 5 }, "dev-1", 3), 0);
      assert.deepEqual(await keysWith(shared, prefix), [`${prefix}rl:send:{dev-1}`]);
      const ttl = await shared.pttl(`${prefix}rl:send:{dev-1}`);
      assert.ok(ttl > 0 && ttl <= 3_000, `PTTL ${ttl}`);

      // Ten tokens per second: one taken is back, and the key gone, 100 ms later.
      assert.equal(await limiter.take({ name: "fast", rate: 10, burst: 1 }, "dev-1"), 0);
      assert.ok((await shared.pttl(`${prefix}rl:fast:{dev-1}`)) <= 100);
      await sleep(150);
      assert.equal(await shared.exists(`${prefix}rl:fast:{dev-1}`), 0);
      await limiter.close();
    });

    test("two gateways with skewed clocks share one bucket, atomically", async (t) => {
      if ((await requireRedis(t, url)) === undefined) return;
      const prefix = nextPrefix();
      // Their own clocks disagree by an hour; the buckets use Redis time, so it does not matter.
      const one = new RedisRateLimiter(connect(url), {
        keyPrefix: prefix,
        commandTimeoutMs: 5_000,
        now: () => performance.now(),
      });
      const two = new RedisRateLimiter(connect(url), {
        keyPrefix: prefix,
        commandTimeoutMs: 5_000,
        now: () => performance.now() + 3_600_000,
      });
      const limit: RateLimit = { name: "send", rate: 0.01, burst: 10 };
      const device = key();
      const waits = await Promise.all(
        Array.from({ length: 30 }, (_, i) => (i % 2 === 0 ? one : two).take(limit, device)),
      );
      assert.equal(waits.filter((w) => w === 0).length, 10, `waits: ${waits.join(", ")}`);
      // The device reconnecting to the other gateway gets no fresh burst.
      for (const gateway of [one, two]) {
        const wait = await gateway.take(limit, device);
        assert.ok(wait > 50_000 && wait <= 100_000, `wait ${wait}`);
      }
      assert.equal(one.metrics.fallbacks + two.metrics.fallbacks, 0);
      await Promise.all([one.close(), two.close()]);
    });

    test("a limiter given a URL owns its client and closes it", async (t) => {
      if ((await requireRedis(t, url)) === undefined) return;
      const limiter = new RedisRateLimiter(url, { keyPrefix: nextPrefix(), commandTimeoutMs: 5_000 });
      const limit: RateLimit = { name: "send", rate: 0.1, burst: 1 };
      const k = key();
      assert.equal(await limiter.take(limit, k), 0);
      assert.ok((await limiter.take(limit, k)) > 0);
      assert.equal(limiter.metrics.fallbacks, 0);
      await limiter.close();
      await assert.rejects(
        limiter.take(limit, k),
        (err) => err instanceof UnavailableError && /closed/.test(err.message),
      );
    });

    test("falls back locally while Redis hangs or is down, logs once per outage, then shares again", async (t) => {
      if ((await requireRedis(t, url)) === undefined) return;
      let server = await startRedisServer();
      const client = connect(server.url, { retryStrategy: () => 50 });
      t.after(async () => {
        client.disconnect();
        // SIGKILL ends a stopped process too.
        await server.stop();
      });
      const log = recordingLogger();
      const limiter = new RedisRateLimiter(client, {
        keyPrefix: "sb:",
        commandTimeoutMs: 150,
        retryAfterMs: 50,
        logger: log,
      });
      const limit: RateLimit = { name: "send", rate: 0.01, burst: 2 };
      const device = key();
      const bucket = `sb:rl:send:{${device}}`;
      const take = (k = device): Promise<number> => within(5_000, limiter.take(limit, k), "take");

      /** Takes on a throwaway key until one is answered by Redis rather than the fallback. */
      async function untilShared(): Promise<void> {
        for (let i = 0; ; i++) {
          assert.ok(i < 200, `still falling back after ${i} tries; client is ${client.status}`);
          const before = limiter.metrics.fallbacks;
          await take(key());
          if (limiter.metrics.fallbacks === before) return;
          await sleep(25);
        }
      }

      assert.equal(await take(), 0);
      assert.equal(await take(), 0);
      assert.equal(limiter.metrics.fallbacks, 0);
      assert.equal(await client.exists(bucket), 1);

      // Redis hangs: the connection stays up but nothing answers.
      process.kill(server.pid, "SIGSTOP");
      assert.equal(await take(), 0, "the fallback has its own full bucket");
      assert.equal(limiter.metrics.fallbacks, 1);
      assert.equal(await take(), 0);
      assert.ok((await take()) > 0, "the fallback limits on its own");
      for (let i = 0; i < 20; i++) await take(key());
      assert.equal(limiter.metrics.fallbacks, 23);
      assert.equal(log.warns.length, 1, `warned: ${log.warns.join(" | ")}`);

      process.kill(server.pid, "SIGCONT");
      await untilShared();
      assert.equal(log.infos.length, 1);
      assert.ok((await take()) > 0, "Redis still holds the bucket drained before the hang");

      // Redis dies.
      await server.stop();
      const fallbacks = limiter.metrics.fallbacks;
      for (let i = 0; i < 10; i++) await take(key());
      assert.equal(limiter.metrics.fallbacks, fallbacks + 10);
      assert.equal(log.warns.length, 2, "a second outage is a second warning");

      // It comes back empty: the bucket is full again, shared once more.
      server = await startRedisServer({ port: server.port });
      await untilShared();
      assert.equal(log.infos.length, 2);
      const shared = limiter.metrics.fallbacks;
      assert.equal(await take(), 0);
      assert.equal(await take(), 0);
      assert.ok((await take()) > 0);
      assert.equal(limiter.metrics.fallbacks, shared);
      assert.equal(await client.exists(bucket), 1);
      await limiter.close();
    });
  });
}
