/**
 * A local stand-in for Google's OAuth2 token endpoint and FCM's HTTP v1 messages:send, checking
 * each request the way the real services document and answering like them. Tests script the next
 * answers and read what was sent. Beyond Google's own checks it enforces Switchboard's contract:
 * pushes are content-free data messages carrying c (conversation id) and s (seq).
 */
import { createPublicKey, type KeyObject, randomBytes } from "node:crypto";
import { createServer as createHttp1Server, type Server as Http1Server } from "node:http";
import {
  constants,
  createServer,
  type Http2Server,
  type Http2Session,
  type IncomingHttpHeaders,
  type ServerHttp2Stream,
} from "node:http2";
import type { AddressInfo } from "node:net";
import { errors, type JWTHeaderParameters, type JWTPayload, jwtVerify } from "jose";

export const FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging";
const JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer";

export interface FakeFcmServiceOptions {
  projectId: string;
  clientEmail: string;
  /** The service account's public key: assertions must verify with it. */
  publicKey: KeyObject | string;
  /** When set, an assertion's kid header (optional for Google) must equal it. */
  privateKeyId?: string;
  /** expires_in of issued access tokens; Google's is 3599. */
  tokenLifetimeSeconds?: number;
  /** Milliseconds since the epoch; share it with the provider to expire tokens without waiting. */
  now?: () => number;
}

/** An answer a test queues for the next valid request. */
export interface ScriptedAnswer {
  status: number;
  headers?: Record<string, string>;
  /** JSON-encoded unless a string. */
  body?: unknown;
  /** Never answers (until the service closes): for timeouts. */
  hang?: boolean;
}

export interface FcmTokenRequest {
  method: string;
  contentType: string | undefined;
  form: Record<string, string>;
  header?: JWTHeaderParameters;
  claims?: JWTPayload;
  /** What did not match the documented format; empty for a good request. */
  problems: string[];
  status: number;
  /** The access token handed out, if any. */
  issued?: string;
}

export interface FcmSendRequest {
  method: string;
  path: string;
  headers: IncomingHttpHeaders;
  rawBody: string;
  body: unknown;
  accessToken?: string;
  /** Which HTTP/2 connection carried it (1, 2, ...): tests check reuse and reconnects. */
  session: number;
  problems: string[];
  status: number;
}

/** An FCM v1 error answer, e.g. fcmError(404, "NOT_FOUND", "UNREGISTERED"). */
export function fcmError(
  httpStatus: number,
  status: string,
  errorCode?: string,
  message = "scripted error",
  headers?: Record<string, string>,
): ScriptedAnswer {
  const details =
    errorCode === undefined
      ? []
      : [{ "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", errorCode }];
  return {
    status: httpStatus,
    body: { error: { code: httpStatus, message, status, details } },
    ...(headers !== undefined && { headers }),
  };
}

export class FakeFcmService {
  /** FCM's origin, h2c: http://127.0.0.1:port. */
  readonly origin: string;
  /** The OAuth2 token endpoint (HTTP/1.1, like fetch speaks). */
  readonly tokenUri: string;
  readonly tokenRequests: FcmTokenRequest[] = [];
  readonly sendRequests: FcmSendRequest[] = [];
  private readonly sendScript: ScriptedAnswer[] = [];
  private readonly tokenScript: ScriptedAnswer[] = [];
  private readonly issued = new Map<string, number>();
  private readonly sessions = new Set<Http2Session>();
  private readonly hanging = new Set<ServerHttp2Stream>();
  private readonly sessionIds = new WeakMap<Http2Session, number>();
  private sessionCount = 0;
  private readonly now: () => number;

  private constructor(
    private readonly options: FakeFcmServiceOptions,
    private readonly publicKey: KeyObject,
    private readonly h2: Http2Server,
    private readonly oauth: Http1Server,
  ) {
    this.now = options.now ?? Date.now;
    this.origin = `http://127.0.0.1:${(h2.address() as AddressInfo).port}`;
    this.tokenUri = `http://127.0.0.1:${(oauth.address() as AddressInfo).port}/token`;
  }

  static async start(options: FakeFcmServiceOptions): Promise<FakeFcmService> {
    const publicKey = toPublicKey(options.publicKey);
    const h2 = createServer();
    const oauth = createHttp1Server();
    await Promise.all([listen(h2), listen(oauth)]);
    const service = new FakeFcmService(options, publicKey, h2, oauth);
    h2.on("session", (session) => service.track(session));
    h2.on("stream", (stream, headers) => service.onSend(stream, headers));
    oauth.on("request", (req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        void service
          .onToken(req.method ?? "", req.url ?? "", req.headers["content-type"], Buffer.concat(chunks))
          .then((answer) => {
            if (answer.hang === true) return;
            res.writeHead(answer.status, {
              "content-type": "application/json; charset=utf-8",
              ...answer.headers,
            });
            res.end(encode(answer.body));
          });
      });
    });
    return service;
  }

  /** Queues answers for the next valid messages:send requests (invalid ones get Google's error). */
  answerSend(...answers: ScriptedAnswer[]): void {
    this.sendScript.push(...answers);
  }

  /** Queues answers for the next valid token requests. */
  answerToken(...answers: ScriptedAnswer[]): void {
    this.tokenScript.push(...answers);
  }

  /** Every issued access token stops working, as when a key is rotated. */
  revokeAccessTokens(): void {
    this.issued.clear();
  }

  /** Sends GOAWAY on every open connection, as Google's front ends do when they drain. */
  closeConnections(): void {
    for (const session of this.sessions) session.close();
  }

  /** Connections still open (a closing one counts until the client has let go of it too). */
  openConnections(): number {
    return this.sessions.size;
  }

  /** Every problem found in any request so far, prefixed with where it was. */
  problems(): string[] {
    return [
      ...this.tokenRequests.flatMap((r, i) => r.problems.map((p) => `token request ${i}: ${p}`)),
      ...this.sendRequests.flatMap((r, i) => r.problems.map((p) => `send ${i}: ${p}`)),
    ];
  }

  async close(): Promise<void> {
    for (const stream of this.hanging) stream.close(constants.NGHTTP2_CANCEL);
    for (const session of this.sessions) session.destroy();
    this.oauth.closeAllConnections();
    await Promise.all([
      new Promise<void>((resolve) => this.h2.close(() => resolve())),
      new Promise<void>((resolve) => this.oauth.close(() => resolve())),
    ]);
  }

  private track(session: Http2Session): void {
    this.sessionIds.set(session, ++this.sessionCount);
    this.sessions.add(session);
    session.on("close", () => this.sessions.delete(session));
    session.on("error", () => {});
  }

  // --- OAuth2 token endpoint (https://developers.google.com/identity/protocols/oauth2/service-account#httprest)

  private async onToken(
    method: string,
    url: string,
    contentType: string | undefined,
    raw: Buffer,
  ): Promise<ScriptedAnswer> {
    const form = Object.fromEntries(new URLSearchParams(raw.toString("utf8")));
    const record: FcmTokenRequest = { method, contentType, form, problems: [], status: 0 };
    this.tokenRequests.push(record);
    const answer = await this.checkToken(record, url);
    record.status = answer.status;
    return answer;
  }

  private async checkToken(record: FcmTokenRequest, url: string): Promise<ScriptedAnswer> {
    const refuse = (problem: string, error: string, description: string, status = 400): ScriptedAnswer => {
      record.problems.push(problem);
      return { status, body: { error, error_description: description } };
    };
    if (record.method !== "POST")
      return refuse(`method ${record.method}`, "invalid_request", "POST required", 405);
    if (new URL(url, "http://x").pathname !== "/token") return refuse(`path ${url}`, "not_found", "", 404);
    if (!record.contentType?.startsWith("application/x-www-form-urlencoded")) {
      return refuse(`content-type ${record.contentType}`, "invalid_request", "form body expected");
    }
    if (record.form.grant_type !== JWT_BEARER) {
      return refuse(`grant_type ${record.form.grant_type}`, "unsupported_grant_type", "Invalid grant_type");
    }
    const assertion = record.form.assertion;
    if (assertion === undefined)
      return refuse("no assertion", "invalid_request", "Missing required parameter: assertion");

    const nowMs = this.now();
    try {
      const verified = await jwtVerify(assertion, this.publicKey, {
        algorithms: ["RS256"],
        currentDate: new Date(nowMs),
      });
      record.header = verified.protectedHeader;
      record.claims = verified.payload;
    } catch (e) {
      if (e instanceof errors.JWTExpired) {
        return refuse("assertion expired", "invalid_grant", "Invalid JWT: Token must be a short-lived token");
      }
      if (e instanceof errors.JWSSignatureVerificationFailed) {
        return refuse("assertion signature does not verify", "invalid_grant", "Invalid JWT Signature.");
      }
      return refuse(`assertion: ${(e as Error).message}`, "invalid_grant", "Invalid JWT");
    }
    const { header, claims } = record;
    if (header.typ !== undefined && header.typ !== "JWT") record.problems.push(`typ ${header.typ}`);
    if (
      this.options.privateKeyId !== undefined &&
      header.kid !== undefined &&
      header.kid !== this.options.privateKeyId
    ) {
      return refuse(`kid ${header.kid}`, "invalid_grant", "Invalid JWT Signature.");
    }
    if (claims.iss !== this.options.clientEmail) {
      return refuse(`iss ${String(claims.iss)}`, "invalid_grant", "Invalid grant: account not found");
    }
    if (claims.aud !== this.tokenUri) {
      return refuse(
        `aud ${JSON.stringify(claims.aud)}`,
        "invalid_grant",
        "Invalid JWT: Failed audience check.",
      );
    }
    const scopes = typeof claims.scope === "string" ? claims.scope.split(" ") : [];
    if (!scopes.includes(FCM_SCOPE)) {
      return refuse(
        `scope ${String(claims.scope)}`,
        "invalid_scope",
        "Invalid OAuth scope or ID token audience provided.",
      );
    }
    const nowSeconds = nowMs / 1000;
    if (typeof claims.iat !== "number" || typeof claims.exp !== "number") {
      return refuse("iat or exp missing", "invalid_grant", "Invalid JWT: iat and exp are required");
    }
    // Google allows a little clock skew but no more than an hour of validity.
    if (claims.exp - claims.iat > 3600 || claims.iat > nowSeconds + 60 || claims.exp <= claims.iat) {
      return refuse(
        `iat ${claims.iat} exp ${claims.exp} now ${Math.floor(nowSeconds)}`,
        "invalid_grant",
        "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.",
      );
    }

    const scripted = this.tokenScript.shift();
    if (scripted !== undefined) return scripted;
    const lifetime = this.options.tokenLifetimeSeconds ?? 3599;
    const token = `ya29.fake-${randomBytes(12).toString("base64url")}`;
    this.issued.set(token, nowMs + lifetime * 1000);
    record.issued = token;
    return { status: 200, body: { access_token: token, expires_in: lifetime, token_type: "Bearer" } };
  }

  // --- messages:send (https://firebase.google.com/docs/reference/fcm/rest/v1/projects.messages/send)

  private onSend(stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void {
    const chunks: Buffer[] = [];
    const session = this.sessionIds.get(stream.session as Http2Session) ?? 0;
    stream.on("data", (c: Buffer) => chunks.push(c));
    stream.on("error", () => {});
    stream.on("end", () => {
      const rawBody = Buffer.concat(chunks).toString("utf8");
      const record: FcmSendRequest = {
        method: String(headers[constants.HTTP2_HEADER_METHOD]),
        path: String(headers[constants.HTTP2_HEADER_PATH]),
        headers,
        rawBody,
        body: undefined,
        session,
        problems: [],
        status: 0,
      };
      this.sendRequests.push(record);
      const answer = this.checkSend(record);
      record.status = answer.status;
      if (answer.hang === true) {
        this.hanging.add(stream);
        stream.on("close", () => this.hanging.delete(stream));
        return;
      }
      if (stream.destroyed) return;
      stream.respond({
        [constants.HTTP2_HEADER_STATUS]: answer.status,
        "content-type": "application/json; charset=UTF-8",
        ...answer.headers,
      });
      stream.end(encode(answer.body));
    });
  }

  private checkSend(record: FcmSendRequest): ScriptedAnswer {
    const reject = (status: number, code: string, problem: string, message = problem): ScriptedAnswer => {
      record.problems.push(problem);
      return { status, body: { error: { code: status, message, status: code } } };
    };
    const match = /^\/v1\/projects\/([^/]+)\/messages:send$/.exec(record.path);
    if (match === null) return reject(404, "NOT_FOUND", `path ${record.path}`);
    if (decodeURIComponent(match[1]!) !== this.options.projectId) {
      return reject(
        403,
        "PERMISSION_DENIED",
        `project ${match[1]}`,
        "Permission 'cloudmessaging.messages.create' denied",
      );
    }
    if (record.method !== "POST") return reject(405, "METHOD_NOT_ALLOWED", `method ${record.method}`);

    const auth = header(record.headers, "authorization");
    const bearer = auth === undefined ? undefined : /^Bearer (\S+)$/.exec(auth)?.[1];
    if (bearer === undefined) return reject(401, "UNAUTHENTICATED", `authorization ${auth ?? "missing"}`);
    record.accessToken = bearer;
    const expiresAt = this.issued.get(bearer);
    if (expiresAt === undefined || this.now() >= expiresAt) {
      // Not a request problem: tokens expire and get revoked, and the client must recover.
      return {
        status: 401,
        body: {
          error: {
            code: 401,
            message: "Request had invalid authentication credentials. Expected OAuth 2 access token.",
            status: "UNAUTHENTICATED",
          },
        },
      };
    }

    const contentType = header(record.headers, "content-type");
    if (!contentType?.startsWith("application/json")) {
      return reject(400, "INVALID_ARGUMENT", `content-type ${contentType ?? "missing"}`);
    }
    try {
      record.body = JSON.parse(record.rawBody);
    } catch {
      return reject(400, "INVALID_ARGUMENT", "body is not JSON", "Invalid JSON payload received.");
    }
    const problems = messageProblems(record.body);
    if (problems.length > 0) {
      record.problems.push(...problems);
      return {
        status: 400,
        body: {
          error: {
            code: 400,
            message: problems.join("; "),
            status: "INVALID_ARGUMENT",
            details: [
              {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                fieldViolations: problems.map((description) => ({ description })),
              },
            ],
          },
        },
      };
    }
    return (
      this.sendScript.shift() ?? {
        status: 200,
        body: { name: `projects/${this.options.projectId}/messages/${randomBytes(8).toString("hex")}` },
      }
    );
  }
}

const MESSAGE_KEYS = new Set([
  "token",
  "topic",
  "condition",
  "data",
  "notification",
  "android",
  "apns",
  "webpush",
  "fcm_options",
  "fcmOptions",
  "name",
]);
const ANDROID_KEYS = new Set([
  "collapse_key",
  "collapseKey",
  "priority",
  "ttl",
  "restricted_package_name",
  "restrictedPackageName",
  "data",
  "notification",
  "fcm_options",
  "fcmOptions",
  "direct_boot_ok",
  "directBootOk",
]);

/** The documented message shape, plus Switchboard's content-free contract. */
export function messageProblems(body: unknown): string[] {
  const problems: string[] = [];
  if (!isRecord(body)) return ["body is not an object"];
  for (const key of Object.keys(body)) {
    if (key !== "message" && key !== "validate_only" && key !== "validateOnly")
      problems.push(`unknown field ${key}`);
  }
  const message = body.message;
  if (!isRecord(message)) return [...problems, "message missing"];
  for (const key of Object.keys(message))
    if (!MESSAGE_KEYS.has(key)) problems.push(`unknown field message.${key}`);
  const targets = ["token", "topic", "condition"].filter((k) => message[k] !== undefined);
  if (targets.length !== 1)
    problems.push(`exactly one of token/topic/condition, got ${targets.join(",") || "none"}`);
  if (typeof message.token !== "string" || message.token === "")
    problems.push("message.token must be a non-empty string");

  if ("notification" in message) problems.push("message.notification: pushes must be content-free");
  const data = message.data;
  if (!isRecord(data)) {
    problems.push("message.data missing");
  } else {
    let size = 0;
    for (const [key, value] of Object.entries(data)) {
      if (typeof value !== "string") problems.push(`message.data.${key} must be a string (TYPE_STRING)`);
      // FCM reserves these keys for itself.
      if (/^(google|gcm)/i.test(key) || key === "from" || key === "message_type" || key === "notification") {
        problems.push(`message.data.${key} is a reserved key`);
      }
      size += Buffer.byteLength(key) + Buffer.byteLength(String(value));
    }
    if (size > 4096) problems.push(`message.data is ${size} bytes, over 4096`);
    if (typeof data.c !== "string" || data.c === "")
      problems.push("message.data.c (conversation id) missing");
    if (typeof data.s !== "string" || !/^\d+$/.test(data.s))
      problems.push("message.data.s (seq) must be a decimal string");
    for (const key of Object.keys(data))
      if (key !== "c" && key !== "s") problems.push(`message.data.${key}: only c and s`);
  }

  const android = message.android;
  if (!isRecord(android)) {
    problems.push("message.android missing");
  } else {
    for (const key of Object.keys(android))
      if (!ANDROID_KEYS.has(key)) problems.push(`unknown field message.android.${key}`);
    if (android.priority !== "HIGH" && android.priority !== "NORMAL") {
      problems.push(`message.android.priority ${JSON.stringify(android.priority)}`);
    }
    const collapse = android.collapse_key ?? android.collapseKey;
    if (typeof collapse !== "string" || collapse === "")
      problems.push("message.android.collapse_key missing");
    if (android.ttl !== undefined) {
      const ttl = typeof android.ttl === "string" ? /^(\d+)(\.\d{1,9})?s$/.exec(android.ttl) : null;
      if (ttl === null)
        problems.push(`message.android.ttl ${JSON.stringify(android.ttl)} is not a Duration ("<n>s")`);
      else if (Number(ttl[1]) > 2_419_200) problems.push("message.android.ttl over 4 weeks");
    }
    if ("notification" in android) problems.push("message.android.notification: pushes must be content-free");
  }

  const apns = message.apns;
  if (apns !== undefined) {
    if (!isRecord(apns)) {
      problems.push("message.apns is not an object");
    } else {
      const headers = isRecord(apns.headers) ? apns.headers : {};
      for (const [key, value] of Object.entries(headers)) {
        if (typeof value !== "string") problems.push(`message.apns.headers.${key} must be a string`);
      }
      const priority = headers["apns-priority"];
      if (priority !== undefined && priority !== "5" && priority !== "10")
        problems.push(`apns-priority ${String(priority)}`);
      const payload = isRecord(apns.payload) ? apns.payload : {};
      const aps = isRecord(payload.aps) ? payload.aps : {};
      if (headers["apns-push-type"] === "background") {
        // APNs rejects these for background pushes, and FCM forwards them as they are.
        if (priority !== "5") problems.push("apns-push-type background needs apns-priority 5");
        if (aps["content-available"] !== 1)
          problems.push("background push without aps.content-available = 1");
      }
      const expiration = headers["apns-expiration"];
      if (expiration !== undefined && !/^\d+$/.test(String(expiration)))
        problems.push(`apns-expiration ${String(expiration)}`);
      const collapse = headers["apns-collapse-id"];
      if (typeof collapse === "string" && Buffer.byteLength(collapse) > 64)
        problems.push("apns-collapse-id over 64 bytes");
      for (const key of ["alert", "sound", "badge"]) {
        if (key in aps) problems.push(`message.apns.payload.aps.${key}: pushes must be content-free`);
      }
    }
  }
  const webpush = message.webpush;
  if (isRecord(webpush) && "notification" in webpush)
    problems.push("message.webpush.notification: pushes must be content-free");
  return problems;
}

/** Accepts the PEM, the public KeyObject, or the private one (its public half is derived). */
function toPublicKey(key: KeyObject | string): KeyObject {
  return typeof key !== "string" && key.type === "public" ? key : createPublicKey(key);
}

function header(headers: IncomingHttpHeaders, name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value[0] : value;
}

function encode(body: unknown): string {
  if (body === undefined) return "";
  return typeof body === "string" ? body : JSON.stringify(body);
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function listen(server: Http2Server | Http1Server): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      server.off("error", reject);
      resolve();
    });
  });
}
