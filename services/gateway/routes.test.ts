import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { setImmediate as turn } from "node:timers/promises";
import { createClient, createRouterTransport } from "@connectrpc/connect";
import { PresenceService } from "../../gen/switchboard/internal/v1/presence_pb.js";
import { turnMarker } from "../../test/helpers/turns.js";
import { InProcessBus } from "../bus/in-process.js";
import { createLogger } from "../common/log.js";
import { InMemoryRouteStore, Presence, presenceService } from "../presence/index.js";
import { type RoutedStream, RouteKeeper } from "./routes.js";

const log = createLogger({ level: "silent" });

/** A stream as the route keeper sees it, counting its resyncs. */
function stream(i: number): RoutedStream & { resyncs: number; closed: boolean } {
  return {
    id: `s${i}`,
    userId: `u${i}`,
    deviceId: `d${i}`,
    closed: false,
    resyncs: 0,
    get isClosed() {
      return this.closed;
    },
    async resync() {
      this.resyncs++;
    },
  };
}

/**
 * A route keeper over the real presence service and in-memory route store, through Connect's
 * router transport; `onRegister` sees each registration call's routes before the store does.
 */
function keeperOver(streams: readonly RoutedStream[], onRegister: (userIds: string[]) => void) {
  const store = new InMemoryRouteStore();
  const presence = new Presence(store, new InProcessBus(log), log, { sweepIntervalMs: 60_000 });
  const impl = presenceService(presence);
  const transport = createRouterTransport((router) =>
    router.service(PresenceService, {
      ...impl,
      registerRoutes(req, ctx) {
        onRegister(req.routes.map((r) => r.userId));
        return impl.registerRoutes(req, ctx);
      },
    }),
  );
  const keeper = new RouteKeeper({
    id: "gw-test",
    presence: createClient(PresenceService, transport),
    log,
    now: Date.now,
    routeTtlMs: 60_000,
    routeCheckMs: 60_000,
    sessions: () => streams,
    draining: () => false,
  });
  return {
    store,
    stop: () => {
      keeper.stop();
      presence.close();
    },
  };
}

async function until(done: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!done()) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe("RouteKeeper", () => {
  test("registers every stream's route in batches of at most 256, each its own event-loop task", async () => {
    const streams = Array.from({ length: 1_000 }, (_, i) => stream(i));
    const batches: string[][] = [];
    // Per registration of streams' routes, whether the keeper gave the event loop a turn since
    // the one before.
    const turnedBefore: boolean[] = [];
    const turned = turnMarker();
    const { store, stop } = keeperOver(streams, (userIds) => {
      if (userIds.some((u) => u.startsWith("u"))) turnedBefore.push(turned());
      batches.push(userIds);
    });
    try {
      // The keeper starts as if the route store had lost its routes: it registers them all, then
      // has every stream read its sync state again.
      await until(() => streams.every((s) => s.resyncs === 1), "every stream to resync");
      const streamBatches = batches.filter((b) => b.some((u) => u.startsWith("u")));
      assert.deepEqual(
        streamBatches.map((b) => b.filter((u) => u.startsWith("u")).length),
        [256, 256, 256, 232],
      );
      // The beacon leads the first batch, so while it is there every route is.
      assert.ok(streamBatches[0]![0]!.startsWith("gateway:"));
      assert.deepEqual(turnedBefore, [true, true, true, true]);
      const routes = await store.lookup(
        streams.map((s) => s.userId),
        Date.now(),
      );
      assert.equal(routes.length, 1_000);
    } finally {
      stop();
    }
  });

  test("after a loss, streams resync 64 at a time, each group its own event-loop task", async () => {
    const streams = Array.from({ length: 300 }, (_, i) => stream(i));
    // Per group of resyncs (seen at its first stream), whether the keeper gave the event loop a
    // turn since the group before.
    const order: string[] = [];
    const turned = turnMarker();
    for (const s of streams) {
      const first = Number(s.id.slice(1)) % 64 === 0;
      s.resync = async () => {
        s.resyncs++;
        if (first) order.push(turned() ? "new task" : "same task");
      };
    }
    const { stop } = keeperOver(streams, () => {});
    try {
      await until(() => streams.every((s) => s.resyncs === 1), "every stream to resync");
      assert.deepEqual(order, ["new task", "new task", "new task", "new task", "new task"]);
    } finally {
      stop();
    }
  });

  test("a stream that ends during a refresh is not registered again after its end", async () => {
    const streams = Array.from({ length: 600 }, (_, i) => stream(i));
    const registered: string[] = [];
    let first = true;
    const { stop } = keeperOver(streams, (userIds) => {
      registered.push(...userIds);
      // Ends one stream of a later batch while the first is being registered.
      if (first && userIds.length > 1) {
        first = false;
        streams[500]!.closed = true;
      }
    });
    try {
      await until(() => streams.every((s) => s.resyncs === 1), "every stream to resync");
      assert.equal(registered.filter((u) => u.startsWith("u")).length, 599);
      assert.ok(!registered.includes("u500"));
      await turn();
    } finally {
      stop();
    }
  });
});
