/**
 * Push notifications are content-free wake-ups: they tell a device that a conversation has
 * something new (at most its id and seq), and the device connects and syncs from the log. A lost
 * push delays a message; it never loses one.
 */

// The targets are records the store keeps; their shapes are declared with the store's types.
import type { PushTarget } from "../store/types.js";

export type { ApnsTarget, FcmTarget, PushTarget, WebPushTarget } from "../store/types.js";

/** What one push says. */
export interface PushMessage {
  /** The conversation with something new. */
  conversationId: string;
  /** The latest seq waiting in it. */
  seq: number;
  /**
   * Replaces an undelivered earlier push with the same key at the provider (Web Push Topic,
   * FCM collapse_key, apns-collapse-id): one pending wake-up per device and conversation.
   * At most 32 characters of [A-Za-z0-9_-].
   */
  collapseKey: string;
  /** How long the provider should keep trying to deliver, in seconds. */
  ttlSeconds: number;
  /** "high" wakes the device now (messages); "normal" may be delayed to save battery. */
  urgency: "high" | "normal";
  /**
   * Set for a call's wake-up (docs/calls.md): a VoIP push where the platform has one (APNs
   * apns-push-type voip), high priority everywhere, collapsed per call; `ended` supersedes it
   * so a device that was rung stops ringing.
   */
  call?: PushCall;
}

/** What a call's push says: the call id and whether it rings or ended; nothing else. */
export interface PushCall {
  /** The call id the caller chose. */
  callId: string;
  /** False while it rings; true once it ended (answered elsewhere, hung up, rang out). */
  ended: boolean;
}

/** How a provider answered one push. Providers return these; they do not throw for them. */
export type PushOutcome =
  /** The provider accepted the push. */
  | { status: "delivered" }
  /** The target no longer exists (404/410, Unregistered, BadDeviceToken): remove it. */
  | { status: "gone"; reason: string }
  /** Try again later (429, 5xx, network): after retryAfterMs if the provider said so. */
  | { status: "retry"; reason: string; retryAfterMs?: number }
  /** This push cannot succeed (a malformed request, bad credentials); keep the target. */
  | { status: "failed"; reason: string };

/** One push protocol. */
export interface PushProvider {
  /** The kind of target this provider serves. */
  readonly kind: PushTarget["kind"];
  /** Sends one push. Never throws for a provider or network answer: it maps it to an outcome. */
  send(target: PushTarget, message: PushMessage): Promise<PushOutcome>;
  /** Releases connections. */
  close(): Promise<void>;
}

/**
 * Parses an HTTP Retry-After header (delta-seconds or an HTTP date) into milliseconds, or
 * undefined when absent or unreadable.
 */
export function retryAfterMs(
  header: string | null | undefined,
  nowMs: number = Date.now(),
): number | undefined {
  if (header === null || header === undefined || header.trim() === "") return undefined;
  const seconds = Number(header);
  if (Number.isFinite(seconds)) return seconds >= 0 ? Math.round(seconds * 1000) : undefined;
  const date = Date.parse(header);
  return Number.isNaN(date) ? undefined : Math.max(0, date - nowMs);
}
