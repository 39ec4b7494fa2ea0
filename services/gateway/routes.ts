/**
 * A gateway's routes in the route store: one per open stream (registered when the stream opens,
 * refreshed every third of their TTL, removed when it closes), and a beacon that shows whether
 * the store still holds them. When the store loses them (Redis restarted empty) or does not
 * answer, every route is registered again and every stream reads its sync state again: what was
 * committed meanwhile reached no gateway, and the log is where it is.
 */
import { setImmediate } from "node:timers/promises";
import { create } from "@bufbuild/protobuf";
import type { Client } from "@connectrpc/connect";
import {
  type DeviceRoute,
  DeviceRouteSchema,
  type PresenceService,
} from "../../gen/switchboard/internal/v1/presence_pb.js";
import { newId } from "../common/ids.js";
import type { Logger } from "../common/log.js";
import type { Session } from "./session.js";

/** How often the gateway checks that the route store still holds its routes, in milliseconds. */
const ROUTE_CHECK_MS = 1_000;
/**
 * Streams that read their sync state at once when routes come back after a loss; the next group
 * starts when these have read it or after RESYNC_STAGGER_MS, whichever is first.
 */
const RESYNC_GROUP = 64;
const RESYNC_STAGGER_MS = 250;
/**
 * Routes per registration when every stream's route is registered again (the heartbeat, or after a
 * loss). Each batch is its own event-loop task: registering them all in one held the loop for about
 * 40 ms with 10,000 idle streams, and the task grows with the streams a gateway holds.
 */
const REFRESH_BATCH = 256;

/** What the route keeper needs of a stream. */
export type RoutedStream = Pick<Session, "id" | "userId" | "deviceId" | "isClosed" | "resync">;

/** What the route keeper needs from its gateway. */
export interface RouteKeeperDeps {
  /** The gateway's id: routes point at it. */
  id: string;
  presence: Client<typeof PresenceService>;
  log: Logger;
  now: () => number;
  /** Route lifetime without a heartbeat, in milliseconds. */
  routeTtlMs: number;
  /** How often the beacon is checked, in milliseconds (ROUTE_CHECK_MS unless given). */
  routeCheckMs?: number | undefined;
  /** Every stream open on the gateway. */
  sessions: () => readonly RoutedStream[];
  /** True once the gateway refuses new streams. */
  draining: () => boolean;
}

/** Keeps a gateway's routes in the route store (see the file's comment). */
export class RouteKeeper {
  private readonly id: string;
  private readonly presence: Client<typeof PresenceService>;
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly routeTtlMs: number;
  private readonly heartbeat: NodeJS.Timeout;
  private readonly routeCheck: NodeJS.Timeout;
  /**
   * A route of no device, registered only by the route check: while the route store holds it, it
   * holds every route registered before it. It is replaced (the new one registered first) every
   * heartbeat so it never expires.
   */
  private beacon: DeviceRoute;
  private beaconAt = 0;
  /** From a failed registration, or a check that found the beacon gone, until routes are back. */
  private routesLost = true;
  private checkingRoutes = false;

  constructor(private readonly deps: RouteKeeperDeps) {
    this.id = deps.id;
    this.presence = deps.presence;
    this.log = deps.log;
    this.now = deps.now;
    this.routeTtlMs = deps.routeTtlMs;
    // Routes are refreshed well within their TTL so a live stream never looks offline.
    this.heartbeat = setInterval(() => void this.heartbeatRoutes(), this.heartbeatMs);
    this.heartbeat.unref();
    // The route store can lose routes between heartbeats (Redis restarted empty): the check
    // notices within routeCheckMs and registers them again, and the streams catch up.
    this.beacon = this.newBeacon();
    this.routeCheck = setInterval(() => void this.checkRoutes(), deps.routeCheckMs ?? ROUTE_CHECK_MS);
    this.routeCheck.unref();
    void this.checkRoutes();
  }

  /**
   * Makes the stream reachable by fanout. If the route store does not answer, the stream goes on
   * without a route: the route check registers it once the store is back, and then the stream
   * reads its sync state again for what was committed meanwhile.
   */
  async register(session: RoutedStream): Promise<void> {
    try {
      await this.presence.registerRoutes({ routes: [this.route(session)], ttlMs: this.routeTtlMs });
    } catch (err) {
      this.lostRoutes(err, "route registration failed");
    }
  }

  /** Removes a closed stream's route (in the background). */
  unregister(session: RoutedStream): void {
    this.presence
      .unregisterRoutes({ routes: [this.route(session)] })
      .catch((err: unknown) => this.log.warn({ err, sessionId: session.id }, "route removal failed"));
  }

  /** Stops the heartbeat and the check, and removes the beacon. */
  stop(): void {
    clearInterval(this.heartbeat);
    clearInterval(this.routeCheck);
    // The beacon would otherwise linger until it expires, showing a gateway that is gone.
    this.presence.unregisterRoutes({ routes: [this.beacon] }).catch(() => {});
  }

  private route(session: RoutedStream) {
    return create(DeviceRouteSchema, {
      userId: session.userId,
      deviceId: session.deviceId,
      gatewayId: this.id,
      sessionId: session.id,
    });
  }

  private get heartbeatMs(): number {
    return Math.max(1000, Math.floor(this.routeTtlMs / 3));
  }

  private newBeacon(): DeviceRoute {
    return create(DeviceRouteSchema, {
      userId: `gateway:${this.id}`,
      deviceId: `gateway:${this.id}`,
      gatewayId: this.id,
      sessionId: newId("s"),
    });
  }

  /** Notes that routes may be missing from the store; logged once per loss. */
  private lostRoutes(err: unknown, message: string): void {
    if (!this.routesLost) {
      this.log.warn(
        { err },
        `${message}: streams go on; their routes are registered again and the streams catch up once the route store answers`,
      );
    }
    this.routesLost = true;
  }

  /**
   * Registers every stream's route (after `first`, if given), REFRESH_BATCH at a time with a turn of
   * the event loop between batches; false if any part failed. A stream that ends meanwhile is left
   * out of the batches after its end, so its route is not registered again behind its removal.
   */
  private async refreshRoutes(first: DeviceRoute[] = []): Promise<boolean> {
    const sessions = this.deps.sessions();
    let ok = true;
    for (let i = 0; i === 0 || i < sessions.length; i += REFRESH_BATCH) {
      if (i > 0) await setImmediate();
      const routes = sessions
        .slice(i, i + REFRESH_BATCH)
        .filter((s) => !s.isClosed)
        .map((s) => this.route(s));
      if (i === 0) routes.unshift(...first);
      if (routes.length === 0) continue;
      try {
        await this.presence.registerRoutes({ routes, ttlMs: this.routeTtlMs });
      } catch (err) {
        this.lostRoutes(err, "route heartbeat failed");
        ok = false;
      }
    }
    return ok;
  }

  private async heartbeatRoutes(): Promise<void> {
    await this.refreshRoutes();
  }

  /**
   * Checks that the route store still holds the beacon, hence every route registered before it.
   * When it does not (or did not answer), registers the beacon and every route again, then has
   * every stream read its sync state again: what was committed while the routes were missing
   * reached no gateway, and the log is where it is.
   */
  private async checkRoutes(): Promise<void> {
    if (this.checkingRoutes || this.deps.draining()) return;
    this.checkingRoutes = true;
    try {
      if (!this.routesLost) {
        try {
          // Replacing the beacon: the new one first, then the old one must still be there.
          let next: DeviceRoute | undefined;
          if (this.now() - this.beaconAt >= this.heartbeatMs) {
            next = this.newBeacon();
            await this.presence.registerRoutes({ routes: [next], ttlMs: this.routeTtlMs });
          }
          const { routes } = await this.presence.lookupRoutes({ userIds: [this.beacon.userId] });
          if (routes.some((r) => r.sessionId === this.beacon.sessionId)) {
            if (next !== undefined) this.replaceBeacon(next);
            return;
          }
          this.lostRoutes(undefined, "the route store lost this gateway's routes (restarted empty?)");
        } catch (err) {
          this.lostRoutes(err, "the route store does not answer");
        }
      }
      const beacon = this.newBeacon();
      if (!(await this.refreshRoutes([beacon]))) return;
      this.replaceBeacon(beacon);
      const streams = this.deps.sessions();
      this.routesLost = false;
      if (streams.length === 0) return;
      this.log.info(
        { streams: streams.length },
        "routes registered again; the streams catch up from the log",
      );
      void this.resync(streams);
    } finally {
      this.checkingRoutes = false;
    }
  }

  private replaceBeacon(next: DeviceRoute): void {
    const old = this.beacon;
    this.beacon = next;
    this.beaconAt = this.now();
    if (old.sessionId !== next.sessionId) this.presence.unregisterRoutes({ routes: [old] }).catch(() => {});
  }

  /**
   * Has streams read their sync state again, a group at a time so the sequencer is not flooded,
   * each group in an event-loop task of its own (an in-process sequencer can answer a group in
   * microtasks, which would otherwise chain every group into one task).
   */
  private async resync(streams: readonly RoutedStream[]): Promise<void> {
    for (let i = 0; i < streams.length; i += RESYNC_GROUP) {
      if (i > 0) await setImmediate();
      const group = streams
        .slice(i, i + RESYNC_GROUP)
        .map((s) =>
          s.resync().catch((err: unknown) => this.log.warn({ err, sessionId: s.id }, "stream resync failed")),
        );
      let stagger: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.all(group),
        new Promise((r) => {
          stagger = setTimeout(r, RESYNC_STAGGER_MS);
        }),
      ]);
      clearTimeout(stagger);
    }
  }
}
