/**
 * Apple Push Notification service over HTTP/2 with token-based (.p8 key) authentication: one
 * background push per wake-up.
 * https://developer.apple.com/documentation/usernotifications/sending-notification-requests-to-apns
 */
import type { KeyObject } from "node:crypto";
import { constants, type OutgoingHttpHeaders } from "node:http2";
import { SignJWT } from "jose";
import {
  type PushMessage,
  type PushOutcome,
  type PushProvider,
  type PushTarget,
  retryAfterMs,
} from "../types.js";
import { contentFree } from "./content-free.js";
import { type Answer, errorText, header, isAnswer } from "./http2.js";
import { parsePrivateKey, TokenAuthorizedClient, TokenCache } from "./token-auth.js";

export const DEFAULT_APNS_PRODUCTION = "https://api.push.apple.com";
export const DEFAULT_APNS_SANDBOX = "https://api.sandbox.push.apple.com";

export interface ApnsOptions {
  /** The 10-character Team ID; the provider token's issuer. */
  teamId: string;
  /** The 10-character Key ID of the .p8 key; the provider token's kid. */
  keyId: string;
  /** The .p8 file's contents: a PKCS#8 PEM EC P-256 private key. */
  privateKey: string;
  /** http:// origins speak HTTP/2 without TLS (test endpoints). */
  productionEndpoint?: string;
  sandboxEndpoint?: string;
  /** Per request, including connecting. Default 10 s. */
  timeoutMs?: number;
  /** Milliseconds since the epoch; tests move it to age the provider token. */
  now?: () => number;
}

/**
 * Apple rejects provider tokens older than an hour (ExpiredProviderToken) and refreshes more
 * often than every 20 minutes (TooManyProviderTokenUpdates); 50 minutes sits between the two.
 */
export const PROVIDER_TOKEN_REUSE_MS = 50 * 60_000;
/** Reasons for which the device token itself is bad: the target should be removed. */
const GONE_REASONS = new Set(["BadDeviceToken", "DeviceTokenNotForTopic"]);
const TOKEN_REASONS = new Set(["ExpiredProviderToken", "InvalidProviderToken"]);

export class ApnsProvider implements PushProvider {
  readonly kind = "apns" as const;
  private readonly key: KeyObject;
  private readonly origins: Record<"production" | "sandbox", string>;
  private readonly now: () => number;
  private readonly client: TokenAuthorizedClient;

  constructor(private readonly options: ApnsOptions) {
    if (options.teamId === "") throw new Error("APNs: teamId is empty");
    if (options.keyId === "") throw new Error("APNs: keyId is empty");
    this.key = parsePrivateKey("APNs", options.privateKey);
    const curve = this.key.asymmetricKeyDetails?.namedCurve;
    if (this.key.asymmetricKeyType !== "ec" || (curve !== "prime256v1" && curve !== "P-256")) {
      throw new Error(
        `APNs: privateKey must be an EC P-256 key (ES256), got ${this.key.asymmetricKeyType} ${curve ?? ""}`,
      );
    }
    this.origins = {
      production: new URL(options.productionEndpoint ?? DEFAULT_APNS_PRODUCTION).origin,
      sandbox: new URL(options.sandboxEndpoint ?? DEFAULT_APNS_SANDBOX).origin,
    };
    this.now = options.now ?? Date.now;
    this.client = new TokenAuthorizedClient({
      service: "APNs",
      tokens: new TokenCache(() => this.signProviderToken(), this.now),
      tokenFailure: (e) => ({
        status: "failed",
        reason: `APNs: cannot sign the provider token: ${errorText(e)}`,
      }),
      timeoutMs: options.timeoutMs ?? 10_000,
    });
  }

  async send(target: PushTarget, message: PushMessage): Promise<PushOutcome> {
    if (target.kind !== "apns")
      return { status: "failed", reason: `APNs cannot send to a ${target.kind} target` };
    if (this.client.closed) return { status: "retry", reason: "APNs provider closed" };
    // The token goes into the path: anything but hex could address another resource, and Apple
    // would answer BadDeviceToken for it anyway.
    if (!/^[0-9a-fA-F]+$/.test(target.token)) {
      return { status: "gone", reason: "BadDeviceToken: the device token is not hex" };
    }
    // A bundle id (plus suffixes like .voip); checked here because node drops a header value it
    // cannot send instead of failing, and APNs would then answer MissingTopic.
    if (!/^[A-Za-z0-9._-]+$/.test(target.topic)) {
      return { status: "failed", reason: `APNs: topic ${JSON.stringify(target.topic)} is not a bundle id` };
    }
    const origin = this.origins[target.environment];
    const body = JSON.stringify(apnsPayload(message));
    const answer = await this.client.post(
      origin,
      (jwt) => apnsHeaders(target, message, jwt, this.now()),
      body,
      // Clock skew or a token Apple stopped honouring: one fresh signature settles it; a key
      // Apple does not know fails again and is reported.
      (a) => a.status === 403 && TOKEN_REASONS.has(reasonOf(a)),
    );
    if (!isAnswer(answer)) return answer;
    return classify(answer, this.now());
  }

  async close(): Promise<void> {
    await this.client.close();
  }

  /** A provider token, reused for 50 minutes (PROVIDER_TOKEN_REUSE_MS). */
  private async signProviderToken(): Promise<{ value: string; refreshAtMs: number }> {
    const now = this.now();
    const jwt = await new SignJWT({})
      .setProtectedHeader({ alg: "ES256", kid: this.options.keyId })
      .setIssuer(this.options.teamId)
      .setIssuedAt(Math.floor(now / 1000))
      .sign(this.key);
    return { value: jwt, refreshAtMs: now + PROVIDER_TOKEN_REUSE_MS };
  }
}

/** Only content-available: iOS wakes the app, which syncs; nothing is shown and nothing leaks. */
export function apnsPayload(message: PushMessage): Record<string, unknown> {
  // A VoIP push wakes the app through PushKit, which reports the call to CallKit; no aps needed.
  if (message.call !== undefined) return { aps: {}, ...contentFree(message) };
  return { aps: { "content-available": 1 }, ...contentFree(message) };
}

export function apnsHeaders(
  target: { token: string; topic: string },
  message: PushMessage,
  jwt: string,
  nowMs: number,
): OutgoingHttpHeaders {
  const ttlSeconds = Math.max(0, Math.floor(message.ttlSeconds));
  const headers: OutgoingHttpHeaders = {
    [constants.HTTP2_HEADER_METHOD]: "POST",
    [constants.HTTP2_HEADER_PATH]: `/3/device/${target.token}`,
    authorization: `bearer ${jwt}`,
    "apns-topic": target.topic,
    "apns-push-type": "background",
    // Background pushes must use priority 5 (Apple rejects 10 for a content-available-only push),
    // so urgency cannot raise it: iOS schedules the wake-up, and a "high" message still arrives
    // at the next sync if iOS defers it.
    "apns-priority": "5",
    // 0 is Apple's "deliver once, do not store"; any other value is an absolute unix time.
    "apns-expiration": String(ttlSeconds === 0 ? 0 : Math.floor(nowMs / 1000) + ttlSeconds),
    "content-type": "application/json",
  };
  if (message.call !== undefined) {
    // A call rings through PushKit: push type voip, at once (10), on the app's ".voip" topic.
    headers["apns-push-type"] = "voip";
    headers["apns-priority"] = "10";
    headers["apns-topic"] = target.topic.endsWith(".voip") ? target.topic : `${target.topic}.voip`;
  }
  if (message.collapseKey !== "") headers["apns-collapse-id"] = message.collapseKey;
  return headers;
}

/** https://developer.apple.com/documentation/usernotifications/handling-notification-responses-from-apns */
function classify(answer: Answer, nowMs: number): PushOutcome {
  if (answer.status === 200) return { status: "delivered" };
  const reason = reasonOf(answer);
  const text = `APNs ${answer.status} ${reason}`;
  if (answer.status === 410 || (answer.status === 400 && GONE_REASONS.has(reason))) {
    return { status: "gone", reason: text };
  }
  if (answer.status === 429 || answer.status >= 500) {
    const after = retryAfterMs(header(answer.headers, "retry-after"), nowMs);
    return after === undefined
      ? { status: "retry", reason: text }
      : { status: "retry", reason: text, retryAfterMs: after };
  }
  return { status: "failed", reason: text };
}

function reasonOf(answer: Answer): string {
  try {
    const parsed: unknown = JSON.parse(answer.body);
    if (
      typeof parsed === "object" &&
      parsed !== null &&
      "reason" in parsed &&
      typeof parsed.reason === "string"
    ) {
      return parsed.reason;
    }
  } catch {
    // Not JSON: fall through to the status alone.
  }
  return answer.body.trim() === "" ? "(no reason)" : answer.body.slice(0, 200);
}
