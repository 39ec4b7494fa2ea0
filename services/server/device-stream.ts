import type * as http2 from "node:http2";
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { WireType } from "@bufbuild/protobuf/wire";
import { Code, ConnectError } from "@connectrpc/connect";
import { parseTimeout, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import type { Entry } from "../../gen/switchboard/v1/entry_pb.js";
import {
  type ConnectRequest,
  ConnectRequestSchema,
  type ConnectResponse,
  ConnectResponseSchema,
  GatewayService,
  MessageFrameSchema,
} from "../../gen/switchboard/v1/gateway_pb.js";
import type { WireErrors } from "../common/boundary.js";
import { entryBytes } from "../common/entry-bytes.js";
import { DeadlineError } from "../common/errors.js";
import { answerFrame, type SizedFrame, varintSize, writeVarint } from "../common/hot-encoding.js";
import type { Refusals } from "../common/refusals.js";
import type { StreamErrors } from "../common/rpc-telemetry.js";
import { dropUnknownFields, type FrameSink, type GatewayCore } from "../gateway/index.js";
import { DEVICE_STREAM_PATH, header, isGrpcDeviceStream } from "./device-stream-request.js";
import { addressKey } from "./edge.js";
import type { DirectStream } from "./front-door.js";
import { FLAG_COMPRESSED } from "./grpc-wire.js";
import { fixGrpcStatus } from "./wire-errors.js";

/** The device stream's path. */
const PATH = DEVICE_STREAM_PATH;
/** Frames written to the connection in one write at most. */
const FRAMES_PER_WRITE = 64;
const EMPTY: Buffer = Buffer.alloc(0);

/**
 * What the fast path uses of node:http2's server stream: that stream itself, or a stream thread's
 * stand-in for one served on another thread (stream-threads.ts).
 */
export interface DeviceHttp2Stream {
  readonly destroyed: boolean;
  readonly closed: boolean;
  readonly headersSent: boolean;
  readonly readableEnded: boolean;
  readonly session?: { readonly socket?: { readonly remoteAddress?: string | undefined } } | undefined;
  respond(headers: http2.OutgoingHttpHeaders, options: { waitForTrailers: boolean }): void;
  write(chunk: Uint8Array): boolean;
  end(): void;
  sendTrailers(trailers: http2.OutgoingHttpHeaders): void;
  pause(): void;
  on(event: "data", listener: (chunk: Buffer) => void): unknown;
  on(event: "error", listener: (err: unknown) => void): unknown;
  on(event: "end" | "close" | "drain", listener: () => void): unknown;
  off(event: "data", listener: (chunk: Buffer) => void): unknown;
  off(event: "end" | "close" | "drain", listener: () => void): unknown;
  once(event: "wantTrailers", listener: () => void): unknown;
}

/** The fast path as the front door takes it, and for streams served on a stream thread. */
export interface DeviceStreams extends DirectStream {
  serve(stream: DeviceHttp2Stream, headers: http2.IncomingHttpHeaders): void;
  /**
   * Reads another thread made (the stream port's) reached this one `waitedMs` after that thread
   * read them: the sends among them waited that long before the gateway could (admission.ts).
   */
  handedOver(waitedMs: number): void;
}

/** What the fast path needs besides the gateway. */
export interface DeviceStreamDeps {
  gateway: GatewayCore;
  /** Largest frame a device may send, in bytes (gatewayReadMaxBytes). */
  readMaxBytes: number;
  /** The error boundary's translation (boundary.ts), for the status in the trailers. */
  wireErrors: WireErrors;
  /** Counts streams that end with an error, as serverTelemetry does for the other streams. */
  streamErrors: StreamErrors;
  /** Where a malformed stream is logged, as the edge logs it for every other request. */
  refusals: Refusals;
}

/**
 * The device stream (`GatewayService.Connect`) over gRPC on HTTP/2, served straight on Node's
 * HTTP/2 stream, before node:http2's compatibility layer or connect-node see it. Every other
 * request, and this one over the Connect protocol, gRPC-Web, JSON, with compressed messages or
 * from a browser (an Origin header: CORS applies), goes the general way (front-door.ts).
 *
 * Why: at 1,000 devices, connect-node's per-message pipeline for streams (a chain of async
 * generators per direction: split, decompress, parse, serialise, compress, join, each message
 * through each) was the largest single cost of the server's one thread, about 17 % of it plus the
 * garbage it made (docs/benchmarks.md, "Where the time goes"). A device stream needs none of its
 * generality: here a read is parsed into the frames it holds in one step, and everything the
 * session has queued is encoded and written in one write, with one await per batch. The
 * compatibility layer (Http2ServerRequest and Http2ServerResponse) is skipped too: a second
 * readable stream every read passed through, and about 2 KiB of JS heap per idle device
 * (listeners, header and trailer objects, stream state) held for as long as it is connected.
 *
 * The wire protocol is gRPC's, as connect-node speaks it: `application/grpc` or `+proto`, the
 * 5-byte envelope, `grpc-timeout`, the status in trailers (`grpc-status`, `grpc-message`,
 * `grpc-status-details-bin`, written by Connect's own setTrailerStatus and escaped as the edge
 * escapes every gRPC answer's), HTTP/2 flow control as back-pressure. The behaviour is the
 * connect handler's (handlers.ts): the same authentication, unknown fields dropped from every
 * frame, the same session, the same error boundary, read limit and codes.
 * test/e2e/device-stream-wire.test.ts, test/e2e/grpc-js.test.ts and the other stream tests run
 * against it with stock @grpc/grpc-js and connect-es clients.
 */
export function deviceStreams(deps: DeviceStreamDeps): DeviceStreams {
  return {
    accepts: isGrpcDeviceStream,
    serve: (stream, headers) => {
      void serve(stream, headers, deps);
    },
    handedOver: (waitedMs) => deps.gateway.handedOver(waitedMs),
  };
}

/**
 * Authenticates the stream and opens its session, then hands it to `pump` without waiting for
 * it: an async function holds its arguments until it returns, and the request's headers (a
 * dictionary of a few hundred bytes and the bearer token) are not worth keeping for the hours an
 * idle device stays connected.
 */
async function serve(
  stream: DeviceHttp2Stream,
  headers: http2.IncomingHttpHeaders,
  deps: DeviceStreamDeps,
): Promise<void> {
  const { gateway } = deps;
  const contentType = String(headers["content-type"]);
  let session: Session;
  let deadline: NodeJS.Timeout | undefined;
  try {
    const timeout = parseTimeout(header(headers, "grpc-timeout"), Number.MAX_SAFE_INTEGER);
    if (timeout.error) throw timeout.error;
    session = gateway.open(await gateway.authenticate(header(headers, "authorization")));
    if (timeout.timeoutMs !== undefined) {
      const ms = timeout.timeoutMs;
      deadline = setTimeout(
        () => session.close(new DeadlineError(`the stream's deadline of ${ms} ms passed`)),
        ms,
      );
    }
  } catch (err) {
    finish(stream, contentType, err, deps);
    return;
  }
  void pump(stream, contentType, session, deadline, deps);
}

type Session = ReturnType<GatewayCore["open"]>;

/** Reads the device's frames and writes the session's, until either side ends. */
async function pump(
  stream: DeviceHttp2Stream,
  contentType: string,
  session: Session,
  deadline: NodeJS.Timeout | undefined,
  deps: DeviceStreamDeps,
): Promise<void> {
  let failure: unknown;
  try {
    // The device may have gone while it was authenticated (a reset, a lost connection): its
    // close event is past, so the session is closed here, and there is nobody to answer
    // (respond would throw on the closed stream).
    if (stream.destroyed || stream.closed) {
      session.close();
      return;
    }
    // The device goes away later (reset, connection lost): forget the stream.
    stream.on("close", () => session.close());
    respond(stream, contentType);
    readFrames(stream, deps, session.startPushed());
    // The batch is never held in a variable across an await: once encoded, its frames (and the
    // entries they carry) are garbage unless something else holds them.
    while (await session.outbound.framesReady()) {
      if (stream.destroyed) break;
      if (!stream.write(encodeFrames(session.outbound.takeBatch(FRAMES_PER_WRITE)))) await drained(stream);
    }
  } catch (err) {
    failure = err;
  } finally {
    if (deadline !== undefined) clearTimeout(deadline);
  }
  finish(stream, contentType, failure, deps);
}

/** The answer's headers; its trailers follow when it ends (finish). */
function respond(stream: DeviceHttp2Stream, contentType: string): void {
  stream.respond({ ":status": 200, "content-type": contentType }, { waitForTrailers: true });
}

/** Ends the answer with the call's status in trailers (headers first if none were sent). */
function finish(
  stream: DeviceHttp2Stream,
  contentType: string,
  thrown: unknown,
  deps: DeviceStreamDeps,
): void {
  if (stream.destroyed || stream.closed) return;
  const error = thrown === undefined ? undefined : deps.wireErrors(thrown, PATH, true);
  if (error !== undefined) deps.streamErrors("grpc", `${GatewayService.typeName}/Connect`, error);
  if (!stream.headersSent) respond(stream, contentType);
  const trailers: http2.OutgoingHttpHeaders = {};
  setTrailerStatus(new Headers(), error).forEach((value, key) => {
    trailers[key] = value;
  });
  fixGrpcStatus(trailers, PATH, deps.refusals, addressKey(stream.session?.socket?.remoteAddress));
  stream.once("wantTrailers", () => stream.sendTrailers(trailers));
  stream.end();
  // A device still sending after the end is not read any more: what it sends waits in HTTP/2
  // flow control (the stream's window), not in memory, until it ends its side or the connection
  // goes (the edge's idle and per-connection stream bounds cover a client that never does). No
  // RST_STREAM(NO_ERROR) here: stock grpc-js can read it before the trailers and report INTERNAL.
  if (!stream.readableEnded) stream.pause();
}

/**
 * Reads the device's frames from the request body as it arrives, unknown fields dropped, and
 * pushes each to the sink. Every frame of a read is parsed and handed over in the 'data' event
 * itself: an async iterator over the body with an async generator on top cost a few promises
 * per read and per frame, the largest source of garbage on the read side (docs/benchmarks.md).
 * Dispatching a frame is synchronous, so the body is read as fast as it is handled either way;
 * HTTP/2 flow control stays the back-pressure. When the sink wants no more, or a frame is
 * refused, reading stops: what the device sends after that waits in the stream's window.
 */
function readFrames(stream: DeviceHttp2Stream, deps: DeviceStreamDeps, sink: FrameSink): void {
  const { readMaxBytes, gateway } = deps;
  let buffered: Buffer = EMPTY;
  let stopped = false;
  // The error listener stays: a body that fails after reading stopped must not throw.
  const stop = () => {
    stopped = true;
    stream.off("data", onData);
    stream.off("end", onEnd);
    if (!stream.readableEnded) stream.pause();
  };
  const onError = (err: unknown) => {
    if (stopped) return;
    stop();
    sink.fail(err);
  };
  const onEnd = () => {
    stop();
    if (buffered.length > 0) {
      sink.fail(new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument));
    } else {
      void sink.end();
    }
  };
  const onData = (chunk: Buffer) => {
    buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
    let offset = 0;
    try {
      while (buffered.length - offset >= 5) {
        const flags = buffered[offset]!;
        const length = buffered.readUInt32BE(offset + 1);
        // Refused on the header, before the message is buffered.
        if (length > readMaxBytes) {
          throw new ConnectError(
            `message size ${length} is larger than configured readMaxBytes ${readMaxBytes}`,
            Code.ResourceExhausted,
          );
        }
        if (buffered.length - offset - 5 < length) break;
        if ((flags & FLAG_COMPRESSED) !== 0) {
          // The request said it compresses nothing (no grpc-encoding): a protocol error.
          throw new ConnectError(
            "protocol error: received compressed message without grpc-encoding",
            Code.Internal,
          );
        }
        const data = buffered.subarray(offset + 5, offset + 5 + length);
        offset += 5 + length;
        let message: ConnectRequest;
        try {
          message = fromBinary(ConnectRequestSchema, data);
        } catch (err) {
          throw new ConnectError(`parse binary: ${String((err as Error).message)}`, Code.InvalidArgument);
        }
        const dropped = dropUnknownFields(message);
        if (dropped > 0) {
          gateway.refused(
            "unknown_fields",
            "dropped fields this server does not know from a device message",
            {
              procedure: PATH,
              bytes: dropped,
            },
          );
        }
        if (!sink.frame(message)) {
          stop();
          return;
        }
      }
    } catch (err) {
      onError(err);
      return;
    }
    buffered = offset === buffered.length ? EMPTY : buffered.subarray(offset);
  };
  stream.on("data", onData);
  stream.on("end", onEnd);
  stream.on("error", onError);
}

const MESSAGE_TAG = (ConnectResponseSchema.field.message!.number << 3) | WireType.LengthDelimited;
const ENTRIES_TAG = (MessageFrameSchema.field.entries!.number << 3) | WireType.LengthDelimited;

/**
 * A frame sized before it is written: a message frame by its entries' bytes (`inner` is the
 * MessageFrame's length), a send_ack or receipt frame by its encoder in hot-encoding.ts (written
 * in place), any other frame as toBinary's bytes.
 */
type Sized =
  | { size: number; bytes: Uint8Array; entries?: undefined; inner?: undefined; frame?: undefined }
  | { size: number; bytes?: undefined; entries: readonly Entry[]; inner: number; frame?: undefined }
  | { size: number; bytes?: undefined; entries?: undefined; inner?: undefined; frame: SizedFrame };

function sized(f: ConnectResponse): Sized {
  if (f.frame.case !== "message") {
    const frame = answerFrame(f);
    if (frame !== undefined) return { size: frame.size, frame };
    const bytes = toBinary(ConnectResponseSchema, f);
    return { size: bytes.length, bytes };
  }
  const entries = f.frame.value.entries;
  let inner = 0;
  for (const e of entries) {
    const n = entryBytes(e).length;
    inner += varintSize(ENTRIES_TAG) + varintSize(n) + n;
  }
  return { size: varintSize(MESSAGE_TAG) + varintSize(inner) + inner, entries, inner };
}

/** Writes a sized frame at offset; returns the offset after it. */
function writeFrame(s: Sized, out: Buffer, offset: number): number {
  if (s.frame !== undefined) return s.frame.write(out, offset);
  if (s.bytes !== undefined) {
    out.set(s.bytes, offset);
    return offset + s.bytes.length;
  }
  let at = writeVarint(out, offset, MESSAGE_TAG);
  at = writeVarint(out, at, s.inner);
  for (const e of s.entries) {
    const bytes = entryBytes(e);
    at = writeVarint(out, at, ENTRIES_TAG);
    at = writeVarint(out, at, bytes.length);
    out.set(bytes, at);
    at += bytes.length;
  }
  return at;
}

/**
 * A frame's protobuf encoding. A message frame is written around its entries' bytes, each entry
 * encoded once however many devices it goes to (entry-bytes.ts; in one process the store's
 * encoding is that one): a group of 100 sends the same entry object to 99
 * streams (entryForDevice returns it as is when it carries no per-device ciphertexts), and
 * encoding it 99 times was most of what a group delivery cost. The frame around them is sized
 * first and written straight into its buffer (protobuf-es's writer grew a buffer from 128 bytes
 * and copied it out again for every frame), as are the send_ack and receipt frames every send
 * makes (hot-encoding.ts). The bytes are exactly what toBinary writes (frame-encoding.test.ts).
 */
export function encodeFrame(f: ConnectResponse): Uint8Array {
  const s = sized(f);
  if (s.bytes !== undefined) return s.bytes;
  const out = Buffer.alloc(s.size);
  writeFrame(s, out, 0);
  return out;
}

/**
 * The frames as gRPC messages in one buffer: a flags byte, a 32-bit big-endian length, the bytes,
 * each frame written in place.
 */
export function encodeFrames(batch: readonly ConnectResponse[]): Buffer {
  const sizes = batch.map(sized);
  let total = 0;
  for (const s of sizes) total += 5 + s.size;
  const out = Buffer.allocUnsafe(total);
  let offset = 0;
  for (const s of sizes) {
    out[offset] = 0;
    out.writeUInt32BE(s.size, offset + 1);
    const end = offset + 5 + s.size;
    offset = writeFrame(s, out, offset + 5);
    // The buffer is not zeroed: a frame written short or long would send old memory, or shift
    // every frame after it. A bug here ends the stream instead.
    if (offset !== end) throw new Error(`frame encoding wrote ${offset - end + s.size} of ${s.size} bytes`);
  }
  return out;
}

/** Resolves when the stream can take more (HTTP/2 flow control), or is gone. */
function drained(stream: DeviceHttp2Stream): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      stream.off("drain", done);
      stream.off("close", done);
      resolve();
    };
    stream.on("drain", done);
    stream.on("close", done);
  });
}
