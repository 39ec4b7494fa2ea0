import { setImmediate } from "node:timers/promises";
import type { Route, RouteStore, UserPresence } from "./types.js";

interface Live extends Route {
  expiresAtMs: number;
  /** Its key in its user's map. */
  key: string;
}

/**
 * Width of the expiry index's buckets, in milliseconds. A sweep visits only the buckets that are
 * due, so its cost follows the routes that expire, not the routes held: with every stream's route
 * refreshed every 10 s, walking all of them on each 5 s sweep held the event loop for milliseconds
 * per 10,000 streams.
 */
const DUE_BUCKET_MS = 1_000;
/** Routes a sweep drops, at least, before it gives the event loop a turn. */
const EXPIRE_SLICE = 2_048;

/** The embedded route store: one process, one map per user, and an index of routes by expiry. */
export class InMemoryRouteStore implements RouteStore {
  private readonly byUser = new Map<string, Map<string, Live>>();
  private readonly lastSeen = new Map<string, number>();
  /** Live routes by Math.floor(expiresAtMs / DUE_BUCKET_MS); a refreshed route moves bucket. */
  private readonly due = new Map<number, Set<Live>>();
  /** The keys of `due`, ascending. */
  private readonly dueOrder: number[] = [];

  private key(route: Route): string {
    return `${route.deviceId}\n${route.sessionId}`;
  }

  private liveCount(userId: string, nowMs: number): number {
    let n = 0;
    for (const r of this.byUser.get(userId)?.values() ?? []) if (r.expiresAtMs > nowMs) n++;
    return n;
  }

  async register(routes: readonly Route[], ttlMs: number, nowMs: number): Promise<string[]> {
    const cameOnline: string[] = [];
    for (const route of routes) {
      const wasOnline = this.liveCount(route.userId, nowMs) > 0;
      let routes = this.byUser.get(route.userId);
      if (routes === undefined) {
        routes = new Map();
        this.byUser.set(route.userId, routes);
      }
      const key = this.key(route);
      const previous = routes.get(key);
      if (previous !== undefined) this.unindex(previous);
      const live: Live = { ...route, expiresAtMs: nowMs + ttlMs, key };
      routes.set(key, live);
      this.index(live);
      if (!wasOnline && !cameOnline.includes(route.userId)) cameOnline.push(route.userId);
    }
    return cameOnline;
  }

  async unregister(routes: readonly Route[], nowMs: number): Promise<string[]> {
    const wentOffline: string[] = [];
    for (const route of routes) {
      const mine = this.byUser.get(route.userId);
      const key = this.key(route);
      const live = mine?.get(key);
      if (mine === undefined || live === undefined) continue;
      mine.delete(key);
      this.unindex(live);
      if (this.settle(route.userId, nowMs)) wentOffline.push(route.userId);
    }
    return wentOffline;
  }

  async expire(nowMs: number): Promise<string[]> {
    const dropped = new Set<string>();
    const last = Math.floor(nowMs / DUE_BUCKET_MS);
    let slice = 0;
    while (this.dueOrder.length > 0 && this.dueOrder[0]! <= last) {
      const bucket = this.dueOrder[0]!;
      const lives = this.due.get(bucket)!;
      for (const r of lives) {
        // Only the bucket of nowMs itself can hold routes live for the rest of it.
        if (r.expiresAtMs > nowMs) continue;
        lives.delete(r);
        const mine = this.byUser.get(r.userId);
        if (mine?.get(r.key) === r) mine.delete(r.key);
        dropped.add(r.userId);
        // A gateway that dies takes all its routes with it at once, and its heartbeat had
        // refreshed them within a second or two: the sweep gives the event loop a turn between
        // slices rather than dropping them all in one task.
        if (++slice >= EXPIRE_SLICE) break;
      }
      if (slice >= EXPIRE_SLICE) {
        slice = 0;
        await setImmediate();
        continue;
      }
      if (lives.size > 0) break;
      this.due.delete(bucket);
      this.dueOrder.shift();
    }
    const wentOffline: string[] = [];
    for (const userId of dropped) {
      if (this.settle(userId, nowMs)) wentOffline.push(userId);
      if (++slice >= EXPIRE_SLICE) {
        slice = 0;
        await setImmediate();
      }
    }
    return wentOffline;
  }

  /** Records last seen when a user has no route left; true if they went offline. */
  private settle(userId: string, nowMs: number): boolean {
    // Settled already (by an unregister, or a sweep that ran while this one gave way).
    if (!this.byUser.has(userId)) return false;
    if (this.liveCount(userId, nowMs) > 0) return false;
    this.byUser.delete(userId);
    this.lastSeen.set(userId, nowMs);
    return true;
  }

  private index(live: Live): void {
    const bucket = Math.floor(live.expiresAtMs / DUE_BUCKET_MS);
    let lives = this.due.get(bucket);
    if (lives === undefined) {
      lives = new Set();
      this.due.set(bucket, lives);
      // Expiries mostly grow with the clock, so a new bucket is mostly the last one.
      let i = this.dueOrder.length;
      while (i > 0 && this.dueOrder[i - 1]! > bucket) i--;
      this.dueOrder.splice(i, 0, bucket);
    }
    lives.add(live);
  }

  // An emptied bucket stays in the index until a sweep reaches it: at most one per DUE_BUCKET_MS
  // of the longest TTL.
  private unindex(live: Live): void {
    this.due.get(Math.floor(live.expiresAtMs / DUE_BUCKET_MS))?.delete(live);
  }

  async lookup(userIds: readonly string[], nowMs: number): Promise<Route[]> {
    const out: Route[] = [];
    for (const userId of userIds) {
      for (const r of this.byUser.get(userId)?.values() ?? []) {
        if (r.expiresAtMs > nowMs) {
          out.push({
            userId: r.userId,
            deviceId: r.deviceId,
            gatewayId: r.gatewayId,
            sessionId: r.sessionId,
          });
        }
      }
    }
    return out;
  }

  async presence(userIds: readonly string[], nowMs: number): Promise<UserPresence[]> {
    return userIds.map((userId) => {
      const online = this.liveCount(userId, nowMs) > 0;
      return { userId, online, lastSeenMs: online ? nowMs : (this.lastSeen.get(userId) ?? 0) };
    });
  }
}
