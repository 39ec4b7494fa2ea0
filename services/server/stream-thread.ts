import type * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { parentPort, workerData } from "node:worker_threads";
import type { RefusalFields, RefusalSink } from "../common/refusals.js";
import { DEVICE_STREAM_PATH, header, isGrpcDeviceStream } from "./device-stream-request.js";
import { EdgeGuard } from "./edge.js";
import { type DirectStream, frontDoor } from "./front-door.js";
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
 */

const port = parentPort;
if (port === null) throw new Error("stream-thread.ts runs as a worker thread");
const start = workerData as StreamThreadData;

const toMain = new Outbox((batch, transfer) => port.postMessage(batch satisfies ThreadEvent, transfer));

/** A device stream this thread serves. */
interface Served {
  stream: http2.ServerHttp2Stream;
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

function serve(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
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
    stream.session?.socket?.remoteAddress ?? null,
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
  if (!s.pausedByMain && !s.pausedByBound && !s.stream.destroyed) s.stream.resume();
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
  if (stream.destroyed || stream.closed) return;
  switch (kind) {
    case TO_THREAD.respond:
      stream.respond({ ":status": 200, "content-type": a as string }, { waitForTrailers: true });
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
      stream.once("wantTrailers", () => stream.sendTrailers(trailers));
      stream.end();
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

/** Anything but a device stream: the main port serves it. */
function elsewhere(req: NodeRequest, res: NodeResponse): void {
  const message = `this port serves only ${DEVICE_STREAM_PATH.slice(1)} over gRPC (uncompressed, not from a browser); other calls go to the server's main port`;
  const grpc = String(req.headers["content-type"] ?? "").startsWith("application/grpc");
  const stream = "stream" in req ? (req.stream as http2.ServerHttp2Stream | undefined) : undefined;
  if (grpc && stream !== undefined && !res.headersSent) {
    // Trailers-only, as gRPC defines an error without a body (edge.ts's refuse does the same).
    stream.respond(
      {
        ":status": 200,
        "content-type": "application/grpc",
        "grpc-status": "12",
        "grpc-message": encodeGrpcMessage(message),
      },
      { endStream: true },
    );
  } else {
    res.writeHead(404, { "content-type": "application/json", ...(stream ? {} : { connection: "close" }) });
    res.end(JSON.stringify({ code: "unimplemented", message }));
  }
  // The body is not wanted.
  if (stream !== undefined) stream.close();
  else req.socket.destroy();
}

const edge = new EdgeGuard(start.limits, refusals, new Set(), undefined);
const direct: DirectStream = { accepts: isGrpcDeviceStream, serve };
const door = frontDoor(elsewhere, edge, start.limits, direct);
const sessions = new Set<http2.ServerHttp2Session>();
door.h2.on("session", (session) => {
  sessions.add(session);
  session.on("close", () => sessions.delete(session));
});

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
  door.server.close(() => process.exit(0));
  for (const s of sessions) s.close();
  door.h1.close();
  setTimeout(() => {
    for (const s of sessions) s.destroy();
    door.h1.closeAllConnections();
  }, 2000).unref();
}

door.server.on("error", (err) => {
  throw err;
});
door.server.listen(start.port, start.host, () => {
  port.postMessage({
    type: "listening",
    port: (door.server.address() as AddressInfo).port,
  } satisfies ThreadEvent);
});
