import * as http from "node:http";
import * as http2 from "node:http2";
import * as net from "node:net";
import type { EdgeLimits } from "../common/config.js";
import type { EdgeGuard, NodeRequest, NodeResponse } from "./edge.js";

/**
 * One cleartext port, two protocols. Native clients and proxies speak HTTP/2 with prior
 * knowledge (h2c); browsers (and the proxies in front of them) speak HTTP/1.1, on which Connect
 * and gRPC-Web work for unary calls and server streams. Node's http2 server accepts HTTP/1.1
 * only on TLS (`allowHTTP1`, chosen by ALPN), and connect-node documents each protocol on its own
 * server, so the port is a plain TCP server that reads a connection's first bytes: the HTTP/2
 * connection preface ("PRI * HTTP/2.0...", a method no HTTP/1.1 request uses) hands it to the
 * HTTP/2 server, anything else to the HTTP/1.1 server. Both serve the same handler behind the
 * same edge bounds: connections are admitted here, per address and in all, before either sees
 * them; a connection that sends nothing is closed after the handshake timeout.
 */

const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");

type Handler = (req: NodeRequest, res: NodeResponse) => void;

/** The listening TCP server and the two protocol servers behind it. */
export interface FrontDoor {
  /** Listens and accepts; closing it stops new connections. */
  server: net.Server;
  /** HTTP/2 (h2c) connections. */
  h2: http2.Http2Server;
  /** HTTP/1.1 connections. */
  h1: http.Server;
}

/** A kind of HTTP/2 stream served on node:http2's stream itself, without the compatibility layer. */
export interface DirectStream {
  /** True for the streams it serves, by their headers alone. */
  accepts(headers: http2.IncomingHttpHeaders): boolean;
  /** Serves one, on the turn after the read that opened it (the edge defers it as any request). */
  serve(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void;
}

/** Errors nobody else listens for yet (a socket being sniffed, a stream not yet served): one function for all. */
const IGNORE = (): void => {};

/**
 * Builds the port's servers around a handler (already wrapped by the edge guard). An HTTP/2
 * stream that `direct` accepts (the device stream, device-stream.ts) is served on the stream
 * itself; every other one gets node:http2's compatibility objects and goes to the handler.
 */
export function frontDoor(
  handler: Handler,
  edge: EdgeGuard,
  limits: EdgeLimits,
  direct?: DirectStream,
): FrontDoor {
  // No request handler here: node:http2 would then build an Http2ServerRequest and an
  // Http2ServerResponse for every stream, the device's too, before anyone could decline them.
  const h2 = http2.createServer(edge.serverOptions());
  h2.on(
    "stream",
    (
      stream: http2.ServerHttp2Stream,
      headers: http2.IncomingHttpHeaders,
      _flags: number,
      rawHeaders?: string[],
    ) => {
      if (direct?.accepts(headers)) {
        stream.on("error", IGNORE);
        edge.deferStream(stream, () => direct.serve(stream, headers));
        return;
      }
      viaCompatibility(handler, stream, headers, rawHeaders ?? []);
    },
  );
  edge.attach(h2);
  const h1 = http1Server(limits, handler);
  const server = sniffingServer(edge, limits, {
    http2: (socket) => h2.emit("connection", socket),
    http1: (socket) => {
      h1.emit("connection", socket);
      socket.resume();
    },
  });
  // The HTTP/1.1 server never listens itself, but starts tracking its connections (the header
  // and request timeouts, closeAllConnections) on "listening": it is told when the port is.
  server.on("listening", () => h1.emit("listening"));
  return { server, h2, h1 };
}

/** The HTTP/1.1 server behind a front door: it never listens itself (sniffingServer hands it sockets). */
export function http1Server(limits: EdgeLimits, handler: Handler): http.Server {
  const h1 = http.createServer(
    {
      // The same header budget as HTTP/2's SETTINGS; larger headers get 431.
      maxHeaderSize: limits.maxHeaderListBytes,
      // Headers within the handshake timeout, the whole request within it plus the body
      // deadline (the edge's own body deadline applies too). A request's answer, a Subscribe
      // stream included, has no deadline here: it lasts while the device listens.
      headersTimeout: limits.handshakeTimeoutMs,
      requestTimeout: limits.handshakeTimeoutMs + limits.requestBodyTimeoutMs,
      keepAliveTimeout: limits.idleTimeoutMs,
      // How often those timeouts are checked (Node's default is 30 s).
      connectionsCheckingInterval: 1000,
    },
    handler,
  );
  h1.maxHeadersCount = 128;
  return h1;
}

/**
 * The port's TCP server: admits each connection (the edge's bounds), reads its first bytes and
 * hands it, paused with those bytes put back, to `http2` when they are the HTTP/2 preface and to
 * `http1` otherwise. A connection that sends nothing within the handshake timeout is closed.
 */
export function sniffingServer(
  edge: EdgeGuard,
  limits: EdgeLimits,
  to: { http2(socket: net.Socket): void; http1(socket: net.Socket): void },
): net.Server {
  return net.createServer((socket) => {
    if (!edge.admit(socket)) return;
    // Before the hand-off nobody else listens for the socket's errors (a reset while silent).
    socket.on("error", IGNORE);
    const silent = setTimeout(() => edge.silent(socket), limits.handshakeTimeoutMs);
    silent.unref();
    const onClose = () => clearTimeout(silent);
    socket.on("close", onClose);
    let head: Buffer = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      head = head.length === 0 ? chunk : Buffer.concat([head, chunk]);
      const n = Math.min(head.length, PREFACE.length);
      const preface = head.subarray(0, n).equals(PREFACE.subarray(0, n));
      // Undecided until the preface is whole or a byte differs (at most 24 bytes held).
      if (preface && head.length < PREFACE.length) return;
      clearTimeout(silent);
      // Nothing of the sniffing stays with the connection (its listeners, the timer, the
      // closures' context): an idle device's connection is held for hours.
      socket.off("close", onClose);
      socket.off("data", onData);
      socket.off("error", IGNORE);
      // Paused with the bytes read put back: the HTTP/2 side reads them from the socket's
      // buffer when it starts; the HTTP/1.1 parser once the socket flows again.
      socket.pause();
      socket.unshift(head);
      if (preface) {
        to.http2(socket);
      } else {
        // As the HTTP/1.1 server's own sockets are: a client that half-closes after its
        // request still gets the answer.
        socket.allowHalfOpen = true;
        to.http1(socket);
      }
    };
    socket.on("data", onData);
  });
}

/**
 * What node:http2 does with a stream when its server has a request handler (lib/internal/http2/
 * compat.js, onServerStream), for a server with no "connect", "checkContinue" or
 * "checkExpectation" listener: CONNECT is 405, an expectation other than 100-continue is 417.
 */
function viaCompatibility(
  handler: Handler,
  stream: http2.ServerHttp2Stream,
  headers: http2.IncomingHttpHeaders,
  rawHeaders: readonly string[],
): void {
  const req = new http2.Http2ServerRequest(stream, headers, {}, rawHeaders);
  const res = new http2.Http2ServerResponse(stream);
  if (headers[":method"] === "CONNECT") {
    res.statusCode = 405;
    res.end();
    return;
  }
  if (headers.expect !== undefined) {
    if (headers.expect !== "100-continue") {
      res.statusCode = 417;
      res.end();
      return;
    }
    res.writeContinue();
  }
  handler(req, res);
}
