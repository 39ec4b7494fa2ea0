/**
 * The accounts service's public face: what other services and the composition root use of it.
 * Anything not exported here (the username rules, the invite store calls, the key checks) is the
 * accounts service's own and may change without notice.
 */

// The managers: users, devices and credentials; the key directory.
export {
  type AccountAbuseOptions,
  Accounts,
  type AccountsOptions,
  pushTargetId,
  toDevice,
  toUser,
} from "./accounts.js";
// Composition (services/server): the RPC faces.
export { accountService, directoryService } from "./handler.js";
// The bounds of an invite, for the admin service's checks of CreateInvite.
export { INVITE_LIMITS, type RegistrationMode } from "./invites.js";
export { DEFAULT_KEYS_OPTIONS, Keys, type KeysOptions } from "./keys.js";
export { keyService } from "./keys-handler.js";
// The caller's network address, set by the edge (services/server) for the per-address limits.
export { addressKey, PEER_HEADER, trustedProxyList, withPeerAddress } from "./peer.js";
// The gateway reads a conversation opener's privacy setting off the wire the same way.
export { audienceFromWire } from "./privacy.js";
export { type AccountRate, perPeriod, type RefusalReason } from "./refusals.js";
// Operator suspension, deletion and export of a user (the admin service's user commands).
export type { Suspended } from "./suspension.js";
export { EXPORT_SCAN, UserData, type UserExport } from "./user-data.js";
