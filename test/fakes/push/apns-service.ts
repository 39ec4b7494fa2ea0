/**
 * A local stand-in for APNs (HTTP/2 without TLS), checking each request the way Apple documents
 * (path, provider token, apns-* headers, payload) and answering with Apple's status codes and
 * {"reason": ...} bodies. Tests script the next answers and read what was sent. Beyond Apple's own
 * checks it enforces Switchboard's contract: a content-free background push carrying c and s.
 * https://developer.apple.com/documentation/usernotifications/sending-notification-requests-to-apns
 */
import { createPublicKey, type KeyObject, randomUUID } from "node:crypto";
import {
  constants,
  createServer,
  type Http2Server,
  type Http2Session,
  type IncomingHttpHeaders,
  type ServerHttp2Stream,
} from "node:http2";
import type { AddressInfo } from "node:net";
import { decodeProtectedHeader, errors, type JWTHeaderParameters, type JWTPayload, jwtVerify } from "jose";

export interface FakeApnsServiceOptions {
  teamId: string;
  keyId: string;
  /** The public half of the .p8 key: provider tokens must verify with it. */
  publicKey: KeyObject | string;
  /** Bundle ids the key may push to; any topic when absent. */
  topics?: readonly string[];
  /** Milliseconds since the epoch; share it with the provider to age tokens without waiting. */
  now?: () => number;
}

/** An answer a test queues for the next valid request. */
export interface ScriptedAnswer {
  status: number;
  headers?: Record<string, string>;
  /** JSON-encoded unless a string; Apple's errors are {"reason": "..."}. */
  body?: unknown;
  /** Never answers (until the service closes): for timeouts. */
  hang?: boolean;
}

export interface ApnsRequest {
  method: string;
  path: string;
  /** The device token from the path. */
  deviceToken?: string;
  headers: IncomingHttpHeaders;
  rawBody: string;
  body: unknown;
  jwt?: string;
  jwtHeader?: JWTHeaderParameters;
  jwtClaims?: JWTPayload;
  /** Which HTTP/2 connection carried it (1, 2, ...): tests check reuse and reconnects. */
  session: number;
  /** What did not match the documented format; empty for a good request. */
  problems: string[];
  status: number;
  reason?: string;
}

/** An APNs error answer, e.g. apnsError(410, "Unregistered"). */
export function apnsError(status: number, reason: string, headers?: Record<string, string>): ScriptedAnswer {
  return { status, body: { reason }, ...(headers !== undefined && { headers }) };
}

const PUSH_TYPES = new Set([
  "alert",
  "background",
  "location",
  "voip",
  "complication",
  "fileprovider",
  "mdm",
  "liveactivity",
  "pushtotalk",
  "widgets",
  "controls",
]);
const HOUR_S = 3600;
/** Apple answers TooManyProviderTokenUpdates when a new token comes sooner than this. */
const TOKEN_UPDATE_INTERVAL_S = 20 * 60;

export class FakeApnsService {
  /** http://127.0.0.1:port */
  readonly origin: string;
  readonly requests: ApnsRequest[] = [];
  private readonly script: ScriptedAnswer[] = [];
  private readonly unregistered = new Map<string, number>();
  private readonly sessions = new Set<Http2Session>();
  private readonly sessionIds = new WeakMap<Http2Session, number>();
  private sessionCount = 0;
  private readonly hanging = new Set<ServerHttp2Stream>();
  private readonly now: () => number;
  /** Each connection's provider token and its iat, for Apple's refresh-rate rule. */
  private readonly current = new WeakMap<Http2Session, { jwt: string; iat: number }>();

  private constructor(
    private readonly options: FakeApnsServiceOptions,
    private readonly publicKey: KeyObject,
    private readonly server: Http2Server,
  ) {
    this.now = options.now ?? Date.now;
    this.origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  static async start(options: FakeApnsServiceOptions): Promise<FakeApnsService> {
    const publicKey = toPublicKey(options.publicKey);
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => {
        server.off("error", reject);
        resolve();
      });
    });
    const service = new FakeApnsService(options, publicKey, server);
    server.on("session", (session) => {
      service.sessions.add(session);
      service.sessionIds.set(session, ++service.sessionCount);
      session.on("close", () => service.sessions.delete(session));
      session.on("error", () => {});
    });
    server.on("stream", (stream, headers) => service.onStream(stream, headers));
    return service;
  }

  /** Queues answers for the next valid requests (invalid ones get Apple's error). */
  answer(...answers: ScriptedAnswer[]): void {
    this.script.push(...answers);
  }

  /** The device token answers 410 Unregistered from now on, as after the app is removed. */
  unregister(deviceToken: string): void {
    this.unregistered.set(deviceToken.toLowerCase(), this.now());
  }

  /** Sends GOAWAY on every open connection, as APNs does when it drains a server. */
  closeConnections(): void {
    for (const session of this.sessions) session.close();
  }

  /** Connections still open (a closing one counts until the client has let go of it too). */
  openConnections(): number {
    return this.sessions.size;
  }

  /** Every problem found in any request so far, prefixed with its index. */
  problems(): string[] {
    return this.requests.flatMap((r, i) => r.problems.map((p) => `request ${i}: ${p}`));
  }

  async close(): Promise<void> {
    for (const stream of this.hanging) stream.close(constants.NGHTTP2_CANCEL);
    for (const session of this.sessions) session.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private onStream(stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void {
    const chunks: Buffer[] = [];
    const session = this.sessionIds.get(stream.session as Http2Session) ?? 0;
    stream.on("data", (c: Buffer) => chunks.push(c));
    stream.on("error", () => {});
    stream.on("end", () => {
      const record: ApnsRequest = {
        method: String(headers[constants.HTTP2_HEADER_METHOD]),
        path: String(headers[constants.HTTP2_HEADER_PATH]),
        headers,
        rawBody: Buffer.concat(chunks).toString("utf8"),
        body: undefined,
        session,
        problems: [],
        status: 0,
      };
      this.requests.push(record);
      void this.check(record, stream.session as Http2Session).then((answer) => {
        record.status = answer.status;
        if (isRecord(answer.body) && typeof answer.body.reason === "string")
          record.reason = answer.body.reason;
        if (answer.hang === true) {
          this.hanging.add(stream);
          stream.on("close", () => this.hanging.delete(stream));
          return;
        }
        if (stream.destroyed) return;
        const body =
          answer.body === undefined
            ? ""
            : typeof answer.body === "string"
              ? answer.body
              : JSON.stringify(answer.body);
        stream.respond({
          [constants.HTTP2_HEADER_STATUS]: answer.status,
          // Apple echoes or assigns an apns-id on every answer.
          "apns-id": header(headers, "apns-id") ?? randomUUID().toUpperCase(),
          ...(body !== "" && { "content-type": "application/json" }),
          ...answer.headers,
        });
        stream.end(body);
      });
    });
  }

  private async check(record: ApnsRequest, session: Http2Session): Promise<ScriptedAnswer> {
    const reject = (status: number, reason: string, problem: string): ScriptedAnswer => {
      record.problems.push(problem);
      return apnsError(status, reason);
    };
    const h = (name: string) => header(record.headers, name);
    const nowS = Math.floor(this.now() / 1000);

    if (record.method !== "POST") return reject(405, "MethodNotAllowed", `method ${record.method}`);
    const match = /^\/3\/device\/([^/?#]*)$/.exec(record.path);
    if (match === null) return reject(404, "BadPath", `path ${record.path}`);
    const deviceToken = match[1]!;
    record.deviceToken = deviceToken;
    if (deviceToken === "") return reject(400, "MissingDeviceToken", "no device token in the path");
    if (!/^([0-9a-fA-F]{2})+$/.test(deviceToken))
      return reject(400, "BadDeviceToken", `device token ${deviceToken}`);

    // Provider token: ES256, kid = key id, iss = team id, iat within the last hour.
    const auth = h("authorization");
    if (auth === undefined) return reject(403, "MissingProviderToken", "no authorization header");
    const bearer = /^bearer (\S+)$/i.exec(auth)?.[1];
    if (bearer === undefined) return reject(403, "InvalidProviderToken", `authorization ${auth}`);
    record.jwt = bearer;
    try {
      const jwtHeader = decodeProtectedHeader(bearer);
      if (jwtHeader.alg !== "ES256")
        return reject(403, "InvalidProviderToken", `alg ${String(jwtHeader.alg)}`);
      if (jwtHeader.kid !== this.options.keyId) {
        return reject(403, "InvalidProviderToken", `kid ${String(jwtHeader.kid)}`);
      }
      const verified = await jwtVerify(bearer, this.publicKey, {
        algorithms: ["ES256"],
        currentDate: new Date(this.now()),
      });
      record.jwtHeader = verified.protectedHeader;
      record.jwtClaims = verified.payload;
    } catch (e) {
      const what =
        e instanceof errors.JWSSignatureVerificationFailed
          ? "provider token signature does not verify with the team's key"
          : `provider token: ${(e as Error).message}`;
      return reject(403, "InvalidProviderToken", what);
    }
    const claims = record.jwtClaims;
    if (claims.iss !== this.options.teamId)
      return reject(403, "InvalidProviderToken", `iss ${String(claims.iss)}`);
    if (typeof claims.iat !== "number" || !Number.isInteger(claims.iat)) {
      return reject(403, "InvalidProviderToken", `iat ${String(claims.iat)}`);
    }
    if (claims.iat > nowS + 60) return reject(403, "InvalidProviderToken", `iat ${claims.iat} in the future`);
    if (nowS - claims.iat > HOUR_S)
      return reject(403, "ExpiredProviderToken", `iat ${claims.iat} older than an hour`);
    const current = this.current.get(session);
    if (
      current !== undefined &&
      bearer !== current.jwt &&
      claims.iat - current.iat < TOKEN_UPDATE_INTERVAL_S
    ) {
      return reject(
        429,
        "TooManyProviderTokenUpdates",
        `new token ${claims.iat - current.iat} s after the last`,
      );
    }
    if (current?.jwt !== bearer) this.current.set(session, { jwt: bearer, iat: claims.iat });

    const topic = h("apns-topic");
    if (topic === undefined || topic === "") return reject(400, "MissingTopic", "no apns-topic");
    const pushType = h("apns-push-type");
    // A VoIP push goes to the app's topic with ".voip" appended (PushKit), and only there.
    const appTopic = pushType === "voip" ? topic.replace(/\.voip$/, "") : topic;
    if (pushType === "voip" && appTopic === topic)
      return reject(400, "TopicDisallowed", `a voip push to ${topic}, not <bundle id>.voip`);
    if (this.options.topics !== undefined && !this.options.topics.includes(appTopic)) {
      return reject(400, "TopicDisallowed", `topic ${topic}`);
    }
    if (pushType === undefined || !PUSH_TYPES.has(pushType)) {
      return reject(400, "InvalidPushType", `apns-push-type ${pushType ?? "missing"}`);
    }
    const priority = h("apns-priority");
    if (priority === undefined) return reject(400, "BadPriority", "no apns-priority");
    if (!["1", "5", "10"].includes(priority)) return reject(400, "BadPriority", `apns-priority ${priority}`);
    if (pushType === "background" && priority !== "5") {
      return reject(400, "BadPriority", `background push with apns-priority ${priority} (must be 5)`);
    }
    const expiration = h("apns-expiration");
    if (expiration === undefined || !/^\d+$/.test(expiration)) {
      return reject(400, "BadExpirationDate", `apns-expiration ${expiration ?? "missing"}`);
    }
    if (expiration !== "0" && Number(expiration) < nowS) {
      return reject(400, "BadExpirationDate", `apns-expiration ${expiration} is in the past (now ${nowS})`);
    }
    const collapseId = h("apns-collapse-id");
    if (collapseId === undefined || collapseId === "" || Buffer.byteLength(collapseId) > 64) {
      return reject(400, "BadCollapseId", `apns-collapse-id ${collapseId ?? "missing"}`);
    }
    const apnsId = h("apns-id");
    if (
      apnsId !== undefined &&
      !/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(apnsId)
    ) {
      return reject(400, "BadMessageId", `apns-id ${apnsId}`);
    }

    if (record.rawBody === "") return reject(400, "PayloadEmpty", "empty body");
    // Apple's limit for everything but VoIP.
    if (Buffer.byteLength(record.rawBody) > 4096)
      return reject(413, "PayloadTooLarge", "payload over 4096 bytes");
    try {
      record.body = JSON.parse(record.rawBody);
    } catch {
      // Apple documents no reason for this; PayloadEmpty is the nearest it would say.
      return reject(400, "PayloadEmpty", "body is not JSON");
    }
    const problems = pushType === "voip" ? voipPayloadProblems(record.body) : payloadProblems(record.body);
    if (problems.length > 0) {
      record.problems.push(...problems);
      // Not an Apple reason: Apple would deliver these, but a Switchboard push must not carry them.
      return apnsError(400, "ContentNotAllowed");
    }

    const removedAt = this.unregistered.get(deviceToken.toLowerCase());
    if (removedAt !== undefined)
      return { status: 410, body: { reason: "Unregistered", timestamp: removedAt } };
    return this.script.shift() ?? { status: 200 };
  }
}

/** A background push: aps has content-available = 1 and nothing to show; c and s are strings. */
export function payloadProblems(body: unknown): string[] {
  const problems: string[] = [];
  if (!isRecord(body)) return ["payload is not an object"];
  const aps = body.aps;
  if (!isRecord(aps)) return ["payload has no aps dictionary"];
  if (aps["content-available"] !== 1)
    problems.push(`aps.content-available ${JSON.stringify(aps["content-available"])}`);
  for (const key of ["alert", "sound", "badge", "mutable-content"]) {
    if (key in aps) problems.push(`aps.${key}: a background push shows nothing`);
  }
  if (typeof body.c !== "string" || body.c === "") problems.push("c (conversation id) missing");
  if (typeof body.s !== "string" || !/^\d+$/.test(body.s)) problems.push("s (seq) must be a decimal string");
  for (const key of Object.keys(body))
    if (!["aps", "c", "s"].includes(key)) problems.push(`unexpected key ${key}`);
  return problems;
}

/**
 * A call's VoIP push (docs/calls.md): nothing to show (aps carries no alert, sound or badge), k is
 * "call" or "call_ended", i the call id, c the conversation id; nothing else.
 */
export function voipPayloadProblems(body: unknown): string[] {
  const problems: string[] = [];
  if (!isRecord(body)) return ["payload is not an object"];
  const aps = body.aps;
  if (!isRecord(aps)) return ["payload has no aps dictionary"];
  for (const key of Object.keys(aps)) problems.push(`aps.${key}: a call push shows nothing`);
  if (body.k !== "call" && body.k !== "call_ended") problems.push(`k ${JSON.stringify(body.k)}`);
  if (typeof body.i !== "string" || body.i === "") problems.push("i (call id) missing");
  if (typeof body.c !== "string" || body.c === "") problems.push("c (conversation id) missing");
  for (const key of Object.keys(body))
    if (!["aps", "k", "i", "c"].includes(key)) problems.push(`unexpected key ${key}`);
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

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
