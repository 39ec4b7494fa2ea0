/**
 * The notification service's public face. Providers (services/notification/providers/) are
 * built from configuration by buildPushProviders and are otherwise the service's own.
 */

// The internal RPC face and the manager behind it.
export { notificationService } from "./handler.js";
export { defaultNotifierOptions, Notifier, type NotifierMetrics, type NotifierOptions } from "./notifier.js";
export { buildPushProviders } from "./setup.js";
// The accounts service reads and writes a device's push target in the wire form with these rules
// (https only, no internal addresses).
export { targetFromRequest, targetFromWire, targetToWire } from "./targets.js";
export type { PushMessage, PushOutcome, PushProvider, PushTarget } from "./types.js";
