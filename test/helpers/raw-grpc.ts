import * as http2 from "node:http2";
import { DEVICE_STREAM_PATH } from "../../services/server/device-stream-request.js";

/** The request headers of a device stream over gRPC, as a stock client sends them, with a stand-in token. */
export const DEVICE_STREAM_HEADERS = {
  ":method": "POST",
  ":path": DEVICE_STREAM_PATH,
  "content-type": "application/grpc",
  te: "trailers",
  authorization: "Bearer token-1",
} as const;

/** What a raw gRPC call got back. */
export interface RawGrpcAnswer {
  /** The response headers (with :status). */
  headers: http2.IncomingHttpHeaders;
  /** The trailers; empty for a trailers-only response. */
  trailers: http2.IncomingHttpHeaders;
  /** The response body, envelopes and all. */
  body: Buffer;
  /** grpc-status from the trailers or a trailers-only response; -1 when neither had one. */
  status: number;
  /** grpc-message, percent-decoded. */
  message: string;
  /** grpc-message as it was on the wire. */
  raw: string;
  /** The stream's RST_STREAM code. */
  rstCode: number;
}

/**
 * One gRPC request over raw HTTP/2, for what stock clients never send: `body` goes out as it
 * is (frame it with `envelope`), with the gRPC headers and any others given.
 */
export function rawGrpc(
  url: string,
  path: string,
  body: Uint8Array,
  headers: http2.OutgoingHttpHeaders = {},
): Promise<RawGrpcAnswer> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(url);
    session.on("error", reject);
    const stream = session.request({
      ":method": "POST",
      ":path": path,
      "content-type": "application/grpc",
      te: "trailers",
      ...headers,
    });
    let responseHeaders: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders = {};
    const chunks: Buffer[] = [];
    stream.on("response", (h) => {
      responseHeaders = h;
    });
    stream.on("trailers", (t) => {
      trailers = t;
    });
    stream.on("data", (c: Buffer) => chunks.push(c));
    stream.on("error", reject);
    stream.once("close", () => {
      session.close();
      const status = trailers["grpc-status"] ?? responseHeaders["grpc-status"];
      const raw = String(trailers["grpc-message"] ?? responseHeaders["grpc-message"] ?? "");
      resolve({
        headers: responseHeaders,
        trailers,
        body: Buffer.concat(chunks),
        status: status === undefined ? -1 : Number(status),
        message: decodeURIComponent(raw),
        raw,
        rstCode: stream.rstCode ?? 0,
      });
    });
    stream.end(body);
  });
}

/** One envelope around `bytes`, with the given flags and (by default) its true length. */
export function envelope(bytes: Uint8Array, flags = 0, length = bytes.length): Buffer {
  const out = Buffer.alloc(5 + bytes.length);
  out[0] = flags;
  out.writeUInt32BE(length, 1);
  out.set(bytes, 5);
  return out;
}

/** One HTTP/2 frame (RFC 9113 4.1): its 9-byte header, then the payload. */
export function h2Frame(
  type: number,
  flags: number,
  stream: number,
  payload: Buffer = Buffer.alloc(0),
): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(stream, 5);
  return Buffer.concat([head, payload]);
}
