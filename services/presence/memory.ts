import type { Route, RouteStore, UserPresence } from "./types.js";

interface Live extends Route {
  expiresAtMs: number;
}

/** The embedded route store: one process, one map per user. */
export class InMemoryRouteStore implements RouteStore {
  private readonly byUser = new Map<string, Map<string, Live>>();
  private readonly lastSeen = new Map<string, number>();

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
      routes.set(this.key(route), { ...route, expiresAtMs: nowMs + ttlMs });
      if (!wasOnline && !cameOnline.includes(route.userId)) cameOnline.push(route.userId);
    }
    return cameOnline;
  }

  async unregister(routes: readonly Route[], nowMs: number): Promise<string[]> {
    const wentOffline: string[] = [];
    for (const route of routes) {
      const mine = this.byUser.get(route.userId);
      if (mine?.delete(this.key(route)) && this.settle(route.userId, nowMs)) wentOffline.push(route.userId);
    }
    return wentOffline;
  }

  async expire(nowMs: number): Promise<string[]> {
    const wentOffline: string[] = [];
    for (const [userId, routes] of this.byUser) {
      let dropped = false;
      for (const [key, r] of routes) {
        if (r.expiresAtMs <= nowMs) {
          routes.delete(key);
          dropped = true;
        }
      }
      if (dropped && this.settle(userId, nowMs)) wentOffline.push(userId);
    }
    return wentOffline;
  }

  /** Records last seen when a user has no route left; true if they went offline. */
  private settle(userId: string, nowMs: number): boolean {
    if (this.liveCount(userId, nowMs) > 0) return false;
    this.byUser.delete(userId);
    this.lastSeen.set(userId, nowMs);
    return true;
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
