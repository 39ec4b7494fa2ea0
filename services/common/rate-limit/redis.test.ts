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
} from "../../test/helpers/backends.js";
import { LocalRateLimiter, type RateLimit, type RateLimiter } from "./rate-limiter.js";
import { type RateLimiterLogger, RedisRateLimiter } from "./rate-limiter-redis.js";

/** An engine under test. */
interface OpenedLimiter {
  limiter: RateLimiter;
  /** Lets at least `ms` of the limiter's time pass. */
  advance(ms: number): Promise<void>;
  /**
   * True when `advance` moves the limiter's clock by exactly `ms` and nothing else does (an
   * injected clock), so exact waits can be asserted. A real clock only gets bounds that a stall of
   * seconds on a loaded machine would be needed to break.
   */
  exact: boolean;
  close(): Promise<void>;
}

const key = (): string => `k-${randomUUID()}`;

/** The behaviour every RateLimiter engine shares. Each test uses fresh keys. */
function runRateLimiterConformance(name: string, open: () => Promise<OpenedLimiter>): void {
  describe(`RateLimiter conformance: ${name}`, () => {
    async function withLimiter(fn: (opened: OpenedLimiter) => Promise<void>): Promise<void> {
      const opened = await open();
      try {
        await fn(opened);
      } finally {
        await opened.close();
      }
    }

    test("takes a burst, then refuses with the wait for one token and takes nothing", () =>
      withLimiter(async ({ limiter, exact }) => {
        const limit: RateLimit = { name: "send", rate: 0.1, burst: 3 };
        const k = key();
        for (let i = 0; i < 3; i++) assert.equal(await limiter.take(limit, k), 0, `take ${i + 1}`);
        const first = await limiter.take(limit, k);
        // One token at 0.1 per second is 10 s away.
        if (exact) assert.equal(first, 10_000);
        else assert.ok(first > 5_000 && first <= 10_000, `wait ${first}`);
        const second = await limiter.take(limit, k);
        assert.ok(second > 0 && second <= first, `a refusal must not take tokens: ${first} then ${second}`);
      }));

    test("refills at the rate, and only up to the burst", () =>
      withLimiter(async ({ limiter, advance, exact }) => {
        const limit: RateLimit = { name: "send", rate: 4, burst: 2 };
        const k = key();
        assert.equal(await limiter.take(limit, k, 2), 0);
        const wait = await limiter.take(limit, k, 2);
        // Two tokens at 4 per second are 500 ms away.
        if (exact) assert.equal(wait, 500);
        else assert.ok(wait > 0 && wait <= 500, `wait ${wait}`);
        if (exact) {
          await advance(wait - 1);
          assert.equal(await limiter.take(limit, k, 2), 1);
          await advance(1);
        } else {
          await advance(wait);
        }
        assert.equal(await limiter.take(limit, k, 2), 0);

        // Idle for three bursts' worth of time, it still holds one burst.
        await advance(1_500);
        assert.equal(await limiter.take(limit, k, 2), 0);
        const capped = await limiter.take(limit, k);
        if (exact) assert.equal(capped, 250);
        else assert.ok(capped > 0 && capped <= 250, `wait ${capped}`);
      }));

    test("a cost above one takes that many tokens at once, or none", () =>
      withLimiter(async ({ limiter, exact }) => {
        const limit: RateLimit = { name: "upload", rate: 0.1, burst: 5 };
        const k = key();
        assert.equal(await limiter.take(limit, k, 3), 0);
        const wait = await limiter.take(limit, k, 3);
        if (exact) assert.equal(wait, 10_000);
        else assert.ok(wait > 5_000 && wait <= 10_000, `wait ${wait}`);
        assert.equal(await limiter.take(limit, k, 2), 0, "the refused take of 3 left 2 tokens");
        const empty = await limiter.take(limit, k);
        assert.ok(empty > 5_000 && empty <= 10_000, `wait ${empty}`);

        // More than a burst can never be taken, and trying takes nothing.
        const other = key();
        assert.equal(await limiter.take(limit, other, 6), Number.POSITIVE_INFINITY);
        assert.equal(await limiter.take(limit, other, 5), 0);
      }));

    test("keys and limits are independent", () =>
      withLimiter(async ({ limiter }) => {
        const a: RateLimit = { name: "a", rate: 0.1, burst: 1 };
        const b: RateLimit = { name: "b", rate: 0.1, burst: 1 };
        const [k1, k2] = [key(), key()];
        assert.equal(await limiter.take(a, k1), 0);
        assert.ok((await limiter.take(a, k1)) > 0);
        assert.equal(await limiter.take(a, k2), 0);
        assert.equal(await limiter.take(b, k1), 0);
        assert.ok((await limiter.take(b, k1)) > 0);
        assert.ok((await limiter.take(a, k2)) > 0);
      }));

    test("malformed limits and costs are refused with a RangeError", () =>
      withLimiter(async ({ limiter }) => {
        const ok: RateLimit = { name: "send", rate: 1, burst: 1 };
        const bad: [RateLimit, number][] = [
          [{ ...ok, rate: 0 }, 1],
          [{ ...ok, rate: Number.NaN }, 1],
          [{ ...ok, burst: 0 }, 1],
          [{ ...ok, burst: Number.POSITIVE_INFINITY }, 1],
          [ok, 0],
          [ok, -1],
          [{ ...ok, name: "" }, 1],
          [{ ...ok, name: "a:b" }, 1],
          [{ ...ok, name: "a{b}" }, 1],
        ];
        for (const [limit, cost] of bad) {
          await assert.rejects(limiter.take(limit, key(), cost), RangeError, JSON.stringify({ limit, cost }));
        }
      }));
  });
}

/** A clock the test moves by hand. */
function manualClock(): { now: () => number; advance(ms: number): Promise<void> } {
  let t = 1_000;
  return {
    now: () => t,
    advance: async (ms) => {
      t += ms;
    },
  };
}

runRateLimiterConformance("LocalRateLimiter", async () => {
  const clock = manualClock();
  const limiter = new LocalRateLimiter({ now: clock.now });
  return { limiter, advance: clock.advance, exact: true, close: () => limiter.close() };
});

describe("LocalRateLimiter specifics", () => {
  test("forgets the least recently used keys beyond maxKeys", async () => {
    const clock = manualClock();
    const limiter = new LocalRateLimiter({ now: clock.now, maxKeys: 2 });
    const limit: RateLimit = { name: "send", rate: 0.001, burst: 1 };
    assert.equal(limiter.takeSync(limit, "k1"), 0);
    assert.equal(limiter.takeSync(limit, "k2"), 0);
    assert.ok(limiter.takeSync(limit, "k1") > 0, "k1 is drained, and now the most recently used");
    assert.equal(limiter.takeSync(limit, "k3"), 0);
    assert.equal(limiter.size, 2);
    assert.ok(limiter.takeSync(limit, "k1") > 0, "k1 is remembered");
    assert.equal(limiter.takeSync(limit, "k2"), 0, "k2 was forgotten: a fresh burst");
    assert.equal(limiter.size, 2);
  });

  test("a bucket idle until full behaves as a new one", async () => {
    const clock = manualClock();
    const limiter = new LocalRateLimiter({ now: clock.now });
    const limit: RateLimit = { name: "send", rate: 10, burst: 2 };
    assert.equal(limiter.takeSync(limit, "k", 2), 0);
    await clock.advance(200);
    assert.equal(limiter.takeSync(limit, "k", 2), 0);
    assert.equal(limiter.takeSync(limit, "k"), 100);
  });
});

// ---------------------------------------------------------------------------------------------
// Redis

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
      await assert.rejects(limiter.take(limit, k), /closed/);
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
