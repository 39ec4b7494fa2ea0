/** A device's stream on a gateway. */
export interface Route {
  /** The device's user. */
  userId: string;
  /** The device. */
  deviceId: string;
  /** The gateway instance holding the stream. */
  gatewayId: string;
  /** The stream. */
  sessionId: string;
}

/** A user's online state. */
export interface UserPresence {
  /** The user. */
  userId: string;
  /** True while any device holds a live route. */
  online: boolean;
  /** When the user was last online, in milliseconds since the Unix epoch; 0 if never. */
  lastSeenMs: number;
}

/**
 * Where device routes and last-seen times live. Embedded: process memory. Distributed: Redis
 * with key expiry. Routes expire ttlMs after their last registration.
 *
 * Every nowMs is the caller's clock, in milliseconds since the Unix epoch: the store never reads
 * its own, so gateways, sweepers and tests agree on what has expired.
 */
export interface RouteStore {
  /**
   * Adds or refreshes routes, live until nowMs + ttlMs (ttlMs in milliseconds); returns the users
   * who were offline before (their presence changed).
   */
  register(routes: readonly Route[], ttlMs: number, nowMs: number): Promise<string[]>;
  /** Removes routes (matched by device and session); returns the users who went offline. */
  unregister(routes: readonly Route[], nowMs: number): Promise<string[]>;
  /** Drops routes expired at nowMs; returns the users who went offline. */
  expire(nowMs: number): Promise<string[]>;
  /** The routes of users' devices still live at nowMs. */
  lookup(userIds: readonly string[], nowMs: number): Promise<Route[]>;
  /** Online state and last seen of users, as of nowMs. */
  presence(userIds: readonly string[], nowMs: number): Promise<UserPresence[]>;
}
