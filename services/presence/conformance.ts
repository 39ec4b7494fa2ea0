import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, test } from "node:test";
import type { Route, RouteStore } from "./types.js";

/** An engine under test; close releases what open took. */
export interface OpenedRouteStore {
  store: RouteStore;
  close(): Promise<void>;
}

const T0 = 1_700_000_000_000;
const TTL = 30_000;

function user(): string {
  return `u-${randomUUID()}`;
}

function route(userId: string, deviceId: string, sessionId = "s1", gatewayId = "gw-a"): Route {
  return { userId, deviceId, gatewayId, sessionId };
}

function sorted(routes: readonly Route[]): Route[] {
  const key = (r: Route): string => `${r.userId}\n${r.deviceId}\n${r.sessionId}`;
  return [...routes].sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
}

/**
 * The behaviour every RouteStore engine must share. Each test takes its own store from open and its
 * own user ids, and clocks are explicit, so engines backed by a shared server stay deterministic.
 */
export function runRouteStoreConformance(name: string, open: () => Promise<OpenedRouteStore>): void {
  describe(`RouteStore conformance: ${name}`, () => {
    async function withStore(fn: (store: RouteStore) => Promise<void>): Promise<void> {
      const opened = await open();
      try {
        await fn(opened.store);
      } finally {
        await opened.close();
      }
    }

    test("register reports came-online once and lookup returns the routes", () =>
      withStore(async (store) => {
        const a = user();
        const b = user();
        const routes = [route(a, "phone"), route(a, "laptop", "s9", "gw-b"), route(b, "phone")];
        assert.deepEqual(await store.register(routes, TTL, T0), [a, b]);
        assert.deepEqual(sorted(await store.lookup([a, b], T0 + 1)), sorted(routes));
        assert.deepEqual(sorted(await store.lookup([b], T0 + 1)), [route(b, "phone")]);
        // A heartbeat is a register of routes already there: no presence change.
        assert.deepEqual(await store.register(routes, TTL, T0 + 1000), []);
        // The device moved to another gateway with the same session: the route follows.
        await store.register([route(b, "phone", "s1", "gw-c")], TTL, T0 + 2000);
        assert.deepEqual(await store.lookup([b], T0 + 2001), [route(b, "phone", "s1", "gw-c")]);
      }));

    test("a refresh extends the expiry", () =>
      withStore(async (store) => {
        const a = user();
        await store.register([route(a, "phone")], TTL, T0);
        await store.register([route(a, "phone")], TTL, T0 + 20_000);
        assert.deepEqual(await store.lookup([a], T0 + 40_000), [route(a, "phone")]);
        assert.deepEqual(await store.expire(T0 + 40_000), []);
        const [p] = await store.presence([a], T0 + 40_000);
        assert.deepEqual(p, { userId: a, online: true, lastSeenMs: T0 + 40_000 });
        // Past the refreshed expiry the route is dead even before a sweep.
        assert.deepEqual(await store.lookup([a], T0 + 50_000), []);
        assert.equal((await store.presence([a], T0 + 50_000))[0]?.online, false);
      }));

    test("expiry drops routes and reports the user offline once, with last seen", () =>
      withStore(async (store) => {
        const a = user();
        await store.register([route(a, "phone"), route(a, "laptop")], TTL, T0);
        assert.deepEqual(await store.expire(T0 + 10_000), []);
        assert.deepEqual(await store.expire(T0 + 31_000), [a]);
        assert.deepEqual(await store.expire(T0 + 32_000), []);
        assert.deepEqual(await store.lookup([a], T0 + 33_000), []);
        assert.deepEqual(await store.presence([a], T0 + 40_000), [
          { userId: a, online: false, lastSeenMs: T0 + 31_000 },
        ]);
        // Coming back is a presence change again.
        assert.deepEqual(await store.register([route(a, "phone", "s2")], TTL, T0 + 50_000), [a]);
      }));

    test("a second device keeps the user online", () =>
      withStore(async (store) => {
        const a = user();
        assert.deepEqual(await store.register([route(a, "phone")], TTL, T0), [a]);
        assert.deepEqual(await store.register([route(a, "laptop")], TTL, T0 + 20_000), []);
        assert.deepEqual(await store.expire(T0 + 35_000), []);
        assert.deepEqual(await store.lookup([a], T0 + 35_000), [route(a, "laptop")]);
        assert.equal((await store.presence([a], T0 + 35_000))[0]?.online, true);
        assert.deepEqual(await store.unregister([route(a, "laptop")], T0 + 36_000), [a]);
        assert.deepEqual(await store.presence([a], T0 + 37_000), [
          { userId: a, online: false, lastSeenMs: T0 + 36_000 },
        ]);
        assert.deepEqual(await store.expire(T0 + 100_000), []);
      }));

    test("unregistering a stale session keeps the device's newer route", () =>
      withStore(async (store) => {
        const a = user();
        await store.register([route(a, "phone", "old", "gw-a")], TTL, T0);
        // The phone reconnected through another gateway before the old stream was noticed dead.
        assert.deepEqual(await store.register([route(a, "phone", "new", "gw-b")], TTL, T0 + 1000), []);
        assert.deepEqual(await store.unregister([route(a, "phone", "old", "gw-a")], T0 + 2000), []);
        assert.deepEqual(await store.lookup([a], T0 + 2000), [route(a, "phone", "new", "gw-b")]);
        assert.equal((await store.presence([a], T0 + 2000))[0]?.online, true);
        assert.deepEqual(await store.unregister([route(a, "phone", "new", "gw-b")], T0 + 3000), [a]);
        // Unregistering what is gone changes nothing and reports nothing.
        assert.deepEqual(await store.unregister([route(a, "phone", "new", "gw-b")], T0 + 4000), []);
        assert.equal((await store.presence([a], T0 + 5000))[0]?.lastSeenMs, T0 + 3000);
      }));

    test("concurrent registers of one user report came-online once", () =>
      withStore(async (store) => {
        const a = user();
        const b = user();
        const results = await Promise.all([
          store.register([route(a, "phone", "s1", "gw-a")], TTL, T0),
          store.register([route(a, "laptop", "s1", "gw-b")], TTL, T0),
          store.register([route(a, "tablet", "s1", "gw-c"), route(b, "phone")], TTL, T0),
          store.register([route(b, "laptop")], TTL, T0),
        ]);
        const reported = results.flat();
        assert.equal(reported.filter((u) => u === a).length, 1);
        assert.equal(reported.filter((u) => u === b).length, 1);
        assert.equal((await store.lookup([a, b], T0)).length, 5);
        // Concurrent unregisters of the last routes report went-offline once too.
        const gone = await Promise.all([
          store.unregister([route(a, "phone", "s1", "gw-a"), route(a, "laptop", "s1", "gw-b")], T0 + 1),
          store.unregister([route(a, "tablet", "s1", "gw-c")], T0 + 1),
        ]);
        assert.deepEqual(gone.flat(), [a]);
      }));

    test("unknown users are offline, never seen, with no routes", () =>
      withStore(async (store) => {
        const a = user();
        const b = user();
        assert.deepEqual(await store.presence([a, b], T0), [
          { userId: a, online: false, lastSeenMs: 0 },
          { userId: b, online: false, lastSeenMs: 0 },
        ]);
        assert.deepEqual(await store.lookup([a, b], T0), []);
        assert.deepEqual(await store.unregister([route(a, "phone")], T0), []);
        assert.deepEqual(await store.expire(T0), []);
        assert.deepEqual(await store.register([], TTL, T0), []);
        assert.deepEqual(await store.lookup([], T0), []);
        assert.deepEqual(await store.presence([], T0), []);
      }));

    test("lookup and presence of many users at once", () =>
      withStore(async (store) => {
        const users = Array.from({ length: 300 }, () => user());
        const routes = users.flatMap((u, i) =>
          i % 3 === 0 ? [route(u, "phone"), route(u, "laptop")] : [route(u, "phone")],
        );
        assert.deepEqual(await store.register(routes, TTL, T0), users);
        const offline = users.map(() => user());
        const asked = [...users, ...offline];
        assert.deepEqual(sorted(await store.lookup(asked, T0 + 1)), sorted(routes));
        const states = await store.presence(asked, T0 + 1);
        assert.deepEqual(
          states.map((p) => p.online),
          asked.map((_, i) => i < users.length),
        );
        assert.deepEqual(
          states.map((p) => p.userId),
          asked,
        );
        assert.deepEqual((await store.expire(T0 + TTL)).sort(), [...users].sort());
      }));
  });
}
