/**
 * The presence service's public face: what other services and the composition root use of it.
 * The engines' internals (the Redis key layout and scripts) are not exported and may change
 * only with a migration of the stored keys.
 */

// The RPC face and the manager behind it (the admin service looks up a user's routes and presence).
export { presenceService } from "./handler.js";
// The route store engines, chosen in services/server/engines.ts; Redis is loaded only when
// chosen, so it is imported from ./redis.js there rather than re-exported here.
export { InMemoryRouteStore } from "./memory.js";
export { Presence, type PresenceOptions } from "./presence.js";
export type { Route, RouteStore, UserPresence } from "./types.js";
