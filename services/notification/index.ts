/**
 * The notification service's public face. The providers (services/notification/providers/) are
 * chosen from configuration with the other engines (openPushProviders in
 * services/server/engines.ts), which loads each provider's module only when it is configured.
 */

// The internal RPC face and the manager behind it.
export { notificationService } from "./handler.js";
export { defaultNotifierOptions, Notifier, type NotifierMetrics, type NotifierOptions } from "./notifier.js";
// The accounts service reads and writes a device's push target in the wire form with these rules
// (https only, no internal addresses).
export { targetFromRequest, targetFromWire, targetToWire } from "./targets.js";
export type { PushMessage, PushOutcome, PushProvider, PushTarget } from "./types.js";
