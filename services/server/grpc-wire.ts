import type * as http2 from "node:http2";
import type { DescMessage } from "@bufbuild/protobuf";
import type { Interceptor, UnaryRequest, UnaryResponse } from "@connectrpc/connect";

/**
 * The pieces of gRPC's wire format that the hand-written paths share (internal-unary.ts serving,
 * internal-client.ts calling, device-stream.ts for the device stream), and the interceptor chain
 * the transports of this directory run a unary call through.
 */

/** An envelope's header: one flags byte, then the message's length (big-endian uint32). */
export const ENVELOPE_HEADER = 5;
/** Envelope flag: the message is compressed. */
export const FLAG_COMPRESSED = 0b1;

/**
 * The largest message between this server's own processes, in bytes, either way: internal batches
 * (appends, deliveries, history pages) carry many payloads at once.
 */
export const INTERNAL_READ_MAX_BYTES = 64 * 1024 * 1024;

/** One uncompressed envelope around a message's bytes, in one buffer (one write). */
export function envelope(bytes: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(ENVELOPE_HEADER + bytes.length);
  out[0] = 0;
  out.writeUInt32BE(bytes.length, 1);
  out.set(bytes, ENVELOPE_HEADER);
  return out;
}

/** HTTP/2 headers (or trailers) as a Headers object, without the pseudo-headers. */
export function headersFromHttp2(headers: http2.IncomingHttpHeaders): Headers {
  const out = new Headers();
  for (const key in headers) {
    if (key.charCodeAt(0) === 58 /* ":" */) continue;
    const value = headers[key];
    if (Array.isArray(value)) for (const v of value) out.append(key, v);
    else if (value !== undefined) out.append(key, String(value));
  }
  return out;
}

/** A unary call's innermost step wrapped in the interceptors, the first one outermost. */
export function intercepted<I extends DescMessage, O extends DescMessage>(
  interceptors: readonly Interceptor[],
  invoke: (req: UnaryRequest<I, O>) => Promise<UnaryResponse<I, O>>,
): (req: UnaryRequest<I, O>) => Promise<UnaryResponse<I, O>> {
  let next = invoke;
  for (let i = interceptors.length - 1; i >= 0; i--) {
    next = interceptors[i]!(next as never) as unknown as typeof next;
  }
  return next;
}
