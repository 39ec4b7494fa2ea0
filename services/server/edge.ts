import { timingSafeEqual } from "node:crypto";
import type * as http from "node:http";
import * as http2 from "node:http2";
import { isIPv6, type Socket } from "node:net";
import type { DescService } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import type { EdgeLimits } from "../common/config.js";
import { INTERNAL_HEADER } from "../common/internal-auth.js";
import type { RefusalSink } from "../common/refusals.js";
import { encodeGrpcMessage, fixErrorEncoding, type NodeRequest, type NodeResponse } from "./wire-errors.js";

export type { NodeRequest, NodeResponse } from "./wire-errors.js";

/**
 * The network face's own bounds, below Connect: what a client can make the process hold before
 * any service code runs. Connect parses a unary request only once its body is complete and
 * gives an HTTP/2 server no limit of its own on connections, streams or time, so without these a
 * client that opens connections and requests and never finishes them holds memory until the
 * process dies (finding 1 of the hostile-client review). See docs/security.md.
 */

type Handler = (req: NodeRequest, res: NodeResponse) => void;

/** True for a request that arrived over HTTP/2. */
function overHttp2(req: NodeRequest): req is http2.Http2ServerRequest {
  return "stream" in req && req.stream !== undefined;
}

/** True once the client went away (reset its stream, or closed its HTTP/1.1 connection). */
function gone(req: NodeRequest): boolean {
  return overHttp2(req) ? req.stream.closed || req.stream.destroyed : req.destroyed || req.socket.destroyed;
}

/**
 * Stops reading a request: its HTTP/2 stream is reset with the code, an HTTP/1.1 connection
 * (which cannot skip an unread body) is closed.
 */
function stopReading(req: NodeRequest, code: number): void {
  if (overHttp2(req)) req.stream.close(code);
  else req.socket.destroy();
}

/** Counters for the admin service and tests. */
export interface EdgeMetrics {
  connectionsOpen: number;
  requestsInFlight: number;
}

/**
 * The key a client's connections and requests are counted under: its IPv4 address, or the /64
 * of its IPv6 address (a subscriber is usually given a whole /64, so counting single IPv6
 * addresses would bound nothing).
 */
export function addressKey(remote: string | undefined): string {
  if (remote === undefined) return "unknown";
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(remote);
  if (mapped) return mapped[1]!;
  if (!isIPv6(remote)) return remote;
  const [head = "", tail = ""] = remote.split("::");
  const left = head === "" ? [] : head.split(":");
  const right = remote.includes("::") ? (tail === "" ? [] : tail.split(":")) : [];
  const groups = [...left, ...Array<string>(8 - left.length - right.length).fill("0"), ...right];
  return `${groups
    .slice(0, 4)
    .map((g) => Number.parseInt(g, 16).toString(16))
    .join(":")}::/64`;
}

/**
 * The procedures whose answer is a stream of messages and whose request is one (Subscribe):
 * their body deadline applies, but they live as long as the device listens, so they are not
 * counted as unary requests in flight (the per-device stream limit bounds them).
 */
export function answerStreamProcedures(services: readonly DescService[]): Set<string> {
  const paths = new Set<string>();
  for (const service of services) {
    for (const method of service.methods) {
      if (method.methodKind === "server_streaming") paths.add(`/${service.typeName}/${method.name}`);
    }
  }
  return paths;
}

/** The procedures whose request is a stream of messages: no body deadline applies to them. */
export function streamingProcedures(services: readonly DescService[]): Set<string> {
  const paths = new Set<string>();
  for (const service of services) {
    for (const method of service.methods) {
      if (method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming") {
        paths.add(`/${service.typeName}/${method.name}`);
      }
    }
  }
  return paths;
}

const CODE_NAMES: Partial<Record<Code, string>> = {
  [Code.InvalidArgument]: "invalid_argument",
  [Code.ResourceExhausted]: "resource_exhausted",
  [Code.Unauthenticated]: "unauthenticated",
};
const CONNECT_HTTP_STATUS: Partial<Record<Code, number>> = {
  [Code.InvalidArgument]: 400,
  [Code.ResourceExhausted]: 429,
  [Code.Unauthenticated]: 401,
};

/** The process's bounds on connections and requests; attach() to the server, wrap() the handler. */
export class EdgeGuard {
  readonly metrics: EdgeMetrics = { connectionsOpen: 0, requestsInFlight: 0 };
  private readonly connectionsByAddress = new Map<string, number>();
  private readonly requestsByAddress = new Map<string, number>();
  private readonly credential: Buffer | undefined;

  constructor(
    private readonly limits: EdgeLimits,
    private readonly refusals: RefusalSink,
    private readonly streaming: ReadonlySet<string>,
    internalCredential: string | undefined,
    private readonly answerStreams: ReadonlySet<string> = new Set(),
  ) {
    this.credential = internalCredential === undefined ? undefined : Buffer.from(internalCredential);
  }

  /** The HTTP/2 server options these bounds need: SETTINGS the server advertises. */
  serverOptions(): http2.ServerOptions {
    return {
      settings: {
        maxConcurrentStreams: this.limits.maxStreamsPerConnection,
        maxHeaderListSize: this.limits.maxHeaderListBytes,
      },
      maxHeaderListPairs: 128,
    };
  }

  /**
   * Times out silent and idle HTTP/2 connections; the front door (front-door.ts) admitted them
   * (admit) before it handed them to this server.
   */
  attach(server: http2.Http2Server): void {
    // Node's own connection listener, registered when the server was made, runs first and emits
    // "session" before ours sees the connection: the session is paired with its raw socket here,
    // because only the raw socket can be destroyed (the session's is a guarded proxy, and
    // destroying a session that never got a preface leaves its socket open).
    let created: http2.ServerHttp2Session | undefined;
    server.on("session", (session: http2.ServerHttp2Session) => {
      created = session;
    });
    server.on("connection", (socket: Socket) => {
      const session = created;
      created = undefined;
      if (session !== undefined) this.watchSession(session, socket);
    });
  }

  /** Counts a new connection, or closes it at once when its address or the process is full. */
  admit(socket: Socket): boolean {
    return this.admitConnection(socket);
  }

  /** Closes a connection that sent nothing to tell its protocol by within the handshake timeout. */
  silent(socket: Socket): void {
    this.refusals.refuse("handshake_timeout", "connection closed: no request in time", {
      address: addressKey(socket.remoteAddress),
      timeoutMs: this.limits.handshakeTimeoutMs,
    });
    socket.destroy();
  }

  /** Wraps the request handler with the request bounds and the wire-error fixes. */
  wrap(handler: Handler): Handler {
    return (req, res) => {
      const procedure = (req.url ?? "").split("?")[0] ?? "";
      const internal = this.isInternalCaller(req);
      // The address now: an HTTP/1.1 request loses its socket once its connection is gone.
      fixErrorEncoding(req, res, procedure, this.refusals, addressKey(req.socket.remoteAddress));
      if (procedure.startsWith("/switchboard.internal.") && !internal) {
        // Refused before the body is read: an outsider cannot park requests on internal paths.
        this.refusals.refuse(
          "internal_without_credential",
          "internal service called without the credential",
          {
            address: addressKey(req.socket.remoteAddress),
            procedure,
            code: "unauthenticated",
          },
        );
        // The words requireInternalCredential uses, so clients see one message either way.
        refuse(
          req,
          res,
          Code.Unauthenticated,
          `${procedure.slice(1).split("/")[0]} is internal: the caller lacks this deployment's internal credential`,
        );
        return;
      }
      if (!this.streaming.has(procedure)) {
        const counted = !internal && !this.answerStreams.has(procedure);
        if (counted && !this.admitRequest(req, res, procedure)) return;
        this.bodyDeadline(req, res, procedure);
      }
      // Connect starts on the next turn of the event loop, not inside the socket read that
      // brought the HEADERS frame: node:http2 parses a whole read (up to megabytes) in one go
      // and opens each stream synchronously, so a client that sends thousands of HEADERS
      // each followed by RST_STREAM (an HTTP/2 "rapid reset", or a Node client destroyed with
      // requests queued behind SETTINGS_MAX_CONCURRENT_STREAMS) would otherwise have Connect
      // build a handler context, an AbortController and a ConnectError with a stack trace for
      // every one, all before the loop runs again: seconds of blocked loop for everyone. By
      // the time the deferred call runs, such a stream is already closed and Connect never
      // sees it.
      setImmediate(() => {
        if (gone(req)) return;
        handler(req, res);
      });
    };
  }

  /**
   * Serves an HTTP/2 stream taken before the compatibility layer (front-door.ts) as wrap serves a
   * request: on the next turn of the event loop, and not at all if the client reset it by then
   * (the "rapid reset" defence in wrap). It is a stream procedure, so no request bound applies.
   */
  deferStream(stream: http2.ServerHttp2Stream, serve: () => void): void {
    setImmediate(() => {
      if (stream.closed || stream.destroyed) return;
      serve();
    });
  }

  private isInternalCaller(req: NodeRequest): boolean {
    if (this.credential === undefined) return false;
    const given = req.headers[INTERNAL_HEADER];
    if (typeof given !== "string") return false;
    const bytes = Buffer.from(given);
    return bytes.length === this.credential.length && timingSafeEqual(bytes, this.credential);
  }

  private admitConnection(socket: Socket): boolean {
    const address = addressKey(socket.remoteAddress);
    const open = this.connectionsByAddress.get(address) ?? 0;
    let refusal: string | undefined;
    if (this.metrics.connectionsOpen >= this.limits.maxConnections) refusal = "connections";
    else if (open >= this.limits.maxConnectionsPerAddress) refusal = "connections_per_address";
    if (refusal !== undefined) {
      this.refusals.refuse(refusal, "connection refused: too many open", {
        address,
        limit: refusal === "connections" ? this.limits.maxConnections : this.limits.maxConnectionsPerAddress,
      });
      socket.destroy();
      return false;
    }
    this.metrics.connectionsOpen++;
    this.connectionsByAddress.set(address, open + 1);
    socket.on("close", () => {
      this.metrics.connectionsOpen--;
      decrement(this.connectionsByAddress, address);
    });
    return true;
  }

  private watchSession(session: http2.ServerHttp2Session, socket: Socket): void {
    const address = addressKey(socket.remoteAddress);
    // What these listeners keep lives as long as the connection, hours for an idle device, so
    // each costs memory per connected device: "close" listeners are `on` (the event fires once;
    // `once` adds a wrapper object and a bound function each), and a cleared timer is dropped.
    // The client's preface ends with its SETTINGS; a socket that never sends them holds a
    // descriptor for nothing.
    let handshake: NodeJS.Timeout | undefined = setTimeout(() => {
      this.refusals.refuse("handshake_timeout", "connection closed: no HTTP/2 preface in time", {
        address,
        timeoutMs: this.limits.handshakeTimeoutMs,
      });
      socket.destroy();
    }, this.limits.handshakeTimeoutMs);
    handshake.unref();

    // Idle: no stream open. A device's stream keeps its connection; a connection left with no
    // request (a scanner, a client that went away without closing) is told GOAWAY.
    let open = 0;
    let idle: NodeJS.Timeout | undefined;
    const armIdle = () => {
      idle = setTimeout(() => {
        this.refusals.refuse("idle_connection", "connection closed: idle", {
          address,
          timeoutMs: this.limits.idleTimeoutMs,
        });
        session.close();
        // A peer that ignores GOAWAY and keeps the socket open is cut off.
        setTimeout(() => socket.destroy(), 5000).unref();
      }, this.limits.idleTimeoutMs);
      idle.unref();
    };
    // The idle clock starts once the handshake is done: until then the handshake timeout rules.
    session.once("remoteSettings", () => {
      clearTimeout(handshake);
      handshake = undefined;
      if (open === 0) armIdle();
    });
    session.on("stream", (stream: http2.ServerHttp2Stream) => {
      open++;
      clearTimeout(idle);
      idle = undefined;
      stream.on("close", () => {
        if (--open === 0 && !session.closed && !session.destroyed) armIdle();
      });
    });
    session.on("close", () => {
      clearTimeout(handshake);
      clearTimeout(idle);
    });
  }

  /** Counts a unary request in flight, or refuses it at once when its address or the process is full. */
  private admitRequest(req: NodeRequest, res: NodeResponse, procedure: string): boolean {
    const address = addressKey(req.socket.remoteAddress);
    const mine = this.requestsByAddress.get(address) ?? 0;
    let refusal: string | undefined;
    if (this.metrics.requestsInFlight >= this.limits.maxRequestsInFlight) refusal = "requests_in_flight";
    else if (mine >= this.limits.maxRequestsInFlightPerAddress) refusal = "requests_in_flight_per_address";
    if (refusal !== undefined) {
      const limit =
        refusal === "requests_in_flight"
          ? `${this.limits.maxRequestsInFlight} in the server`
          : `${this.limits.maxRequestsInFlightPerAddress} per client address`;
      this.refusals.refuse(refusal, "request refused: too many in flight", {
        address,
        procedure,
        code: "resource_exhausted",
      });
      refuse(
        req,
        res,
        Code.ResourceExhausted,
        `too many requests in flight: at most ${limit}; retry shortly`,
      );
      return false;
    }
    this.metrics.requestsInFlight++;
    this.requestsByAddress.set(address, mine + 1);
    res.once("close", () => {
      this.metrics.requestsInFlight--;
      decrement(this.requestsByAddress, address);
    });
    return true;
  }

  /**
   * A unary request's body must arrive within the deadline, however slowly it trickles: the
   * stream is reset (RST_STREAM CANCEL) otherwise, which frees what Connect holds for it.
   */
  private bodyDeadline(req: NodeRequest, res: NodeResponse, procedure: string): void {
    const timer = setTimeout(() => {
      if (req.complete || res.writableEnded) return;
      this.refusals.refuse("request_body_timeout", "request reset: body not complete in time", {
        address: addressKey(req.socket.remoteAddress),
        procedure,
        timeoutMs: this.limits.requestBodyTimeoutMs,
      });
      stopReading(req, http2.constants.NGHTTP2_CANCEL);
    }, this.limits.requestBodyTimeoutMs);
    timer.unref();
    const clear = () => clearTimeout(timer);
    req.once("end", clear);
    res.once("close", clear);
  }
}

function decrement(counts: Map<string, number>, key: string): void {
  const n = (counts.get(key) ?? 1) - 1;
  if (n <= 0) counts.delete(key);
  else counts.set(key, n);
}

/** Answers a request with an error in its own protocol (gRPC, gRPC-Web or Connect), without reading it. */
function refuse(req: NodeRequest, res: NodeResponse, code: Code, message: string): void {
  const contentType = String(req.headers["content-type"] ?? "");
  // An HTTP/1.1 connection cannot skip the unread body: it is closed after the answer.
  const close: http.OutgoingHttpHeaders = overHttp2(req) ? {} : { connection: "close" };
  if (contentType.startsWith("application/grpc")) {
    const web = contentType.startsWith("application/grpc-web");
    const headers = {
      ...close,
      "content-type": web ? "application/grpc-web+proto" : "application/grpc",
      "grpc-status": String(code),
      "grpc-message": encodeGrpcMessage(message),
    };
    if (overHttp2(req) && !web && !res.headersSent) {
      // Trailers-only, as gRPC defines it: the status in the one HEADERS frame, which ends the
      // stream. Response headers followed by an empty DATA frame (what writeHead and end send)
      // carry no trailers, and a stock @grpc/grpc-js client reads that as a call ended without
      // a status: INTERNAL instead of the code (test/e2e/internal-wire.test.ts).
      req.stream.respond({ ":status": 200, ...headers }, { endStream: true });
    } else {
      res.writeHead(200, headers);
      res.end();
    }
  } else {
    res.writeHead(CONNECT_HTTP_STATUS[code] ?? 500, { ...close, "content-type": "application/json" });
    res.end(JSON.stringify({ code: CODE_NAMES[code] ?? "unknown", message }));
  }
  // The unread body is not wanted; resetting the stream tells the client to stop sending it.
  if (overHttp2(req)) req.stream.close(http2.constants.NGHTTP2_NO_ERROR);
}
