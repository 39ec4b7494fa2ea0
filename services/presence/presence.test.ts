import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { PresenceFrame } from "../../gen/switchboard/v1/gateway_pb.js";
import { eventually } from "../../test/helpers/inbox.js";
import { turnMarker } from "../../test/helpers/turns.js";
import { InProcessBus } from "../bus/in-process.js";
import { createLogger } from "../common/log.js";
import { InMemoryRouteStore } from "./memory.js";
import { ANNOUNCE_BATCH, Presence } from "./presence.js";
import type { Route } from "./types.js";

const log = createLogger({ level: "silent" });
const T0 = 1_700_000_000_000;
const TTL = 30_000;

/** One broadcast as a gateway hears it: its presence frames, and whether the loop turned before it. */
interface Heard {
  frames: PresenceFrame[];
  turned: boolean;
}

function listen(bus: InProcessBus): Heard[] {
  const heard: Heard[] = [];
  const turned = turnMarker();
  bus.onBroadcast((events) => {
    const frames = events.flatMap((e) =>
      e.event.case === "presenceChanged" && e.event.value.presence ? [e.event.value.presence] : [],
    );
    heard.push({ frames, turned: turned() });
  });
  return heard;
}

/** A presence service over the in-memory store and bus, on a clock the test moves. */
function presenceOnClock() {
  const bus = new InProcessBus(log);
  const heard = listen(bus);
  const clock = { now: T0 };
  const presence = new Presence(new InMemoryRouteStore(), bus, log, {
    sweepIntervalMs: 10,
    now: () => clock.now,
  });
  return { bus, heard, clock, presence };
}

describe("Presence announcements", () => {
  test("a gateway's worth of users going offline at once is announced in batches, each in a task of its own", async () => {
    const users = 2 * ANNOUNCE_BATCH + 276;
    const { heard, clock, presence } = presenceOnClock();
    try {
      // One gateway's streams, one device per user, all registered by one heartbeat.
      const routes: Route[] = Array.from({ length: users }, (_, i) => ({
        userId: `u${i}`,
        deviceId: `d${i}`,
        gatewayId: "gw-dead",
        sessionId: `s${i}`,
      }));
      await presence.register(routes, TTL);
      assert.deepEqual(
        heard.map((h) => h.frames.length),
        [ANNOUNCE_BATCH, ANNOUNCE_BATCH, 276],
      );
      assert.ok(heard.every((h) => h.frames.every((f) => f.online)));
      heard.length = 0;

      // The gateway dies: its heartbeat stops and every route expires in one sweep.
      clock.now = T0 + TTL + 1;
      await eventually(
        () => heard.reduce((n, h) => n + h.frames.length, 0) >= users,
        () => `${heard.length} broadcasts`,
      );
      assert.deepEqual(
        heard.map((h) => h.frames.length),
        [ANNOUNCE_BATCH, ANNOUNCE_BATCH, 276],
      );
      assert.ok(
        heard.every((h) => h.turned),
        "each batch is broadcast in a task after the one before it",
      );
      const offline = heard.flatMap((h) => h.frames);
      assert.ok(offline.every((f) => !f.online && f.lastSeenMs === BigInt(T0 + TTL + 1)));
      assert.equal(new Set(offline.map((f) => f.userId)).size, users, "each user announced once");
    } finally {
      presence.close();
    }
  });

  test("a user back online before their batch is read is announced online, after the sweep's offline batches", async () => {
    const users = 2 * ANNOUNCE_BATCH;
    const { bus, heard, clock, presence } = presenceOnClock();
    try {
      const route = (i: number, gatewayId: string): Route => ({
        userId: `u${i}`,
        deviceId: `d${i}`,
        gatewayId,
        sessionId: `${gatewayId}-s${i}`,
      });
      await presence.register(
        Array.from({ length: users }, (_, i) => route(i, "gw-dead")),
        TTL,
      );
      heard.length = 0;
      // The last user reconnects to another gateway as soon as the first offline batch is out,
      // while the second, which holds them, waits for its turn.
      const back = users - 1;
      bus.onBroadcast((events) => {
        if (heard.length === 1 && events.some((e) => e.event.case === "presenceChanged")) {
          void presence.register([route(back, "gw-live")], TTL);
        }
      });
      clock.now = T0 + TTL + 1;
      await eventually(
        () => heard.length >= 3,
        () => `${heard.length} broadcasts`,
      );
      const last = heard
        .flatMap((h) => h.frames)
        .filter((f) => f.userId === `u${back}`)
        .at(-1);
      assert.equal(last?.online, true, "the reconnected user's last announcement says online");
    } finally {
      presence.close();
    }
  });
});
