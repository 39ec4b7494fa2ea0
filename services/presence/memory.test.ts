import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { runRouteStoreConformance } from "./conformance.js";
import { InMemoryRouteStore } from "./memory.js";

runRouteStoreConformance("InMemoryRouteStore", async () => ({
  store: new InMemoryRouteStore(),
  close: async () => {},
}));

describe("InMemoryRouteStore's expiry index", () => {
  const T0 = 1_700_000_000_000;
  const route = (userId: string, sessionId = "s1") => ({
    userId,
    deviceId: "phone",
    gatewayId: "gw",
    sessionId,
  });

  test("a sweep drops what is due, including what was registered behind an earlier sweep's clock", async () => {
    const store = new InMemoryRouteStore();
    await store.register([route("a")], 30_000, T0);
    assert.deepEqual(await store.expire(T0 + 60_000), ["a"]);
    // A caller whose clock is behind the last sweep's (another gateway's heartbeat).
    await store.register([route("b")], 30_000, T0 + 1_000);
    await store.register([route("c")], 30_000, T0 + 90_000);
    assert.deepEqual(await store.expire(T0 + 60_000), ["b"]);
    assert.deepEqual(await store.lookup(["c"], T0 + 60_000), [route("c")]);
    assert.deepEqual(await store.expire(T0 + 120_000), ["c"]);
  });

  test("within the bucket of the sweep's clock, only the routes past their expiry go", async () => {
    const store = new InMemoryRouteStore();
    await store.register([route("a")], 10_100, T0);
    await store.register([route("b")], 10_900, T0);
    assert.deepEqual(await store.expire(T0 + 10_500), ["a"]);
    assert.deepEqual(await store.expire(T0 + 10_899), []);
    assert.deepEqual(await store.expire(T0 + 10_900), ["b"]);
  });

  test("routes that all expire at once are dropped a slice per event-loop task", async () => {
    const store = new InMemoryRouteStore();
    const users = Array.from({ length: 5_000 }, (_, i) => `u${i}`);
    // Each user's two devices, registered apart: a sweep's slices split some users' routes.
    await store.register(
      users.map((u) => route(u)),
      30_000,
      T0,
    );
    await store.register(
      users.map((u) => ({ ...route(u, "s2"), deviceId: "laptop" })),
      30_000,
      T0,
    );
    let turned = false;
    setImmediate(() => {
      turned = true;
    });
    // Two sweeps at once (one gives way mid-sweep) still report each user offline once.
    const [gone, alsoGone] = await Promise.all([store.expire(T0 + 30_000), store.expire(T0 + 30_000)]);
    assert.ok(turned, "the sweep gave the event loop a turn");
    assert.deepEqual([...gone, ...alsoGone].sort(), [...users].sort());
    assert.deepEqual(await store.lookup(users, T0), []);
  });

  test("refreshes, unregisters and different TTLs leave nothing to expire early or late", async () => {
    const store = new InMemoryRouteStore();
    const users = Array.from({ length: 2_000 }, (_, i) => `u${i}`);
    // Registered over 20 s with TTLs of 5-35 s; every third refreshed at 10 s; every fifth gone.
    const expiry = new Map<string, number>();
    for (const [i, u] of users.entries()) {
      const at = T0 + (i % 200) * 100;
      const ttl = 5_000 + (i % 7) * 5_000;
      await store.register([route(u)], ttl, at);
      expiry.set(u, at + ttl);
    }
    for (const [i, u] of users.entries()) {
      if (i % 3 === 0) {
        await store.register([route(u)], 30_000, T0 + 10_000);
        expiry.set(u, T0 + 40_000);
      }
      if (i % 5 === 0) {
        await store.unregister([route(u)], T0 + 10_000);
        expiry.delete(u);
      }
    }
    for (let now = T0 + 10_000; now <= T0 + 60_000; now += 2_500) {
      const gone = new Set(await store.expire(now));
      for (const u of users) {
        const at = expiry.get(u);
        const due = at !== undefined && at <= now;
        assert.equal(gone.has(u), due, `${u} at +${now - T0} ms`);
        if (due) expiry.delete(u);
      }
      const online = await store.presence(users, now);
      assert.deepEqual(
        online.filter((p) => p.online).map((p) => p.userId),
        users.filter((u) => expiry.has(u)),
      );
    }
    assert.equal(expiry.size, 0);
  });
});
