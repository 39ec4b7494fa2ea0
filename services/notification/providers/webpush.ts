import { createECDH } from "node:crypto";
import * as http from "node:http";
import * as https from "node:https";
import webpush from "web-push";
import {
  INTERNAL_ENDPOINT_CODE,
  isInternalAddress,
  publicOnlyLookup,
  type Resolver,
  systemResolver,
} from "../targets.js";
import {
  type PushMessage,
  type PushOutcome,
  type PushProvider,
  type PushTarget,
  retryAfterMs,
  type WebPushTarget,
} from "../types.js";
import { contentFree } from "./content-free.js";

/**
 * Web Push (RFC 8030 delivery, RFC 8291 aes128gcm encryption, RFC 8292 VAPID). The same protocol
 * reaches browsers, UnifiedPush distributors and ntfy, so one provider serves all of them.
 */
export interface WebPushOptions {
  /** The VAPID (application server) public key, base64url of the 65-byte P-256 point. */
  vapidPublicKey: string;
  /** The VAPID private key, base64url of 32 bytes, as generateVapidKeys() returns it. */
  vapidPrivateKey: string;
  /** Who push services contact about this server: "mailto:..." or an https URL. */
  subject: string;
  /** How long one push may take, answer included, in milliseconds (default 10,000). */
  timeoutMs?: number;
  /**
   * Send to endpoints on loopback, private and link-local addresses (tests, a private push service
   * on a trusted network). Off by default: a device chooses its endpoint, and must not make the
   * server call into its own network (SSRF).
   */
  allowPrivateEndpoints?: boolean;
  /** Resolves endpoint host names at send time; the system resolver by default. */
  resolve?: Resolver;
}

/** What came back from a push service. */
interface Answer {
  status: number;
  retryAfter: string | null;
  body: string;
}

/** A VAPID key pair, base64url; generate once and keep: subscriptions are bound to the public key. */
export function generateVapidKeys(): { publicKey: string; privateKey: string } {
  const { publicKey, privateKey } = webpush.generateVAPIDKeys();
  return { publicKey, privateKey };
}

const DEFAULT_TIMEOUT_MS = 10_000;
// Push services answer with short status texts; more than this is not worth holding in memory
// for an endpoint that a device, not the operator, chose.
const MAX_ANSWER_BYTES = 4096;
const REASON_BODY_CHARS = 200;

/** The bytes a base64url string (padding allowed) encodes, or undefined when it is not base64url. */
function base64url(value: string): Buffer | undefined {
  return /^[A-Za-z0-9_-]*={0,2}$/.test(value) ? Buffer.from(value, "base64url") : undefined;
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function checkOptions(options: WebPushOptions): void {
  let subject: URL;
  try {
    subject = new URL(options.subject);
  } catch {
    throw new Error(`WebPush subject: not a URL (want "mailto:you@example.com" or an https URL)`);
  }
  if (subject.protocol === "mailto:") {
    if (!subject.pathname.includes("@"))
      throw new Error("WebPush subject: a mailto: subject needs an address");
  } else if (subject.protocol === "https:") {
    // Apple's push service rejects these (BadJwtToken), and web-push would warn on every push.
    if (subject.hostname === "localhost")
      throw new Error("WebPush subject: an https subject cannot be localhost");
  } else {
    throw new Error(`WebPush subject: must be mailto: or https:, not ${subject.protocol}`);
  }

  const publicKey = base64url(options.vapidPublicKey);
  if (publicKey === undefined || publicKey.length !== 65 || publicKey[0] !== 4) {
    throw new Error("WebPush vapidPublicKey: must be base64url of a 65-byte uncompressed P-256 point");
  }
  const privateKey = base64url(options.vapidPrivateKey);
  if (privateKey === undefined || privateKey.length !== 32) {
    throw new Error("WebPush vapidPrivateKey: must be base64url of 32 bytes");
  }
  // A mismatched pair signs JWTs that every push service rejects with 401/403: fail at start instead.
  let derived: Buffer;
  try {
    const ecdh = createECDH("prime256v1");
    ecdh.setPrivateKey(privateKey);
    derived = ecdh.getPublicKey();
  } catch (err) {
    throw new Error(`WebPush vapidPrivateKey: not a P-256 private key (${message(err)})`);
  }
  if (!derived.equals(publicKey)) {
    throw new Error("WebPush vapidPublicKey: is not the public key of vapidPrivateKey");
  }

  const timeoutMs = options.timeoutMs;
  if (timeoutMs !== undefined && !(Number.isFinite(timeoutMs) && timeoutMs > 0)) {
    throw new Error("WebPush timeoutMs: must be a positive number of milliseconds");
  }
}

/** Why this target cannot be pushed to, or undefined when it looks sendable. */
function targetProblem(target: WebPushTarget): string | undefined {
  let url: URL;
  try {
    url = new URL(target.endpoint);
  } catch {
    return "endpoint is not a URL";
  }
  // http only reaches here where registration allowed it (tests, a trusted private push service).
  if (url.protocol !== "https:" && url.protocol !== "http:") {
    return `endpoint must be https, not ${url.protocol}`;
  }
  const p256dh = base64url(target.p256dh);
  if (p256dh === undefined || p256dh.length !== 65 || p256dh[0] !== 4) {
    return "p256dh must be base64url of a 65-byte uncompressed P-256 point";
  }
  const auth = base64url(target.auth);
  if (auth === undefined || auth.length !== 16) return "auth must be base64url of 16 bytes";
  return undefined;
}

function messageProblem(msg: PushMessage): string | undefined {
  // RFC 8030 §5.4: a Topic is at most 32 characters of the base64url alphabet.
  if (!/^[A-Za-z0-9_-]{1,32}$/.test(msg.collapseKey)) {
    return "collapseKey must be 1 to 32 characters of [A-Za-z0-9_-]";
  }
  if (!Number.isFinite(msg.ttlSeconds) || msg.ttlSeconds < 0) return "ttlSeconds must be 0 or more";
  return undefined;
}

/**
 * POSTs one push and reads the start of the answer (up to MAX_ANSWER_BYTES). With a lookup, the
 * connection goes to the address that lookup checked; redirects are answers, never followed.
 */
function post(
  url: URL,
  headers: Record<string, string>,
  body: Buffer,
  signal: AbortSignal,
  lookup: ReturnType<typeof publicOnlyLookup>,
): Promise<Answer> {
  return new Promise<Answer>((resolve, reject) => {
    const request = (url.protocol === "https:" ? https : http).request(url, {
      method: "POST",
      headers: { ...headers, "content-length": String(body.length) },
      signal,
      lookup,
    });
    request.once("error", reject);
    request.once("response", (response) => {
      const chunks: Buffer[] = [];
      let size = 0;
      const done = () => {
        response.destroy();
        resolve({
          status: response.statusCode ?? 0,
          retryAfter: [response.headers["retry-after"]].flat()[0] ?? null,
          body: Buffer.concat(chunks).toString("utf8"),
        });
      };
      response.on("data", (chunk: Buffer) => {
        chunks.push(chunk);
        size += chunk.length;
        if (size >= MAX_ANSWER_BYTES) done();
      });
      response.once("end", done);
      response.once("error", reject);
    });
    request.end(body);
  });
}

function described(status: number, body: string): string {
  const text = body.trim().slice(0, REASON_BODY_CHARS);
  return text === "" ? `push service answered ${status}` : `push service answered ${status}: ${text}`;
}

function outcomeFor(status: number, body: string, retryAfter: string | null): PushOutcome {
  if (status >= 200 && status < 300) return { status: "delivered" };
  if (status === 404 || status === 410) return { status: "gone", reason: described(status, body) };
  if (status === 429 || status === 408 || status >= 500) {
    const after = retryAfterMs(retryAfter);
    const reason = described(status, body);
    return after === undefined
      ? { status: "retry", reason }
      : { status: "retry", reason, retryAfterMs: after };
  }
  // 400/401/403/413, redirects (a push endpoint does not move) and other 4xx: sending the same
  // push again would be answered the same way.
  return { status: "failed", reason: described(status, body) };
}

function networkReason(err: unknown, timeoutMs: number, signal: AbortSignal): string {
  if (err instanceof Error) {
    if (signal.aborted) {
      const reason: unknown = signal.reason;
      return reason instanceof Error && reason.name === "TimeoutError"
        ? `no answer within ${timeoutMs} ms`
        : "provider closed";
    }
    if (err.name === "TimeoutError") return `no answer within ${timeoutMs} ms`;
    if (err.name === "AbortError") return "provider closed";
    // fetch reports every network failure as "fetch failed"; the cause says which.
    const cause: unknown = err.cause;
    if (cause instanceof Error) {
      const code = (cause as NodeJS.ErrnoException).code;
      return `network: ${code === undefined ? cause.message : `${code} ${cause.message}`}`;
    }
    return `network: ${err.message}`;
  }
  return `network: ${String(err)}`;
}

export class WebPushProvider implements PushProvider {
  readonly kind = "webpush" as const;
  private readonly vapid: { subject: string; publicKey: string; privateKey: string };
  private readonly timeoutMs: number;
  private readonly closing = new AbortController();
  /** Resolves endpoints for the connection, refusing internal addresses unless allowPrivate. */
  private readonly lookup: ReturnType<typeof publicOnlyLookup>;
  private readonly allowPrivate: boolean;
  /** Pushes refused because the endpoint is (or resolves to) an internal address. */
  refusedEndpoints = 0;

  constructor(options: WebPushOptions) {
    checkOptions(options);
    // web-push accepts only unpadded base64url keys.
    this.vapid = {
      subject: options.subject,
      publicKey: options.vapidPublicKey.replace(/=+$/, ""),
      privateKey: options.vapidPrivateKey.replace(/=+$/, ""),
    };
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.allowPrivate = options.allowPrivateEndpoints === true;
    this.lookup = publicOnlyLookup(options.resolve ?? systemResolver, this.allowPrivate);
  }

  /** The refusal of an endpoint on an internal address: failed, not retried (it would fail again). */
  private refuseEndpoint(reason: string): PushOutcome {
    this.refusedEndpoints++;
    return { status: "failed", reason: `endpoint refused: ${reason}` };
  }

  async send(target: PushTarget, msg: PushMessage): Promise<PushOutcome> {
    if (target.kind !== "webpush") {
      return { status: "failed", reason: `the webpush provider cannot send to a ${target.kind} target` };
    }
    const problem = targetProblem(target) ?? messageProblem(msg);
    if (problem !== undefined) return { status: "failed", reason: problem };
    if (this.closing.signal.aborted) return { status: "retry", reason: "provider closed" };

    let request: webpush.RequestDetails;
    try {
      // Content-free: the device learns only where to sync from; the message itself stays in the log.
      const payload = JSON.stringify(contentFree(msg));
      request = webpush.generateRequestDetails(
        { endpoint: target.endpoint, keys: { p256dh: target.p256dh, auth: target.auth } },
        payload,
        {
          // Passed on every call so that web-push's process-wide setVapidDetails() never applies.
          vapidDetails: this.vapid,
          contentEncoding: "aes128gcm",
          TTL: Math.floor(msg.ttlSeconds),
          urgency: msg.urgency,
          topic: msg.collapseKey,
        },
      );
    } catch (err) {
      // The checks above leave little to fail here: a p256dh that is not a point on the curve.
      return { status: "failed", reason: `push could not be encrypted: ${message(err)}` };
    }

    const headers: Record<string, string> = {};
    for (const [name, value] of Object.entries(request.headers)) {
      // fetch sets Content-Length from the body itself.
      if (name.toLowerCase() !== "content-length") headers[name] = String(value);
    }

    // The endpoint is the device's choice: an address literal is checked here, a name by the
    // connection's own lookup (at send time, so a name re-pointed after registration is caught).
    const url = new URL(request.endpoint);
    const literal = url.hostname.replace(/^\[|\]$/g, "");
    if (!this.allowPrivate && isInternalAddress(literal)) {
      return this.refuseEndpoint(`${literal} is a loopback, private or link-local address`);
    }
    // web-push's own sender speaks https only; this also reaches http endpoints (tests, private
    // push services) and bounds the whole exchange, answer included, with one signal. A redirect
    // would carry a VAPID token whose audience is the old origin; it is an answer, not followed.
    const signal = AbortSignal.any([AbortSignal.timeout(this.timeoutMs), this.closing.signal]);
    try {
      const body = request.body === null ? Buffer.alloc(0) : Buffer.from(request.body);
      const answer = await post(url, headers, body, signal, this.lookup);
      return outcomeFor(answer.status, answer.body, answer.retryAfter);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === INTERNAL_ENDPOINT_CODE) {
        return this.refuseEndpoint((err as Error).message);
      }
      return { status: "retry", reason: networkReason(err, this.timeoutMs, signal) };
    }
  }

  /** Aborts pushes in flight (they come back as retry); fetch's shared connection pool stays. */
  async close(): Promise<void> {
    this.closing.abort();
  }
}
