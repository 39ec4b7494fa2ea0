/**
 * Firebase Cloud Messaging, HTTP v1 API: OAuth2 service-account credentials and one content-free
 * data message per push. https://firebase.google.com/docs/reference/fcm/rest/v1/projects.messages
 */
import type { KeyObject } from "node:crypto";
import { constants } from "node:http2";
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
import { type IssuedToken, parsePrivateKey, TokenAuthorizedClient, TokenCache } from "./token-auth.js";

export const FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging";
export const DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token";
export const DEFAULT_FCM_ENDPOINT = "https://fcm.googleapis.com";

export interface FcmOptions {
  /** The Firebase project id (project_id in the service account JSON). */
  projectId: string;
  /** The service account's email (client_email); the JWT assertion's issuer. */
  clientEmail: string;
  /** The service account's RSA private key, PKCS#8 PEM (private_key in the JSON). */
  privateKey: string;
  /** private_key_id from the JSON; sent as the assertion's kid so Google picks the key directly. */
  privateKeyId?: string;
  /** Where access tokens come from; also the assertion's audience. */
  tokenUri?: string;
  /** FCM's origin; http:// origins speak HTTP/2 without TLS (test endpoints). */
  endpoint?: string;
  /** Per request (token request or send), including connecting. Default 10 s. */
  timeoutMs?: number;
  /** Milliseconds since the epoch; tests move it to expire access tokens. */
  now?: () => number;
}

/**
 * Reads the options from a service account key file's JSON. Overrides win (endpoint, timeoutMs,
 * or a different tokenUri for tests).
 */
export function fcmOptionsFromServiceAccount(json: string, overrides: Partial<FcmOptions> = {}): FcmOptions {
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch (e) {
    throw new Error(`FCM service account: not valid JSON (${e instanceof Error ? e.message : String(e)})`);
  }
  if (!isRecord(parsed)) throw new Error("FCM service account: expected a JSON object");
  if (parsed.type !== undefined && parsed.type !== "service_account") {
    throw new Error(
      `FCM service account: type is ${JSON.stringify(parsed.type)}, expected "service_account"`,
    );
  }
  const field = (name: string, required: boolean): string | undefined => {
    const value = parsed[name];
    if (value === undefined || value === null || value === "") {
      if (required) throw new Error(`FCM service account: missing ${name}`);
      return undefined;
    }
    if (typeof value !== "string") throw new Error(`FCM service account: ${name} must be a string`);
    return value;
  };
  const options: FcmOptions = {
    projectId: field("project_id", true)!,
    clientEmail: field("client_email", true)!,
    privateKey: field("private_key", true)!,
  };
  const privateKeyId = field("private_key_id", false);
  if (privateKeyId !== undefined) options.privateKeyId = privateKeyId;
  const tokenUri = field("token_uri", false);
  if (tokenUri !== undefined) options.tokenUri = tokenUri;
  return { ...options, ...overrides };
}

/** Largest ttl FCM accepts (4 weeks). */
const MAX_TTL_SECONDS = 2_419_200;
/** FCM asks for at least a minute before retrying a QUOTA_EXCEEDED without Retry-After. */
const QUOTA_RETRY_MS = 60_000;
/** A refused credential is not asked again at push rate: Google would see a flood of bad grants. */
const CREDENTIAL_FAILURE_HOLD_MS = 30_000;

export class FcmProvider implements PushProvider {
  readonly kind = "fcm" as const;
  private readonly key: KeyObject;
  private readonly tokenUri: string;
  private readonly origin: string;
  private readonly sendPath: string;
  private readonly timeoutMs: number;
  private readonly now: () => number;
  private readonly client: TokenAuthorizedClient;
  private refused: { outcome: PushOutcome; untilMs: number } | undefined;

  constructor(private readonly options: FcmOptions) {
    if (options.projectId === "") throw new Error("FCM: projectId is empty");
    if (options.clientEmail === "") throw new Error("FCM: clientEmail is empty");
    this.key = parsePrivateKey("FCM", options.privateKey);
    if (this.key.asymmetricKeyType !== "rsa") {
      throw new Error(`FCM: privateKey must be an RSA key (RS256), got ${this.key.asymmetricKeyType}`);
    }
    this.tokenUri = options.tokenUri ?? DEFAULT_TOKEN_URI;
    this.origin = new URL(options.endpoint ?? DEFAULT_FCM_ENDPOINT).origin;
    this.sendPath = `/v1/projects/${encodeURIComponent(options.projectId)}/messages:send`;
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.now = options.now ?? Date.now;
    this.client = new TokenAuthorizedClient({
      service: "FCM",
      tokens: new TokenCache(() => this.requestToken(), this.now),
      tokenFailure: outcomeOf,
      timeoutMs: this.timeoutMs,
    });
  }

  async send(target: PushTarget, message: PushMessage): Promise<PushOutcome> {
    if (target.kind !== "fcm")
      return { status: "failed", reason: `FCM cannot send to a ${target.kind} target` };
    if (this.client.closed) return { status: "retry", reason: "FCM provider closed" };
    const body = JSON.stringify(fcmMessage(target.token, message, this.now()));
    const answer = await this.client.post(
      this.origin,
      (token) => ({
        [constants.HTTP2_HEADER_METHOD]: "POST",
        [constants.HTTP2_HEADER_PATH]: this.sendPath,
        authorization: `Bearer ${token}`,
        "content-type": "application/json; charset=UTF-8",
      }),
      body,
      // A token can be revoked or expire early (clock skew); one fresh token tells that apart from
      // a credential that lacks permission, which fails again and is reported.
      needsFreshToken,
    );
    if (!isAnswer(answer)) return answer;
    return classify(answer, this.now());
  }

  async close(): Promise<void> {
    await this.client.close();
  }

  /**
   * One OAuth2 token request (the token cache shares it among waiting sends). A credential Google
   * refused is not asked again for CREDENTIAL_FAILURE_HOLD_MS.
   */
  private async requestToken(): Promise<IssuedToken> {
    if (this.refused !== undefined && this.now() < this.refused.untilMs) {
      throw new OutcomeError(this.refused.outcome);
    }
    const startedMs = this.now();
    const iat = Math.floor(startedMs / 1000);
    const header: { alg: "RS256"; typ: "JWT"; kid?: string } = { alg: "RS256", typ: "JWT" };
    if (this.options.privateKeyId !== undefined) header.kid = this.options.privateKeyId;
    const assertion = await new SignJWT({ scope: FCM_SCOPE })
      .setProtectedHeader(header)
      .setIssuer(this.options.clientEmail)
      .setAudience(this.tokenUri)
      .setIssuedAt(iat)
      .setExpirationTime(iat + 3600)
      .sign(this.key);

    let response: Response;
    let text: string;
    try {
      response = await fetch(this.tokenUri, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams({
          grant_type: "urn:ietf:params:oauth:grant-type:jwt-bearer",
          assertion,
        }).toString(),
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      text = await response.text();
    } catch (e) {
      throw new OutcomeError({ status: "retry", reason: `FCM token endpoint unreachable: ${errorText(e)}` });
    }

    if (!response.ok) {
      const detail = oauthError(text) ?? `HTTP ${response.status}`;
      if (response.status === 429 || response.status >= 500) {
        throw new OutcomeError(
          retry(
            `FCM token endpoint: ${detail}`,
            retryAfterMs(response.headers.get("retry-after"), this.now()),
          ),
        );
      }
      const outcome: PushOutcome = { status: "failed", reason: `FCM credentials refused: ${detail}` };
      this.refused = { outcome, untilMs: this.now() + CREDENTIAL_FAILURE_HOLD_MS };
      throw new OutcomeError(outcome);
    }

    const parsed = parseJson(text);
    const token = isRecord(parsed) ? parsed.access_token : undefined;
    if (typeof token !== "string" || token === "") {
      throw new OutcomeError({ status: "retry", reason: "FCM token endpoint answered without access_token" });
    }
    const expiresIn = isRecord(parsed) && typeof parsed.expires_in === "number" ? parsed.expires_in : 3600;
    const lifetimeMs = Math.max(0, expiresIn * 1000);
    // Refreshing early keeps a send from carrying a token that expires in flight; the lead is
    // capped at half the lifetime so short-lived tokens are still used.
    const leadMs = Math.min(5 * 60_000, lifetimeMs / 2);
    this.refused = undefined;
    return { value: token, refreshAtMs: startedMs + lifetimeMs - leadMs };
  }
}

/** The v1 message for one wake-up: data only, so FCM never shows anything on its own. */
export function fcmMessage(
  token: string,
  message: PushMessage,
  nowMs: number,
): { message: Record<string, unknown> } {
  const ttlSeconds = Math.min(MAX_TTL_SECONDS, Math.max(0, Math.floor(message.ttlSeconds)));
  const android: Record<string, unknown> = {
    priority: message.urgency === "high" ? "HIGH" : "NORMAL",
    ttl: `${ttlSeconds}s`,
  };
  const apnsHeaders: Record<string, string> = {
    // A content-available-only push is a background push, and APNs rejects priority 10 for those
    // whatever the urgency; iOS decides when to wake the app. (FCM cannot send APNs VoIP pushes:
    // an iOS app rung through FCM gets this background push, Android gets priority HIGH.)
    "apns-priority": "5",
    "apns-push-type": "background",
  };
  // FCM passes these headers through to APNs; without an expiration APNs would keep the wake-up
  // for FCM's default instead of our ttl.
  apnsHeaders["apns-expiration"] = String(ttlSeconds === 0 ? 0 : Math.floor(nowMs / 1000) + ttlSeconds);
  if (message.collapseKey !== "") {
    android.collapse_key = message.collapseKey;
    apnsHeaders["apns-collapse-id"] = message.collapseKey;
  }
  return {
    message: {
      token,
      data: contentFree(message),
      android,
      apns: { headers: apnsHeaders, payload: { aps: { "content-available": 1 } } },
    },
  };
}

function needsFreshToken(answer: Answer): boolean {
  if (answer.status !== 401 && answer.status !== 403) return false;
  const { errorCode } = googleError(answer.body);
  // These are about the target or the APNs credentials in the Firebase console, not our token.
  return errorCode !== "SENDER_ID_MISMATCH" && errorCode !== "THIRD_PARTY_AUTH_ERROR";
}

/** Maps an FCM answer to an outcome. https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode */
function classify(answer: Answer, nowMs: number): PushOutcome {
  if (answer.status === 200) return { status: "delivered" };
  const error = googleError(answer.body);
  const code = error.errorCode ?? error.status;
  const reason = `FCM ${answer.status}${code === undefined ? "" : ` ${code}`}: ${error.message ?? "no message"}`;
  const after = retryAfterMs(header(answer.headers, "retry-after"), nowMs);
  // Only FCM's own verdict on the token removes it: a bare 404 may be a wrong endpoint or project,
  // and dropping every target on a misconfiguration would be far worse than a failed push.
  if (error.errorCode === "UNREGISTERED" || error.errorCode === "SENDER_ID_MISMATCH") {
    return { status: "gone", reason };
  }
  if (answer.status === 429 || error.errorCode === "QUOTA_EXCEEDED") {
    return retry(reason, after ?? QUOTA_RETRY_MS);
  }
  if (answer.status >= 500 || error.errorCode === "UNAVAILABLE" || error.errorCode === "INTERNAL") {
    return retry(reason, after);
  }
  return { status: "failed", reason };
}

interface GoogleError {
  status?: string;
  message?: string;
  errorCode?: string;
}

/** Reads {"error": {code, message, status, details: [{"@type": ...FcmError, errorCode}]}}. */
function googleError(body: string): GoogleError {
  const parsed = parseJson(body);
  const error = isRecord(parsed) ? parsed.error : undefined;
  if (!isRecord(error)) return body.trim() === "" ? {} : { message: body.slice(0, 200) };
  const out: GoogleError = {};
  if (typeof error.status === "string") out.status = error.status;
  if (typeof error.message === "string") out.message = error.message;
  if (Array.isArray(error.details)) {
    for (const detail of error.details) {
      if (
        isRecord(detail) &&
        typeof detail["@type"] === "string" &&
        detail["@type"].endsWith("google.firebase.fcm.v1.FcmError") &&
        typeof detail.errorCode === "string"
      ) {
        out.errorCode = detail.errorCode;
      }
    }
  }
  return out;
}

/** RFC 6749 error body: {"error": "invalid_grant", "error_description": "..."}. */
function oauthError(body: string): string | undefined {
  const parsed = parseJson(body);
  if (!isRecord(parsed) || typeof parsed.error !== "string") return undefined;
  return typeof parsed.error_description === "string"
    ? `${parsed.error}: ${parsed.error_description}`
    : parsed.error;
}

class OutcomeError extends Error {
  constructor(readonly outcome: PushOutcome) {
    super(outcome.status === "delivered" ? "delivered" : outcome.reason);
  }
}

function outcomeOf(e: unknown): PushOutcome {
  if (e instanceof OutcomeError) return e.outcome;
  return { status: "failed", reason: `FCM: ${errorText(e)}` };
}

function retry(reason: string, afterMs: number | undefined): PushOutcome {
  return afterMs === undefined
    ? { status: "retry", reason }
    : { status: "retry", reason, retryAfterMs: afterMs };
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
