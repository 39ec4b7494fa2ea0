import { createECDH, type ECDH, randomBytes, randomUUID } from "node:crypto";
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import ece from "http_ece";
import { importJWK, jwtVerify } from "jose";
import type { WebPushTarget } from "../../../services/notification/types.js";

/**
 * A local Web Push service for tests: it checks each push the way a real one does (RFC 8030
 * headers, RFC 8292 VAPID), then decrypts it (RFC 8291) the way the subscribed browser would,
 * so a test sees exactly what reached the device.
 */

/** The claims of a push's VAPID JWT, already verified. */
export interface VapidClaims {
  aud: string;
  exp: number;
  sub: string;
  [claim: string]: unknown;
}

/** A push the service accepted. */
export interface ReceivedPush {
  /** The subscription id (the last path segment of its endpoint). */
  id: string;
  headers: IncomingHttpHeaders;
  claims: VapidClaims;
  /** The VAPID public key (the Authorization header's k), base64url. */
  vapidKey: string;
  /** The decrypted body, parsed as JSON. */
  payload: unknown;
  topic: string | undefined;
  /** The Urgency header, "normal" when absent (RFC 8030 §5.3). */
  urgency: string;
  ttl: number;
}

/** One request and how the service answered it, accepted or not. */
export interface PushRequestRecord {
  id: string;
  status: number;
  /** Why the service refused the request itself; undefined when accepted or scripted. */
  rejected: string | undefined;
}

/** An answer a test wants the service to give instead of accepting a valid push. */
export interface ScriptedAnswer {
  status: number;
  headers?: Record<string, string>;
  body?: string;
  /** Holds the answer this long, to exercise the sender's timeout. */
  delayMs?: number;
}

export interface SubscribeOptions {
  /**
   * The VAPID public key the subscription is bound to (PushManager.subscribe's
   * applicationServerKey); pushes signed with another key are refused with 403, as FCM does.
   */
  applicationServerKey?: string;
}

export interface FakeSubscription {
  id: string;
  /** What the device would register with the server. */
  target: WebPushTarget;
}

export interface FakeWebPushService {
  /** http://127.0.0.1:<port>: the VAPID audience every push must name. */
  readonly origin: string;
  /** Pushes accepted, in arrival order. */
  readonly pushes: readonly ReceivedPush[];
  /** Every request under /push/, in arrival order, with its answer. */
  readonly requests: readonly PushRequestRecord[];
  /** A new subscription, with keys made as a browser makes them. */
  subscribe(options?: SubscribeOptions): FakeSubscription;
  /** Later pushes to this subscription are answered 410 Gone. */
  unsubscribe(id: string): void;
  /**
   * Queues answers for the next valid pushes, one each, in order; an answer outside 2xx means the
   * push is not recorded. Pushes that fail the service's own checks do not use up an answer.
   */
  script(...answers: ScriptedAnswer[]): void;
  /** The first push (received already or later) that matches; rejects after timeoutMs. */
  waitForPush(match?: (push: ReceivedPush) => boolean, timeoutMs?: number): Promise<ReceivedPush>;
  close(): Promise<void>;
}

interface Subscription {
  ecdh: ECDH;
  auth: Buffer;
  applicationServerKey: string | undefined;
  active: boolean;
}

/** RFC 8030 §7.2: push services must accept at least 4096 bytes of encrypted payload. */
const MAX_PAYLOAD_BYTES = 4096;
const MAX_VAPID_LIFETIME_S = 24 * 60 * 60;
const URGENCIES = new Set(["very-low", "low", "normal", "high"]);

class Refusal extends Error {
  constructor(
    readonly status: number,
    reason: string,
  ) {
    super(reason);
  }
}

function bytes(value: string): Buffer | undefined {
  return /^[A-Za-z0-9_-]+={0,2}$/.test(value) ? Buffer.from(value, "base64url") : undefined;
}

function header(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/** `vapid t=<jwt>, k=<key>` (RFC 8292 §3), parameters in any order. */
function parseVapid(authorization: string | undefined): { t: string; k: string } {
  const match = /^vapid\s+(.*)$/i.exec(authorization ?? "");
  if (match === null) throw new Refusal(401, "Authorization: vapid scheme required");
  const params = new Map<string, string>();
  for (const part of (match[1] ?? "").split(",")) {
    const at = part.indexOf("=");
    if (at > 0) params.set(part.slice(0, at).trim().toLowerCase(), part.slice(at + 1).trim());
  }
  const t = params.get("t");
  const k = params.get("k");
  if (t === undefined || k === undefined) throw new Refusal(401, "Authorization: t and k required");
  return { t, k };
}

async function verifyVapid(t: string, k: string, audience: string): Promise<VapidClaims> {
  const point = bytes(k);
  if (point === undefined || point.length !== 65 || point[0] !== 4) {
    throw new Refusal(401, "VAPID k: not an uncompressed P-256 point");
  }
  let claims: Record<string, unknown>;
  try {
    const key = await importJWK(
      {
        kty: "EC",
        crv: "P-256",
        x: point.subarray(1, 33).toString("base64url"),
        y: point.subarray(33).toString("base64url"),
      },
      "ES256",
    );
    ({ payload: claims } = await jwtVerify(t, key, {
      algorithms: ["ES256"],
      audience,
      requiredClaims: ["exp", "sub"],
    }));
  } catch (err) {
    throw new Refusal(401, `VAPID JWT: ${err instanceof Error ? err.message : String(err)}`);
  }
  const { aud, exp, sub } = claims;
  if (typeof exp !== "number" || exp > Date.now() / 1000 + MAX_VAPID_LIFETIME_S) {
    throw new Refusal(401, "VAPID JWT: exp more than 24 hours ahead");
  }
  if (typeof sub !== "string" || !/^(mailto:|https:)/.test(sub)) {
    throw new Refusal(401, "VAPID JWT: sub must be a mailto: or https: URL");
  }
  return { ...claims, aud: String(aud), exp, sub };
}

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => resolve(Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

/** Starts the service on 127.0.0.1, on a free port. */
export async function startWebPushService(): Promise<FakeWebPushService> {
  const subscriptions = new Map<string, Subscription>();
  const pushes: ReceivedPush[] = [];
  const requests: PushRequestRecord[] = [];
  const scripted: ScriptedAnswer[] = [];
  const waiters = new Set<() => void>();
  const timers = new Set<NodeJS.Timeout>();
  let origin = "";

  async function accept(id: string, req: IncomingMessage): Promise<ReceivedPush> {
    const subscription = subscriptions.get(id);
    if (subscription === undefined) throw new Refusal(404, "no such subscription");
    if (!subscription.active) throw new Refusal(410, "subscription expired");

    if (header(req, "content-encoding") !== "aes128gcm") {
      throw new Refusal(400, "Content-Encoding: aes128gcm required");
    }
    const ttlHeader = header(req, "ttl");
    if (ttlHeader === undefined || !/^\d+$/.test(ttlHeader)) {
      throw new Refusal(400, "TTL: required, a number of seconds");
    }
    const urgency = header(req, "urgency") ?? "normal";
    if (!URGENCIES.has(urgency)) throw new Refusal(400, `Urgency: unknown value ${urgency}`);
    const topic = header(req, "topic");
    if (topic !== undefined && !/^[A-Za-z0-9_-]{1,32}$/.test(topic)) {
      throw new Refusal(400, "Topic: at most 32 base64url characters");
    }

    const { t, k } = parseVapid(header(req, "authorization"));
    const claims = await verifyVapid(t, k, origin);
    if (subscription.applicationServerKey !== undefined && k !== subscription.applicationServerKey) {
      throw new Refusal(403, "VAPID key is not the one this subscription was created with");
    }

    const body = await readBody(req);
    if (body.length > MAX_PAYLOAD_BYTES) throw new Refusal(413, "payload too large");
    let payload: unknown;
    try {
      const plain = ece.decrypt(body, {
        version: "aes128gcm",
        privateKey: subscription.ecdh,
        authSecret: subscription.auth,
      });
      payload = JSON.parse(plain.toString("utf8"));
    } catch (err) {
      // A real push service would pass this on and the browser would drop it; refusing makes the
      // failure visible to the test instead.
      throw new Refusal(400, `payload: ${err instanceof Error ? err.message : String(err)}`);
    }
    return { id, headers: req.headers, claims, vapidKey: k, payload, topic, urgency, ttl: Number(ttlHeader) };
  }

  function answer(res: ServerResponse, status: number, headers: Record<string, string>, body: string): void {
    res.writeHead(status, { "content-type": "text/plain", ...headers });
    res.end(body);
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const match = /^\/push\/([A-Za-z0-9_-]+)$/.exec(req.url ?? "");
    if (req.method !== "POST" || match === null) {
      req.resume();
      answer(res, 404, {}, "not found");
      return;
    }
    const id = match[1] ?? "";
    let push: ReceivedPush;
    try {
      push = await accept(id, req);
    } catch (err) {
      req.resume();
      const refusal = err instanceof Refusal ? err : new Refusal(500, String(err));
      requests.push({ id, status: refusal.status, rejected: refusal.message });
      answer(res, refusal.status, {}, refusal.message);
      return;
    }

    const scriptedAnswer = scripted.shift();
    if (scriptedAnswer === undefined) {
      record(push, 201);
      answer(res, 201, { location: `/message/${randomUUID()}`, ttl: String(push.ttl) }, "");
      return;
    }
    const respond = (): void => {
      if (scriptedAnswer.status >= 200 && scriptedAnswer.status < 300) record(push, scriptedAnswer.status);
      else requests.push({ id, status: scriptedAnswer.status, rejected: undefined });
      answer(res, scriptedAnswer.status, scriptedAnswer.headers ?? {}, scriptedAnswer.body ?? "");
    };
    if (scriptedAnswer.delayMs === undefined) {
      respond();
    } else {
      const timer = setTimeout(() => {
        timers.delete(timer);
        if (!res.destroyed) respond();
      }, scriptedAnswer.delayMs);
      timers.add(timer);
    }
  }

  function record(push: ReceivedPush, status: number): void {
    pushes.push(push);
    requests.push({ id: push.id, status, rejected: undefined });
    for (const wake of [...waiters]) wake();
  }

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) answer(res, 500, {}, String(err));
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  return {
    origin,
    pushes,
    requests,

    subscribe(options: SubscribeOptions = {}): FakeSubscription {
      const id = randomUUID();
      const ecdh = createECDH("prime256v1");
      ecdh.generateKeys();
      const auth = randomBytes(16);
      subscriptions.set(id, {
        ecdh,
        auth,
        applicationServerKey: options.applicationServerKey?.replace(/=+$/, ""),
        active: true,
      });
      return {
        id,
        target: {
          kind: "webpush",
          endpoint: `${origin}/push/${id}`,
          p256dh: ecdh.getPublicKey().toString("base64url"),
          auth: auth.toString("base64url"),
        },
      };
    },

    unsubscribe(id: string): void {
      const subscription = subscriptions.get(id);
      if (subscription !== undefined) subscription.active = false;
    },

    script(...answers: ScriptedAnswer[]): void {
      scripted.push(...answers);
    },

    waitForPush(match = () => true, timeoutMs = 5000): Promise<ReceivedPush> {
      return new Promise((resolve, reject) => {
        const check = (): boolean => {
          const found = pushes.find(match);
          if (found === undefined) return false;
          waiters.delete(check);
          clearTimeout(timer);
          resolve(found);
          return true;
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`no matching push within ${timeoutMs} ms (${pushes.length} received)`));
        }, timeoutMs);
        waiters.add(check);
        check();
      });
    },

    async close(): Promise<void> {
      for (const timer of timers) clearTimeout(timer);
      timers.clear();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Keep-alive connections from fetch would otherwise hold close() open for seconds.
        server.closeAllConnections();
      });
    },
  };
}
