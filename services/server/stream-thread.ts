import type * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { parentPort, workerData } from "node:worker_threads";
import type { RefusalFields, RefusalSink } from "../common/refusals.js";
import { DEVICE_STREAM_PATH, header, isGrpcDeviceStream } from "./device-stream-request.js";
import { EdgeGuard } from "./edge.js";
import { http1Server, sniffingServer } from "./front-door.js";
import { H2Connection, type H2ServerOptions, type H2Stream, type RequestHeaders } from "./h2/connection.js";
import {
  FROM_THREAD,
  IN_FLIGHT_BYTES,
  Inbox,
  Outbox,
  type StreamThreadData,
  type ThreadCommand,
  type ThreadEvent,
  TO_THREAD,
} from "./stream-thread-protocol.js";
import { encodeGrpcMessage, type NodeRequest, type NodeResponse } from "./wire-errors.js";

/**
 * A stream thread: serves device streams (GatewayService.Connect over gRPC) on the stream port
 * and hands their bytes to the main thread, which runs them (stream-threads.ts). The sockets,
 * HTTP/2, its flow control and the connection bounds are this thread's work; the frames, the
 * session and everything behind it stay on the main thread, unchanged. Every other request on
 * this port is answered UNIMPLEMENTED (gRPC) or 404: the main port serves them.
 *
 * HTTP/2 here is h2/connection.ts, not node:http2: the port holds a device's connection for hours
 * and serves nothing but one kind of gRPC stream, and node:http2 keeps about 19 KiB of native
 * state a connection whatever it carries, most of an idle device's cost (docs/benchmarks.md,
 * thirty-seventh pass).
 */

const port = parentPort;
if (port === null) throw new Error("stream-thread.ts runs as a worker thread");
const start = workerData as StreamThreadData;

const toMain = new Outbox((batch, transfer) => port.postMessage(batch satisfies ThreadEvent, transfer));

/** A device stream this thread serves. */
interface Served {
  stream: H2Stream;
  /** Bytes the main thread wrote that the stream has not yet taken off its buffer. */
  unwritten: number;
  /** Waiting for the stream's drain before `unwritten` is reported. */
  draining: boolean;
  /** Paused by the main thread (it reads no more) or by IN_FLIGHT_BYTES. */
  pausedByMain: boolean;
  pausedByBound: boolean;
}

const served = new Map<number, Served>();
/** Streams paused by the in-flight bound. */
const held = new Set<Served>();
let inFlight = 0;
let nextId = 1;

/** Refusals at this thread's edge go to the main thread's log and metric. */
const refusals: RefusalSink = {
  refuse(reason: string, message: string, fields: RefusalFields = {}) {
    toMain.op(FROM_THREAD.refused, 0, [reason, message, fields]);
  },
};

function serve(stream: H2Stream, headers: RequestHeaders): void {
  const id = nextId++;
  const s: Served = { stream, unwritten: 0, draining: false, pausedByMain: true, pausedByBound: false };
  served.set(id, s);
  // Not read until the main thread listens (it authenticates first): what the device sends
  // meanwhile waits in the stream's HTTP/2 window, not in memory here or there.
  stream.pause();
  toMain.op(FROM_THREAD.open, id, [
    String(headers["content-type"]),
    header(headers, "authorization"),
    header(headers, "grpc-timeout"),
    stream.remoteAddress ?? null,
  ]);
  stream.on("data", (chunk: Buffer) => {
    inFlight += chunk.length;
    toMain.data(FROM_THREAD.data, id, chunk);
    if (inFlight > IN_FLIGHT_BYTES && !s.pausedByBound) {
      s.pausedByBound = true;
      held.add(s);
      stream.pause();
    }
  });
  stream.on("end", () => toMain.op(FROM_THREAD.end, id));
  stream.on("close", () => {
    served.delete(id);
    held.delete(s);
    toMain.op(FROM_THREAD.close, id);
  });
}

function resumeIfFree(s: Served): void {
  if (!s.pausedByMain && !s.pausedByBound && !s.stream.closed) s.stream.resume();
}

/** Reports the main thread's bytes that left the stream's buffer (its write back-pressure). */
function reportWritten(id: number, s: Served): void {
  if (s.unwritten === 0) return;
  toMain.op(FROM_THREAD.written, id, s.unwritten);
  s.unwritten = 0;
}

const fromMain = new Inbox((kind, id, a, b, batch) => {
  if (kind === TO_THREAD.consumed) {
    inFlight -= a as number;
    if (inFlight <= IN_FLIGHT_BYTES / 2 && held.size > 0) {
      for (const s of held) {
        s.pausedByBound = false;
        resumeIfFree(s);
      }
      held.clear();
    }
    return;
  }
  const s = served.get(id);
  if (s === undefined) return;
  const { stream } = s;
  if (stream.closed) return;
  switch (kind) {
    case TO_THREAD.respond:
      stream.respond(200, [["content-type", a as string]]);
      break;
    case TO_THREAD.write: {
      const offset = a as number;
      const length = b;
      s.unwritten += length;
      const { data } = batch;
      const more = stream.write(Buffer.from(data.buffer, data.byteOffset + offset, length));
      if (s.draining) break;
      if (more) {
        reportWritten(id, s);
      } else {
        s.draining = true;
        stream.once("drain", () => {
          s.draining = false;
          reportWritten(id, s);
        });
      }
      break;
    }
    case TO_THREAD.end: {
      const trailers = a as http2.OutgoingHttpHeaders;
      stream.end(Object.entries(trailers).map(([name, value]) => [name, String(value)] as const));
      break;
    }
    case TO_THREAD.pause:
      s.pausedByMain = true;
      stream.pause();
      break;
    case TO_THREAD.resume:
      s.pausedByMain = false;
      resumeIfFree(s);
      break;
  }
});

const ELSEWHERE = `this port serves only ${DEVICE_STREAM_PATH.slice(1)} over gRPC (uncompressed, not from a browser); other calls go to the server's main port`;

/** Any other HTTP/2 request: the main port serves it. Its body is not read. */
function elsewhere(stream: H2Stream, headers: RequestHeaders): void {
  if (String(headers["content-type"] ?? "").startsWith("application/grpc")) {
    // Trailers-only, as gRPC defines an error without a body (edge.ts's refuse does the same).
    stream.respond(
      200,
      [
        ["content-type", "application/grpc"],
        ["grpc-status", "12"],
        ["grpc-message", encodeGrpcMessage(ELSEWHERE)],
      ],
      true,
    );
    return;
  }
  stream.respond(404, [["content-type", "application/json"]]);
  stream.write(Buffer.from(JSON.stringify({ code: "unimplemented", message: ELSEWHERE })));
  stream.end([]);
}

/** An HTTP/1.1 request: the same answer, and the connection closed (its body cannot be skipped). */
function elsewhereHttp1(req: NodeRequest, res: NodeResponse): void {
  res.writeHead(404, { "content-type": "application/json", connection: "close" });
  res.end(JSON.stringify({ code: "unimplemented", message: ELSEWHERE }));
  req.socket.destroy();
}

const edge = new EdgeGuard(start.limits, refusals, new Set(), undefined);
const connections = new Set<H2Connection>();
const h2Options: H2ServerOptions = {
  maxConcurrentStreams: start.limits.maxStreamsPerConnection,
  maxHeaderListBytes: start.limits.maxHeaderListBytes,
  maxHeaderPairs: 128,
  handshakeTimeoutMs: start.limits.handshakeTimeoutMs,
  idleTimeoutMs: start.limits.idleTimeoutMs,
  onStream(stream, headers) {
    // On the next turn, not inside the read that brought the HEADERS, and not at all if the
    // client reset the stream by then (the "rapid reset" defence, as edge.ts's deferStream).
    setImmediate(() => {
      if (stream.closed) return;
      if (isGrpcDeviceStream(headers)) serve(stream, headers);
      else elsewhere(stream, headers);
    });
  },
  refuse: (reason, message, fields) => refusals.refuse(reason, message, fields),
};
const h1 = http1Server(start.limits, elsewhereHttp1);
const server = sniffingServer(edge, start.limits, {
  http2(socket) {
    const connection = new H2Connection(socket, h2Options);
    connections.add(connection);
    socket.on("close", () => connections.delete(connection));
  },
  http1(socket) {
    h1.emit("connection", socket);
    socket.resume();
  },
});
server.on("listening", () => h1.emit("listening"));

port.on("message", (msg: ThreadCommand) => {
  if (msg.type === "batch") {
    fromMain.push(msg);
  } else if (msg.type === "close") {
    // The main thread's last writes (trailers among them) go out before the connections close.
    fromMain.drain();
    close();
  } else if (msg.type === "crash") {
    // For tests: fail as an uncaught error would.
    setImmediate(() => {
      throw new Error("stream thread crashed on request");
    });
  }
});

/** Stops accepting, tells every connection GOAWAY, destroys stragglers after 2 s, then exits. */
function close(): void {
  toMain.flush();
  server.close(() => process.exit(0));
  for (const c of connections) c.close();
  h1.close();
  setTimeout(() => {
    for (const c of connections) c.destroy();
    h1.closeAllConnections();
  }, 2000).unref();
}

server.on("error", (err) => {
  throw err;
});
server.listen(start.port, start.host, () => {
  port.postMessage({
    type: "listening",
    port: (server.address() as AddressInfo).port,
  } satisfies ThreadEvent);
});
