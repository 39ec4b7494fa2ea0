import * as http2 from "node:http2";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import {
  type ConnectRequest,
  ConnectRequestSchema,
  type ConnectResponse,
  ConnectResponseSchema,
  GatewayService,
} from "../gen/switchboard/v1/gateway_pb.js";

/** What a stream reports to its owner. */
export interface StreamHandlers {
  onFrame(frame: ConnectResponse): void;
  /** The stream ended; `error` is set unless it ended with grpc-status 0. */
  onEnd(error: string | undefined): void;
}

/** One device's Connect stream. */
export interface DeviceStream {
  write(frame: ConnectRequest["frame"]): void;
  /** Half-closes; the server then ends the stream after answering what was sent. */
  end(): void;
  /** Drops the connection. */
  destroy(): void;
}

export type ClientKind = "raw" | "connect";

export function openStream(
  kind: ClientKind,
  url: string,
  token: string,
  handlers: StreamHandlers,
): DeviceStream {
  return kind === "raw" ? new RawStream(url, token, handlers) : new ConnectStream(url, token, handlers);
}

// Streams with frames waiting are written together once per event-loop turn: one write (and
// usually one HTTP/2 DATA frame and one syscall) per stream per turn instead of one per frame.
const dirty = new Set<RawStream>();
let flushScheduled = false;

function flushAll(): void {
  flushScheduled = false;
  for (const s of dirty) s.flush();
  dirty.clear();
}

/**
 * A gRPC client for the one bidi method written straight on node:http2: the same bytes on the
 * wire as any gRPC client (length-prefixed protobuf, grpc-status trailers), but without the
 * per-frame async-iterator machinery, so the load generator spends its CPU on the load.
 */
class RawStream implements DeviceStream {
  private readonly session: http2.ClientHttp2Session;
  private readonly req: http2.ClientHttp2Stream;
  private pending: Uint8Array[] = [];
  private pendingBytes = 0;
  private buffer: Buffer = Buffer.alloc(0);
  private status: string | undefined;
  private statusMessage = "";
  private finished = false;

  constructor(
    url: string,
    token: string,
    private readonly handlers: StreamHandlers,
  ) {
    this.session = http2.connect(url);
    // Errors also surface as the stream's close; this keeps an unhandled 'error' from throwing.
    this.session.on("error", () => {});
    this.req = this.session.request({
      ":method": "POST",
      ":path": `/${GatewayService.typeName}/Connect`,
      "content-type": "application/grpc+proto",
      te: "trailers",
      authorization: `Bearer ${token}`,
    });
    this.req.on("response", (headers) => this.takeStatus(headers));
    this.req.on("trailers", (headers) => this.takeStatus(headers));
    this.req.on("data", (chunk: Buffer) => this.onData(chunk));
    this.req.on("error", (err: Error) => {
      if (this.status === undefined) {
        this.status = "transport";
        this.statusMessage = err.message;
      }
    });
    this.req.on("close", () => this.finish());
  }

  write(frame: ConnectRequest["frame"]): void {
    if (this.finished) return;
    const body = toBinary(ConnectRequestSchema, create(ConnectRequestSchema, { frame }));
    const prefix = new Uint8Array(5);
    new DataView(prefix.buffer).setUint32(1, body.length);
    this.pending.push(prefix, body);
    this.pendingBytes += 5 + body.length;
    dirty.add(this);
    if (!flushScheduled) {
      flushScheduled = true;
      setImmediate(flushAll);
    }
  }

  flush(): void {
    if (this.pending.length === 0 || this.finished || this.req.writableEnded) return;
    const data = Buffer.concat(this.pending, this.pendingBytes);
    this.pending = [];
    this.pendingBytes = 0;
    this.req.write(data);
  }

  end(): void {
    this.flush();
    if (!this.req.writableEnded) this.req.end();
  }

  destroy(): void {
    this.req.close(http2.constants.NGHTTP2_CANCEL);
    this.session.destroy();
  }

  private takeStatus(headers: http2.IncomingHttpHeaders): void {
    const status = headers["grpc-status"];
    if (typeof status === "string") {
      this.status = status;
      const message = headers["grpc-message"];
      this.statusMessage = typeof message === "string" ? decodeURIComponent(message) : "";
    }
  }

  private onData(chunk: Buffer): void {
    let buf = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    let offset = 0;
    while (buf.length - offset >= 5) {
      const length = buf.readUInt32BE(offset + 1);
      if (buf.length - offset < 5 + length) break;
      const frame = fromBinary(ConnectResponseSchema, buf.subarray(offset + 5, offset + 5 + length));
      offset += 5 + length;
      this.handlers.onFrame(frame);
    }
    buf = buf.subarray(offset);
    // Keep a copy only of a partial frame, so a large chunk is not pinned by a small remainder.
    this.buffer = buf.length === 0 ? Buffer.alloc(0) : Buffer.from(buf);
  }

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    dirty.delete(this);
    this.session.close();
    const ok = this.status === "0";
    this.handlers.onEnd(ok ? undefined : `grpc-status ${this.status ?? "none"}: ${this.statusMessage}`);
  }
}

/** The same stream through @connectrpc/connect-node, as the SDK and test helpers use it. */
class ConnectStream implements DeviceStream {
  private readonly sessions: Http2SessionManager;
  private outgoing: ConnectRequest[] = [];
  private wake: (() => void) | undefined;
  private closed = false;

  constructor(url: string, token: string, handlers: StreamHandlers) {
    this.sessions = new Http2SessionManager(url);
    const transport = createGrpcTransport({ baseUrl: url, sessionManager: this.sessions });
    const client = createClient(GatewayService, transport);
    const self = this;
    async function* requests(): AsyncGenerator<ConnectRequest> {
      for (;;) {
        const next = self.outgoing.shift();
        if (next !== undefined) {
          yield next;
          continue;
        }
        if (self.closed) return;
        await new Promise<void>((r) => (self.wake = r));
      }
    }
    void (async () => {
      try {
        for await (const frame of client.connect(requests(), {
          headers: { authorization: `Bearer ${token}` },
        })) {
          handlers.onFrame(frame);
        }
        handlers.onEnd(undefined);
      } catch (err) {
        handlers.onEnd(err instanceof Error ? err.message : String(err));
      }
    })();
  }

  write(frame: ConnectRequest["frame"]): void {
    this.outgoing.push(create(ConnectRequestSchema, { frame }));
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  end(): void {
    this.closed = true;
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  destroy(): void {
    this.closed = true;
    this.sessions.abort();
  }
}
