import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, describe, test } from "node:test";
import { Redis, type RedisOptions } from "ioredis";
import {
  cleanUpRedis,
  keysWith,
  pingRedis,
  requireRedis,
  startRedisServer,
  testRedisUrl,
} from "../../test/helpers/backends.js";
import { isDomainError } from "../common/errors.js";
import { runRouteStoreConformance } from "./conformance.js";
import { RedisRouteStore } from "./redis.js";
import type { Route } from "./types.js";

const url = testRedisUrl();
// Every key this file writes starts with this, so a shared Redis can be cleaned after the run.
const runPrefix = `sb-test-${randomUUID()}:`;
let stores = 0;
const nextPrefix = (): string => `${runPrefix}${stores++}:`;

const T0 = 1_700_000_000_000;
const TTL = 30_000;
const route = (userId: string, deviceId: string, sessionId = "s1", gatewayId = "gw-a"): Route => ({
  userId,
  deviceId,
  gatewayId,
  sessionId,
});
const users = (n: number): string[] => Array.from({ length: n }, () => `u-${randomUUID()}`);

const clients: Redis[] = [];
function connect(to: string, options: RedisOptions = {}): Redis {
  const client = new Redis(to, { maxRetriesPerRequest: 2, ...options });
  // Outages are provoked on purpose; the failing calls carry the errors the tests look at.
  client.on("error", () => {});
  clients.push(client);
  return client;
}

if (!(await pingRedis(url))) {
  // Skips here, or fails under CI=true: a missing backend must be visible.
  test("RedisRouteStore (needs Redis)", async (t) => {
    await requireRedis(t, url);
  });
} else {
  const shared = connect(url);

  after(() => cleanUpRedis(shared, runPrefix, clients));

  runRouteStoreConformance("RedisRouteStore", async () => ({
    store: new RedisRouteStore(shared, nextPrefix()),
    close: async () => {},
  }));

  describe("RedisRouteStore specifics", () => {
    test("route keys expire with their last route; last seen outlives them", async (t) => {
      if ((await requireRedis(t, url)) === undefined) return;
      const prefix = nextPrefix();
      const store = new RedisRouteStore(shared, prefix);
      const [a] = users(1) as [string];
      await store.register([route(a, "phone")], TTL, T0);
      await store.register([route(a, "laptop")], 2 * TTL, T0);
      const routeKeys = (await keysWith(shared, prefix)).filter((k) => k.endsWith(`:${a}`));
      assert.equal(routeKeys.length, 2);
      for (const key of routeKeys) {
        const ttl = await shared.pttl(key);
        assert.ok(ttl > TTL && ttl <= 2 * TTL, `${key} has TTL ${ttl}`);
      }
      const dueKey = (await keysWith(shared, prefix)).find((k) => k.endsWith(":due"));
      assert.ok(dueKey !== undefined);
      assert.equal(await shared.zscore(dueKey, a), String(T0 + TTL));

      assert.deepEqual(await store.unregister([route(a, "phone"), route(a, "laptop")], T0 + 5), [a]);
      const left = await keysWith(shared, prefix);
      assert.equal(left.length, 1, `left: ${left.join(", ")}`);
      const seenKey = left[0]!;
      assert.match(seenKey, /:seen:/);
      assert.equal(await shared.get(seenKey), String(T0 + 5));
      assert.ok((await shared.pttl(seenKey)) > 80 * 24 * 3600 * 1000);
    });

    test("keeps the key layout: a user's keys sit in the hash-tag slot of FNV-1a mod 16", async (t) => {
      if ((await requireRedis(t, url)) === undefined) return;
      // Existing deployments hold keys named this way; a different hash would orphan them.
      const prefix = nextPrefix();
      const store = new RedisRouteStore(shared, prefix);
      await store.register([route("u_alice", "phone"), route("a", "phone")], TTL, T0);
      assert.deepEqual((await keysWith(shared, prefix)).sort(), [
        `${prefix}{12}:due`,
        `${prefix}{12}:g:a`,
        `${prefix}{12}:r:a`,
        `${prefix}{15}:due`,
        `${prefix}{15}:g:u_alice`,
        `${prefix}{15}:r:u_alice`,
      ]);
    });

    test("expire settles only due users, in batches", async (t) => {
      if ((await requireRedis(t, url)) === undefined) return;
      const store = new RedisRouteStore(shared, nextPrefix(), { expireBatch: 3 });
      const short = users(60);
      const long = users(10);
      await store.register(
        short.map((u) => route(u, "phone")),
        TTL,
        T0,
      );
      await store.register(
        long.map((u) => route(u, "phone")),
        10 * TTL,
        T0,
      );
      assert.deepEqual(await store.expire(T0 + TTL - 1), []);
      assert.deepEqual((await store.expire(T0 + TTL)).sort(), [...short].sort());
      assert.deepEqual(await store.expire(T0 + TTL + 1), []);
      const states = await store.presence([...short, ...long], T0 + TTL + 2);
      assert.deepEqual(
        states.map((p) => p.online),
        [...short.map(() => false), ...long.map(() => true)],
      );
    });

    test("gateways and sweepers on separate connections report each transition once", async (t) => {
      if ((await requireRedis(t, url)) === undefined) return;
      const prefix = nextPrefix();
      const one = new RedisRouteStore(connect(url), prefix);
      const two = new RedisRouteStore(connect(url), prefix);
      const who = users(50);
      const came = await Promise.all([
        one.register(
          who.map((u) => route(u, "phone", "s1", "gw-1")),
          TTL,
          T0,
        ),
        two.register(
          who.map((u) => route(u, "laptop", "s1", "gw-2")),
          TTL,
          T0,
        ),
      ]);
      assert.deepEqual(came.flat().sort(), [...who].sort());
      const went = await Promise.all([one.expire(T0 + TTL), two.expire(T0 + TTL), one.expire(T0 + TTL)]);
      assert.deepEqual(went.flat().sort(), [...who].sort());
    });

    test("a user whose route keys vanished is swept offline once", async (t) => {
      if ((await requireRedis(t, url)) === undefined) return;
      const prefix = nextPrefix();
      const store = new RedisRouteStore(shared, prefix);
      const [a] = users(1) as [string];
      await store.register([route(a, "phone")], TTL, T0);
      // As if their key TTL fired before any sweep ran.
      const routeKeys = (await keysWith(shared, prefix)).filter((k) => k.endsWith(`:${a}`));
      await shared.del(...routeKeys);
      assert.deepEqual(await store.lookup([a], T0 + 1), []);
      assert.deepEqual(await store.presence([a], T0 + 1), [{ userId: a, online: false, lastSeenMs: 0 }]);
      assert.deepEqual(await store.expire(T0 + TTL), [a]);
      assert.deepEqual(await store.expire(T0 + TTL + 1), []);
      assert.equal((await store.presence([a], T0 + TTL + 2))[0]?.lastSeenMs, T0 + TTL);
    });

    test("heals after Redis restarts empty: the next heartbeat restores routes", async (t) => {
      if ((await requireRedis(t, url)) === undefined) return;
      let server = await startRedisServer();
      const client = connect(server.url, { retryStrategy: () => 50, maxRetriesPerRequest: 1 });
      t.after(async () => {
        client.disconnect();
        await server.stop();
      });
      const store = new RedisRouteStore(client, "sb:");
      const [a, b] = users(2) as [string, string];
      const routes = [route(a, "phone"), route(b, "phone", "s1", "gw-b")];
      assert.deepEqual(await store.register(routes, TTL, T0), [a, b]);

      await server.stop();
      // During the outage calls fail fast instead of hanging, as unavailable (clients retry).
      await assert.rejects(
        store.lookup([a], T0 + 1),
        (err: unknown) => isDomainError(err, "unavailable") && /^route store unavailable: /.test(err.message),
      );
      server = await startRedisServer({ port: server.port });
      for (let i = 0; client.status !== "ready"; i++) {
        assert.ok(i < 200, `client did not reconnect: ${client.status}`);
        await new Promise((resolve) => setTimeout(resolve, 10));
      }

      // Everything is gone, and nothing throws on the missing keys.
      assert.deepEqual(await store.lookup([a, b], T0 + 2), []);
      assert.deepEqual(await store.presence([a], T0 + 2), [{ userId: a, online: false, lastSeenMs: 0 }]);
      assert.deepEqual(await store.expire(T0 + 2), []);
      assert.deepEqual(await store.unregister([route(a, "laptop")], T0 + 2), []);

      // The gateways' heartbeat re-registers their routes; the store reports them online again.
      assert.deepEqual(await store.register(routes, TTL, T0 + 3), [a, b]);
      assert.deepEqual(
        (await store.lookup([a, b], T0 + 4)).sort((x, y) => x.userId.localeCompare(y.userId)),
        [...routes].sort((x, y) => x.userId.localeCompare(y.userId)),
      );
      assert.deepEqual(
        (await store.presence([a, b], T0 + 4)).map((p) => p.online),
        [true, true],
      );
      assert.deepEqual((await store.expire(T0 + 3 + TTL)).sort(), [a, b].sort());
    });
  });
}
