import { EventEmitter } from "node:events";
import type { Socket } from "node:net";
import { encodeHeaders, HeaderListTooLarge, HpackDecoder, HpackError } from "./hpack.js";

/**
 * The server side of HTTP/2 (RFC 9113) for the stream port, where each connection is a device
 * holding one gRPC stream for hours. node:http2 keeps about 19 KiB of native state a connection
 * whatever it carries (nghttp2's session, its buffers and tables, Node's wrappers:
 * docs/benchmarks.md, thirty-sixth pass); this keeps a few hundred bytes of JavaScript beside the
 * socket. It speaks what a gRPC server needs and no more: requests with bodies, responses with
 * trailers, both directions' flow control, PING, GOAWAY; no server push, priorities ignored (as
 * RFC 9113 allows). Everything a peer can make it hold is bounded: frames by
 * SETTINGS_MAX_FRAME_SIZE, a header block by the header list bound, a stream's unread body by its
 * window, answers to control frames by the socket's buffer, resets by a rate.
 */

/** Frame types (RFC 9113 6). */
const DATA = 0x0;
const HEADERS = 0x1;
const PRIORITY = 0x2;
const RST_STREAM = 0x3;
const SETTINGS = 0x4;
const PUSH_PROMISE = 0x5;
const PING = 0x6;
const GOAWAY = 0x7;
const WINDOW_UPDATE = 0x8;
const CONTINUATION = 0x9;

/** Flags. */
const END_STREAM = 0x1;
const ACK = 0x1;
const END_HEADERS = 0x4;
const PADDED = 0x8;
const PRIORITY_FLAG = 0x20;

/** Error codes (RFC 9113 7). */
export const H2_ERROR = {
  NO_ERROR: 0x0,
  PROTOCOL_ERROR: 0x1,
  INTERNAL_ERROR: 0x2,
  FLOW_CONTROL_ERROR: 0x3,
  STREAM_CLOSED: 0x5,
  FRAME_SIZE_ERROR: 0x6,
  REFUSED_STREAM: 0x7,
  CANCEL: 0x8,
  COMPRESSION_ERROR: 0x9,
  ENHANCE_YOUR_CALM: 0xb,
} as const;

/** SETTINGS identifiers. */
const SETTINGS_HEADER_TABLE_SIZE = 0x1;
const SETTINGS_ENABLE_PUSH = 0x2;
const SETTINGS_MAX_CONCURRENT_STREAMS = 0x3;
const SETTINGS_INITIAL_WINDOW_SIZE = 0x4;
const SETTINGS_MAX_FRAME_SIZE = 0x5;
const SETTINGS_MAX_HEADER_LIST_SIZE = 0x6;

const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");
const DEFAULT_WINDOW = 65_535;
const MAX_WINDOW = 2 ** 31 - 1;
/** The largest frame we accept: the protocol's default, never raised. */
const MAX_FRAME = 16_384;
/** The table size the peer's encoder starts with, before our SETTINGS are acknowledged. */
const DEFAULT_TABLE = 4_096;
/**
 * Our HPACK table: none. A device's connection carries one stream for hours; a table would keep
 * its first request's headers (its token among them) for that long, for nothing.
 */
const OUR_TABLE = 0;
/**
 * A stream's unsent answer bytes past which write() asks the writer to wait for "drain": a
 * Writable's default mark, as node:http2's streams have it.
 */
const STREAM_HIGH_WATER = 16 * 1024;
/** DATA frames stop while the socket holds this much unsent: the peer is not reading. */
const SOCKET_HIGH_WATER = 64 * 1024;
/**
 * Control answers (SETTINGS and PING acknowledgements) past this much unsent in the socket: a
 * peer that sends them and does not read is cut off (a flood, RFC 9113 10.5).
 */
const SOCKET_CONTROL_BOUND = 256 * 1024;
/** Streams a peer may reset at once, and the rate that bucket refills (a "rapid reset" flood). */
const RESET_BURST = 1_000;
const RESET_PER_SECOND = 33;
/** After GOAWAY for an error, the socket is destroyed if the peer has not closed it by then. */
const GOAWAY_LINGER_MS = 1_000;
/** After an idle connection's GOAWAY, a peer that keeps the socket open is cut off. */
const IDLE_LINGER_MS = 5_000;

/** A request's headers, as node:http2 gives them: lowercase names, repeats as arrays. */
export type RequestHeaders = Record<string, string | string[] | undefined>;

/** Why the connection refused something: logged and counted by the caller (a RefusalSink). */
export type Refuse = (
  reason: string,
  message: string,
  fields: Record<string, string | number | undefined>,
) => void;

/** What every connection of a port shares. */
export interface H2ServerOptions {
  /** SETTINGS_MAX_CONCURRENT_STREAMS. */
  maxConcurrentStreams: number;
  /** SETTINGS_MAX_HEADER_LIST_SIZE, and the bound on a header block's compressed bytes. */
  maxHeaderListBytes: number;
  /** Fields in one header list. */
  maxHeaderPairs: number;
  /** The preface and the client's first SETTINGS must come within this. */
  handshakeTimeoutMs: number;
  /** A connection with no stream open this long is told GOAWAY. */
  idleTimeoutMs: number;
  /** A new stream: answer it, or close it. Called in the read that brought its HEADERS. */
  onStream(stream: H2Stream, headers: RequestHeaders): void;
  refuse: Refuse;
}

/** A connection error: GOAWAY with this code, then the socket closes. */
class ConnectionError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

function frameHeader(length: number, type: number, flags: number, streamId: number): Buffer {
  const header = Buffer.allocUnsafe(9);
  header.writeUIntBE(length, 0, 3);
  header[3] = type;
  header[4] = flags;
  header.writeUInt32BE(streamId, 5);
  return header;
}

/**
 * One request stream: its body arrives as "data" events (paused until resume(), the rest held
 * within the stream's flow-control window), "end" when the peer finished it, "close" once it is
 * gone either way; the answer is respond(), write() (false: wait for "drain") and end(trailers).
 */
export class H2Stream extends EventEmitter {
  /** Body bytes received while paused, in order. */
  private held: Buffer[] | undefined;
  private paused = true;
  private remoteEnded = false;
  private endEmitted = false;
  /** Body bytes handed out and not yet given back to the peer's window. */
  private consumed = 0;
  /** What the peer may still send on this stream. */
  recvWindow = DEFAULT_WINDOW;
  /** What we may still send (the peer's window for it). */
  sendWindow: number;
  private readonly out: Buffer[] = [];
  /** Unsent answer bytes. */
  outBytes = 0;
  private trailers: Buffer | undefined;
  private localEnded = false;
  private needDrain = false;
  private responded = false;
  /** True once the stream is closed: reset, or ended both ways. */
  closed = false;

  constructor(
    readonly id: number,
    private readonly connection: H2Connection,
    sendWindow: number,
  ) {
    super();
    this.sendWindow = sendWindow;
  }

  /** The connection's remote address. */
  get remoteAddress(): string | undefined {
    return this.connection.remoteAddress;
  }

  pause(): void {
    this.paused = true;
  }

  /** Hands what was held, then each chunk as it comes; on a later turn, not inside the caller. */
  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    process.nextTick(() => this.deliverHeld());
  }

  /**
   * Sends the response headers. With `endStream` they are the whole answer (gRPC's
   * trailers-only), and a request body still coming is declined (RST_STREAM NO_ERROR).
   */
  respond(status: number, fields: ReadonlyArray<readonly [string, string]>, endStream = false): void {
    if (this.closed || this.responded) return;
    this.responded = true;
    this.connection.sendHeaders(this.id, [[":status", String(status)], ...fields], endStream);
    if (!endStream) return;
    this.localEnd();
    if (!this.remoteEnded && !this.closed) this.connection.reset(this, H2_ERROR.NO_ERROR);
  }

  /** Queues body bytes; false when the unsent bytes passed the high-water mark ("drain" follows). */
  write(chunk: Buffer): boolean {
    if (this.closed || this.localEnded) return false;
    this.out.push(chunk);
    this.outBytes += chunk.length;
    this.connection.flush(this);
    if (this.outBytes >= STREAM_HIGH_WATER) {
      this.needDrain = true;
      return false;
    }
    return true;
  }

  /** Ends the answer with trailers, after every queued byte. */
  end(trailers: ReadonlyArray<readonly [string, string]>): void {
    if (this.closed || this.localEnded || this.trailers !== undefined) return;
    this.trailers = encodeHeaders(trailers);
    this.connection.flush(this);
  }

  /** Sends what the windows allow: called by the connection when they open. */
  sendable(maxFrame: number, connectionWindow: number): Buffer | undefined {
    const first = this.out[0];
    if (first === undefined) return undefined;
    const n = Math.min(first.length, maxFrame, this.sendWindow, connectionWindow);
    if (n <= 0) return undefined;
    const piece = n === first.length ? first : first.subarray(0, n);
    if (n === first.length) this.out.shift();
    else this.out[0] = first.subarray(n);
    this.outBytes -= n;
    this.sendWindow -= n;
    return piece;
  }

  /** Called after the connection sent what it could: trailers once the body is out, drain. */
  afterFlush(): Buffer | undefined {
    // As a Writable's: once everything queued is out, not as soon as it is under the mark.
    if (this.needDrain && this.outBytes === 0 && !this.closed) {
      this.needDrain = false;
      this.emit("drain");
    }
    if (this.outBytes === 0 && this.trailers !== undefined && !this.localEnded) {
      const trailers = this.trailers;
      this.trailers = undefined;
      return trailers;
    }
    return undefined;
  }

  /** The answer's END_STREAM went out. */
  localEnd(): void {
    this.localEnded = true;
    if (this.remoteEnded) this.connection.forget(this);
  }

  /** Whether the peer's END_STREAM came (the stream is half-closed, remote). */
  get peerDone(): boolean {
    return this.remoteEnded;
  }

  /** A DATA frame's body for this stream, already counted against its window. */
  received(body: Buffer, end: boolean): void {
    if (body.length > 0) {
      if (this.paused || this.held !== undefined) {
        this.held ??= [];
        this.held.push(body);
      } else {
        this.handOut(body);
      }
    }
    if (end) this.peerEnded();
  }

  /** The peer ended its side (END_STREAM on DATA or trailers). */
  peerEnded(): void {
    this.remoteEnded = true;
    if (!this.paused && this.held === undefined) this.emitEnd();
    if (this.localEnded) this.connection.forget(this);
  }

  /** Closed: by a reset either way, both sides ended, or the connection went. */
  gone(): void {
    if (this.closed) return;
    this.closed = true;
    this.held = undefined;
    this.out.length = 0;
    this.outBytes = 0;
    this.emit("close");
  }

  private deliverHeld(): void {
    while (!this.paused && !this.closed && this.held !== undefined) {
      const next = this.held.shift();
      if (this.held.length === 0) this.held = undefined;
      if (next !== undefined) this.handOut(next);
    }
    if (!this.paused && this.held === undefined && this.remoteEnded) this.emitEnd();
  }

  private handOut(body: Buffer): void {
    this.consumed += body.length;
    // The window goes back to the peer as the body is taken, in halves: a stream that is not
    // read holds at most its window here.
    if (this.consumed >= DEFAULT_WINDOW / 2) {
      this.connection.windowUpdate(this.id, this.consumed);
      this.recvWindow += this.consumed;
      this.consumed = 0;
    }
    this.emit("data", body);
  }

  private emitEnd(): void {
    if (this.endEmitted) return;
    this.endEmitted = true;
    this.emit("end");
  }
}

/** One HTTP/2 connection over a socket whose first bytes are the client's preface. */
export class H2Connection {
  private streams: Map<number, H2Stream> | undefined;
  private readonly decoder = new HpackDecoder(DEFAULT_TABLE);
  /** Bytes of an incomplete frame (or the preface) carried to the next read. */
  private partial: Buffer | undefined;
  private prefaceSeen = false;
  private settingsSeen = false;
  private lastStreamId = 0;
  private goingAway = false;
  private peerMaxFrame = MAX_FRAME;
  private peerInitialWindow = DEFAULT_WINDOW;
  private sendWindow = DEFAULT_WINDOW;
  private recvWindow = DEFAULT_WINDOW;
  /** A header block in progress (HEADERS without END_HEADERS, then CONTINUATION). */
  private block: { streamId: number; flags: number; fragments: Buffer[]; bytes: number } | undefined;
  private resetTokens = RESET_BURST;
  private resetRefilled = Date.now();
  private timer: NodeJS.Timeout | undefined;
  private ended = false;
  readonly remoteAddress: string | undefined;

  constructor(
    private readonly socket: Socket,
    private readonly options: H2ServerOptions,
  ) {
    this.remoteAddress = socket.remoteAddress;
    // No Nagle: a frame waits for nothing (node:http2 does the same for its sessions). With it,
    // a small write behind one not yet acknowledged waits for the peer's delayed ACK.
    socket.setNoDelay(true);
    socket.on("data", (chunk: Buffer) => this.read(chunk));
    socket.on("drain", () => this.flushAll());
    socket.on("close", () => this.closed());
    socket.on("error", () => {});
    // Our SETTINGS first (RFC 9113 3.4): no push, our stream and header bounds, no HPACK table.
    const settings = Buffer.allocUnsafe(6 * 4);
    [
      [SETTINGS_ENABLE_PUSH, 0],
      [SETTINGS_MAX_CONCURRENT_STREAMS, options.maxConcurrentStreams],
      [SETTINGS_MAX_HEADER_LIST_SIZE, options.maxHeaderListBytes],
      [SETTINGS_HEADER_TABLE_SIZE, OUR_TABLE],
    ].forEach(([id, value], i) => {
      settings.writeUInt16BE(id!, i * 6);
      settings.writeUInt32BE(value!, i * 6 + 2);
    });
    this.write(frameHeader(settings.length, SETTINGS, 0, 0), settings);
    this.arm(options.handshakeTimeoutMs, () => {
      options.refuse("handshake_timeout", "connection closed: no HTTP/2 preface in time", {
        address: this.remoteAddress,
        timeoutMs: options.handshakeTimeoutMs,
      });
      socket.destroy();
    });
    socket.resume();
  }

  /** Graceful shutdown: GOAWAY, no new streams, the socket ends once the open ones are done. */
  close(): void {
    if (this.goingAway || this.ended) return;
    this.goAway(H2_ERROR.NO_ERROR);
    if ((this.streams?.size ?? 0) === 0) this.socket.end();
  }

  /** Closes the socket now. */
  destroy(): void {
    this.socket.destroy();
  }

  // ---- writing ----

  private write(header: Buffer, payload?: Buffer): void {
    if (this.ended) return;
    this.socket.write(header);
    if (payload !== undefined && payload.length > 0) this.socket.write(payload);
  }

  /** A control frame's answer; a peer that makes them pile up unread is cut off. */
  private writeControl(header: Buffer, payload?: Buffer): void {
    this.write(header, payload);
    if (this.socket.writableLength > SOCKET_CONTROL_BOUND) {
      this.options.refuse("http2_flood", "connection closed: control frames answered faster than read", {
        address: this.remoteAddress,
      });
      this.socket.destroy();
    }
  }

  sendHeaders(streamId: number, fields: ReadonlyArray<readonly [string, string]>, endStream: boolean): void {
    this.sendBlock(streamId, encodeHeaders(fields), endStream);
  }

  private sendBlock(streamId: number, block: Buffer, endStream: boolean): void {
    const end = endStream ? END_STREAM : 0;
    if (block.length <= this.peerMaxFrame) {
      this.write(frameHeader(block.length, HEADERS, END_HEADERS | end, streamId), block);
      return;
    }
    this.socket.cork();
    for (let at = 0; at < block.length; at += this.peerMaxFrame) {
      const piece = block.subarray(at, at + this.peerMaxFrame);
      const last = at + this.peerMaxFrame >= block.length ? END_HEADERS : 0;
      const type = at === 0 ? HEADERS : CONTINUATION;
      this.write(frameHeader(piece.length, type, last | (at === 0 ? end : 0), streamId), piece);
    }
    this.socket.uncork();
  }

  windowUpdate(streamId: number, increment: number): void {
    const payload = Buffer.allocUnsafe(4);
    payload.writeUInt32BE(increment, 0);
    this.write(frameHeader(4, WINDOW_UPDATE, 0, streamId), payload);
  }

  /** Sends a stream's queued body within the windows, then its trailers once it is all out. */
  flush(stream: H2Stream): void {
    if (this.ended) return;
    this.socket.cork();
    while (this.socket.writableLength < SOCKET_HIGH_WATER) {
      const piece = stream.sendable(this.peerMaxFrame, this.sendWindow);
      if (piece === undefined) break;
      this.sendWindow -= piece.length;
      this.write(frameHeader(piece.length, DATA, 0, stream.id), piece);
    }
    const trailers = stream.afterFlush();
    if (trailers !== undefined) {
      this.sendBlock(stream.id, trailers, true);
      stream.localEnd();
      // The answer is complete; a request still coming is not wanted (RFC 9113 8.1).
      if (!stream.peerDone && !stream.closed) this.reset(stream, H2_ERROR.NO_ERROR);
    }
    this.socket.uncork();
  }

  private flushAll(): void {
    if (this.streams === undefined) return;
    for (const stream of this.streams.values()) this.flush(stream);
  }

  reset(stream: H2Stream, code: number): void {
    const payload = Buffer.allocUnsafe(4);
    payload.writeUInt32BE(code, 0);
    this.write(frameHeader(4, RST_STREAM, 0, stream.id), payload);
    this.forget(stream);
  }

  /** The stream is closed: out of the map, "close" emitted, the idle clock started when none is left. */
  forget(stream: H2Stream): void {
    if (this.streams?.delete(stream.id)) {
      if (this.streams.size === 0) {
        this.streams = undefined;
        if (this.goingAway) this.socket.end();
        else this.armIdle();
      }
    }
    stream.gone();
  }

  private goAway(code: number): void {
    this.goingAway = true;
    const payload = Buffer.allocUnsafe(8);
    payload.writeUInt32BE(this.lastStreamId, 0);
    payload.writeUInt32BE(code, 4);
    this.write(frameHeader(8, GOAWAY, 0, 0), payload);
  }

  private fail(err: ConnectionError): void {
    if (this.ended) return;
    this.options.refuse("http2_protocol", `connection closed: ${err.message}`, {
      address: this.remoteAddress,
      code: err.code,
    });
    this.goAway(err.code);
    this.socket.end();
    this.ended = true;
    setTimeout(() => this.socket.destroy(), GOAWAY_LINGER_MS).unref();
  }

  // ---- timers ----

  private arm(ms: number, fire: () => void): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(fire, ms);
    this.timer.unref();
  }

  private armIdle(): void {
    if (this.ended || this.goingAway) return;
    this.arm(this.options.idleTimeoutMs, () => {
      this.options.refuse("idle_connection", "connection closed: idle", {
        address: this.remoteAddress,
        timeoutMs: this.options.idleTimeoutMs,
      });
      this.close();
      this.arm(IDLE_LINGER_MS, () => this.socket.destroy());
    });
  }

  private closed(): void {
    this.ended = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    const streams = this.streams;
    this.streams = undefined;
    if (streams !== undefined) for (const s of streams.values()) s.gone();
  }

  // ---- reading ----

  private read(chunk: Buffer): void {
    if (this.ended) return;
    let data = this.partial === undefined ? chunk : Buffer.concat([this.partial, chunk]);
    this.partial = undefined;
    try {
      if (!this.prefaceSeen) {
        if (data.length < PREFACE.length) {
          if (!data.equals(PREFACE.subarray(0, data.length)))
            throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR, "no preface");
          this.partial = data;
          return;
        }
        if (!data.subarray(0, PREFACE.length).equals(PREFACE)) {
          throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR, "no preface");
        }
        this.prefaceSeen = true;
        data = data.subarray(PREFACE.length);
      }
      let at = 0;
      while (data.length - at >= 9 && !this.ended) {
        const length = data.readUIntBE(at, 3);
        if (length > MAX_FRAME)
          throw new ConnectionError(H2_ERROR.FRAME_SIZE_ERROR, "a frame past SETTINGS_MAX_FRAME_SIZE");
        if (data.length - at < 9 + length) break;
        const type = data[at + 3]!;
        const flags = data[at + 4]!;
        const streamId = data.readUInt32BE(at + 5) & 0x7fffffff;
        const payload = data.subarray(at + 9, at + 9 + length);
        at += 9 + length;
        this.frame(type, flags, streamId, payload);
      }
      // Only the incomplete frame is kept, copied off the read's buffer (at most 16 KiB + 9).
      if (at < data.length && !this.ended) this.partial = Buffer.from(data.subarray(at));
    } catch (err) {
      if (err instanceof ConnectionError) {
        this.fail(err);
        return;
      }
      // A fault in this code (or in what a stream's listener did with the bytes) costs this
      // connection, not the thread and every device on it: counted and logged with the
      // error, the socket closed.
      this.options.refuse("http2_internal_error", `connection closed: ${String(err)}`, {
        address: this.remoteAddress,
      });
      this.ended = true;
      this.socket.destroy();
    }
  }

  private frame(type: number, flags: number, streamId: number, payload: Buffer): void {
    if (!this.settingsSeen && type !== SETTINGS) {
      throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR, "the preface's SETTINGS did not come first");
    }
    if (this.block !== undefined && type !== CONTINUATION) {
      throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR, "a frame inside a header block");
    }
    switch (type) {
      case DATA:
        this.data(flags, streamId, payload);
        return;
      case HEADERS:
        this.headers(flags, streamId, payload);
        return;
      case PRIORITY:
        if (streamId === 0) throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR, "PRIORITY on stream 0");
        if (payload.length !== 5)
          throw new ConnectionError(H2_ERROR.FRAME_SIZE_ERROR, "PRIORITY not 5 bytes");
        return;
      case RST_STREAM:
        this.rstStream(streamId, payload);
        return;
      case SETTINGS:
        this.settings(flags, streamId, payload);
        return;
      case PUSH_PROMISE:
        throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR, "PUSH_PROMISE from a client");
      case PING:
        if (streamId !== 0) throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR, "PING on a stream");
        if (payload.length !== 8) throw new ConnectionError(H2_ERROR.FRAME_SIZE_ERROR, "PING not 8 bytes");
        if ((flags & ACK) === 0) this.writeControl(frameHeader(8, PING, ACK, 0), Buffer.from(payload));
        return;
      case GOAWAY:
        if (streamId !== 0) throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR, "GOAWAY on a stream");
        // The peer opens nothing more; what is open finishes, then the socket ends.
        this.goingAway = true;
        if (this.streams === undefined) this.socket.end();
        return;
      case WINDOW_UPDATE:
        this.windowUpdateReceived(streamId, payload);
        return;
      case CONTINUATION:
        this.continuation(flags, streamId, payload);
        return;
      default:
        // Unknown frame types are ignored (RFC 9113 4.1).
        return;
    }
  }

  /** A frame's payload without its padding (PADDED flag). */
  private unpadded(flags: number, payload: Buffer, extra = 0): Buffer {
    if ((flags & PADDED) === 0) return payload.subarray(extra);
    if (payload.length < 1)
      throw new ConnectionError(H2_ERROR.FRAME_SIZE_ERROR, "a padded frame without its pad length");
    const pad = payload[0]!;
    if (pad + 1 + extra > payload.length)
      throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR, "padding past the frame");
    return payload.subarray(1 + extra, payload.length - pad);
  }

  private data(flags: number, streamId: number, payload: Buffer): void {
    if (streamId === 0) throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR, "DATA on stream 0");
    // Flow control counts the whole frame, padding too, whatever becomes of the stream.
    if (payload.length > this.recvWindow)
      throw new ConnectionError(H2_ERROR.FLOW_CONTROL_ERROR, "DATA past the connection's window");
    this.recvWindow -= payload.length;
    // The connection's window is given back at once: each stream's own bounds what is held.
    if (this.recvWindow <= DEFAULT_WINDOW / 2) {
      this.windowUpdate(0, DEFAULT_WINDOW - this.recvWindow);
      this.recvWindow = DEFAULT_WINDOW;
    }
    const body = this.unpadded(flags, payload);
    const stream = this.streams?.get(streamId);
    if (stream === undefined || stream.peerDone) {
      if (streamId > this.lastStreamId)
        throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR, "DATA on an idle stream");
      // A stream we closed (reset, answered) or whose peer ended: STREAM_CLOSED, nothing kept.
      if (stream !== undefined) this.reset(stream, H2_ERROR.STREAM_CLOSED);
      return;
    }
    if (payload.length > stream.recvWindow) {
      this.reset(stream, H2_ERROR.FLOW_CONTROL_ERROR);
      return;
    }
    stream.recvWindow -= payload.length;
    const padding = payload.length - body.length;
    if (padding > 0) this.windowUpdate(streamId, padding);
    stream.recvWindow += padding;
    stream.received(body, (flags & END_STREAM) !== 0);
  }

  private headers(flags: number, streamId: number, payload: Buffer): void {
    if (streamId === 0 || streamId % 2 === 0)
      throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR, "HEADERS on a stream a client cannot open");
    const fragment = this.unpadded(flags, payload, (flags & PRIORITY_FLAG) !== 0 ? 5 : 0);
    this.block = { streamId, flags, fragments: [], bytes: 0 };
    this.addFragment(fragment);
    if ((flags & END_HEADERS) !== 0) this.endBlock();
  }

  private continuation(flags: number, streamId: number, payload: Buffer): void {
    if (this.block === undefined || this.block.streamId !== streamId) {
      throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR, "CONTINUATION without its HEADERS");
    }
    this.addFragment(payload);
    if ((flags & END_HEADERS) !== 0) this.endBlock();
  }

  private addFragment(fragment: Buffer): void {
    const block = this.block!;
    block.bytes += fragment.length;
    // A compressed block is never larger than its list: past that, it is a flood (CONTINUATION
    // without end), and it cannot be skipped without decoding (the table would fall out of step).
    if (block.bytes > this.options.maxHeaderListBytes) {
      throw new ConnectionError(H2_ERROR.ENHANCE_YOUR_CALM, "a header block past the header list bound");
    }
    block.fragments.push(Buffer.from(fragment));
  }

  private endBlock(): void {
    const { streamId, flags, fragments } = this.block!;
    this.block = undefined;
    const bytes = fragments.length === 1 ? fragments[0]! : Buffer.concat(fragments);
    let fields: Array<[string, string]> | undefined;
    try {
      fields = this.decoder.decode(bytes, {
        maxBytes: this.options.maxHeaderListBytes,
        maxPairs: this.options.maxHeaderPairs,
      });
    } catch (err) {
      if (err instanceof HpackError)
        throw new ConnectionError(H2_ERROR.COMPRESSION_ERROR, `HPACK: ${err.message}`);
      if (!(err instanceof HeaderListTooLarge)) throw err;
    }
    const existing = this.streams?.get(streamId);
    if (existing !== undefined) {
      // Trailers: they must end the stream; gRPC requests carry none worth reading.
      if ((flags & END_STREAM) === 0 || existing.peerDone) {
        this.reset(existing, H2_ERROR.PROTOCOL_ERROR);
        return;
      }
      existing.peerEnded();
      return;
    }
    if (streamId <= this.lastStreamId) {
      // A stream closed already (one we reset may still have trailers in flight): ignored, as
      // RFC 9113 5.1 lets a closed stream's frames be; its block was decoded, so the table
      // stays in step.
      return;
    }
    this.lastStreamId = streamId;
    if (this.goingAway) {
      this.write(...rstFrame(streamId, H2_ERROR.REFUSED_STREAM));
      return;
    }
    const stream = new H2Stream(streamId, this, this.peerInitialWindow);
    if (fields === undefined) {
      // Over the header bound: a 431 would need a body to explain; the stream is refused.
      this.options.refuse("header_list_too_large", "stream refused: request headers over the bound", {
        address: this.remoteAddress,
        limit: this.options.maxHeaderListBytes,
      });
      this.write(...rstFrame(streamId, H2_ERROR.REFUSED_STREAM));
      return;
    }
    const headers = requestHeaders(fields);
    if (headers === undefined) {
      this.write(...rstFrame(streamId, H2_ERROR.PROTOCOL_ERROR));
      return;
    }
    if ((this.streams?.size ?? 0) >= this.options.maxConcurrentStreams) {
      this.write(...rstFrame(streamId, H2_ERROR.REFUSED_STREAM));
      return;
    }
    this.streams ??= new Map();
    this.streams.set(streamId, stream);
    clearTimeout(this.timer);
    this.timer = undefined;
    if ((flags & END_STREAM) !== 0) stream.peerEnded();
    this.options.onStream(stream, headers);
  }

  private rstStream(streamId: number, payload: Buffer): void {
    if (streamId === 0) throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR, "RST_STREAM on stream 0");
    if (payload.length !== 4) throw new ConnectionError(H2_ERROR.FRAME_SIZE_ERROR, "RST_STREAM not 4 bytes");
    if (streamId > this.lastStreamId)
      throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR, "RST_STREAM on an idle stream");
    const now = Date.now();
    this.resetTokens = Math.min(
      RESET_BURST,
      this.resetTokens + ((now - this.resetRefilled) / 1000) * RESET_PER_SECOND,
    );
    this.resetRefilled = now;
    if (--this.resetTokens < 0)
      throw new ConnectionError(H2_ERROR.ENHANCE_YOUR_CALM, "streams reset faster than the bound");
    const stream = this.streams?.get(streamId);
    if (stream === undefined) return;
    this.streams!.delete(streamId);
    if (this.streams!.size === 0) {
      this.streams = undefined;
      if (this.goingAway) this.socket.end();
      else this.armIdle();
    }
    stream.gone();
  }

  private settings(flags: number, streamId: number, payload: Buffer): void {
    if (streamId !== 0) throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR, "SETTINGS on a stream");
    if ((flags & ACK) !== 0) {
      if (payload.length !== 0)
        throw new ConnectionError(H2_ERROR.FRAME_SIZE_ERROR, "a SETTINGS ACK with a payload");
      // The peer applied ours: its encoder now works within our table size.
      this.decoder.setMaxTableSize(OUR_TABLE);
      return;
    }
    if (payload.length % 6 !== 0)
      throw new ConnectionError(H2_ERROR.FRAME_SIZE_ERROR, "SETTINGS not a multiple of 6 bytes");
    for (let at = 0; at < payload.length; at += 6) {
      const id = payload.readUInt16BE(at);
      const value = payload.readUInt32BE(at + 2);
      if (id === SETTINGS_ENABLE_PUSH && value > 1)
        throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR, "ENABLE_PUSH not 0 or 1");
      if (id === SETTINGS_INITIAL_WINDOW_SIZE) {
        if (value > MAX_WINDOW)
          throw new ConnectionError(H2_ERROR.FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE past 2^31-1");
        const delta = value - this.peerInitialWindow;
        this.peerInitialWindow = value;
        if (this.streams !== undefined) {
          for (const s of this.streams.values()) {
            s.sendWindow += delta;
            if (s.sendWindow > MAX_WINDOW)
              throw new ConnectionError(H2_ERROR.FLOW_CONTROL_ERROR, "a stream's window past 2^31-1");
          }
        }
      }
      if (id === SETTINGS_MAX_FRAME_SIZE) {
        if (value < MAX_FRAME || value > 0xffffff)
          throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range");
        this.peerMaxFrame = value;
      }
      // HEADER_TABLE_SIZE: our encoder keeps no table. MAX_CONCURRENT_STREAMS: we push none.
      // MAX_HEADER_LIST_SIZE: our answers are a few fields. Unknown settings are ignored.
    }
    this.writeControl(frameHeader(0, SETTINGS, ACK, 0));
    if (!this.settingsSeen) {
      this.settingsSeen = true;
      // The handshake is done: the idle clock runs until a stream opens.
      this.armIdle();
    }
    this.flushAll();
  }

  private windowUpdateReceived(streamId: number, payload: Buffer): void {
    if (payload.length !== 4)
      throw new ConnectionError(H2_ERROR.FRAME_SIZE_ERROR, "WINDOW_UPDATE not 4 bytes");
    const increment = payload.readUInt32BE(0) & 0x7fffffff;
    if (streamId === 0) {
      if (increment === 0) throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR, "a WINDOW_UPDATE of 0");
      this.sendWindow += increment;
      if (this.sendWindow > MAX_WINDOW)
        throw new ConnectionError(H2_ERROR.FLOW_CONTROL_ERROR, "the connection's window past 2^31-1");
      this.flushAll();
      return;
    }
    const stream = this.streams?.get(streamId);
    if (stream === undefined) {
      if (streamId > this.lastStreamId)
        throw new ConnectionError(H2_ERROR.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream");
      return;
    }
    if (increment === 0) {
      this.reset(stream, H2_ERROR.PROTOCOL_ERROR);
      return;
    }
    stream.sendWindow += increment;
    if (stream.sendWindow > MAX_WINDOW) {
      this.reset(stream, H2_ERROR.FLOW_CONTROL_ERROR);
      return;
    }
    this.flush(stream);
  }
}

function rstFrame(streamId: number, code: number): [Buffer, Buffer] {
  const payload = Buffer.allocUnsafe(4);
  payload.writeUInt32BE(code, 0);
  return [frameHeader(4, RST_STREAM, 0, streamId), payload];
}

/** Connection-specific fields HTTP/2 forbids (RFC 9113 8.2.2). */
const CONNECTION_FIELDS = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "upgrade",
]);
const REQUEST_PSEUDO = new Set([":method", ":scheme", ":path", ":authority"]);

/**
 * A request's fields as node:http2 would give them, or undefined for a malformed request
 * (RFC 9113 8.3): pseudo-fields first, each once, the three a request needs, no uppercase
 * names, no connection-specific fields, `te` only "trailers".
 */
function requestHeaders(fields: ReadonlyArray<readonly [string, string]>): RequestHeaders | undefined {
  const headers: RequestHeaders = {};
  let regular = false;
  for (const [name, value] of fields) {
    if (name !== name.toLowerCase() || name.length === 0) return undefined;
    if (name.startsWith(":")) {
      if (regular || !REQUEST_PSEUDO.has(name) || headers[name] !== undefined) return undefined;
      headers[name] = value;
      continue;
    }
    regular = true;
    if (CONNECTION_FIELDS.has(name) || (name === "te" && value !== "trailers")) return undefined;
    const before = headers[name];
    headers[name] =
      before === undefined ? value : Array.isArray(before) ? [...before, value] : [before, value];
  }
  if (
    headers[":method"] === undefined ||
    headers[":scheme"] === undefined ||
    headers[":path"] === undefined
  ) {
    return undefined;
  }
  return headers;
}
