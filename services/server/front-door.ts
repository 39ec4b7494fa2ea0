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

/** Builds the port's servers around a handler (already wrapped by the edge guard). */
export function frontDoor(handler: Handler, edge: EdgeGuard, limits: EdgeLimits): FrontDoor {
  const h2 = http2.createServer(edge.serverOptions(), handler);
  edge.attach(h2);
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
  const server = net.createServer((socket) => {
    if (!edge.admit(socket)) return;
    // Before the hand-off nobody else listens for the socket's errors (a reset while silent).
    const ignore = () => {};
    socket.on("error", ignore);
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
      socket.off("error", ignore);
      // Paused with the bytes read put back: the HTTP/2 session reads them from the socket's
      // buffer when it starts; the HTTP/1.1 parser once the socket flows again.
      socket.pause();
      socket.unshift(head);
      if (preface) {
        h2.emit("connection", socket);
      } else {
        // As the HTTP/1.1 server's own sockets are: a client that half-closes after its
        // request still gets the answer.
        socket.allowHalfOpen = true;
        h1.emit("connection", socket);
        socket.resume();
      }
    };
    socket.on("data", onData);
  });
  // The HTTP/1.1 server never listens itself, but starts tracking its connections (the header
  // and request timeouts, closeAllConnections) on "listening": it is told when the port is.
  server.on("listening", () => h1.emit("listening"));
  return { server, h2, h1 };
}
