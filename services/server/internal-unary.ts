import type * as http from "node:http";
import type * as http2 from "node:http2";
import { type DescMethodUnary, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createContextValues,
  type Interceptor,
  type Transport,
} from "@connectrpc/connect";
import { parseTimeout, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import { createDirectTransport, type DirectService } from "./direct-transport.js";
import { ENVELOPE_HEADER, envelope, FLAG_COMPRESSED, headersFromHttp2 } from "./grpc-wire.js";

type Request = http.IncomingMessage | http2.Http2ServerRequest;
type Response = http.ServerResponse | http2.Http2ServerResponse;
type Handler = (req: Request, res: Response) => void;

/** gRPC's binary content types; JSON and the other protocols go to connect-node. */
const GRPC_PROTO = /^application\/grpc(\+proto)?$/;
/** What connect-node answers binary gRPC with. */
const CONTENT_TYPE = "application/grpc+proto";

/** What the fast path serves, and with what. */
export interface InternalUnaryDeps {
  /** This process's services; only the internal ones (switchboard.internal.*) are served here. */
  services: readonly DirectService[];
  /** The network server's interceptors, in the same order (telemetry, boundary, credential). */
  interceptors: Interceptor[];
  /** The largest request message, in bytes, as connect-node's readMaxBytes. */
  readMaxBytes: number;
}

/**
 * Unary calls to this process's internal services (`switchboard.internal.*`, the calls one
 * Switchboard process makes of another in a mesh) over gRPC, served straight on Node's HTTP/2
 * request; everything else, and these calls over another protocol or with compressed messages,
 * goes to `next` (connect-node).
 *
 * Why: the mesh's CPU follows its internal calls, several per message at low rates, and
 * connect-node's handler cost 620-830 µs of CPU per trivial call (bench/internal-rpc.ts; this
 * path: 210-280 µs). In the profiles of a sequencer and of presence it was the largest cost, far
 * above the handlers: async generators for the body and the response, two linked abort
 * controllers per call and the DOMException Node builds when a finished call's signal is
 * aborted, a `Headers` object per direction (docs/benchmarks.md, "Fifth pass"). Here the body is
 * read into one buffer,
 * the message is handed to the implementation through the direct transport (direct-transport.ts:
 * the same interceptors, deadlines and cancellation as the in-process calls), and the answer is
 * written in one write with its status in the trailers.
 *
 * The wire protocol is gRPC's, as connect-node speaks it: `application/grpc` or `+proto`, one
 * 5-byte envelope, `grpc-timeout`, the status in trailers (`grpc-status`, `grpc-message`,
 * `grpc-status-details-bin` written by Connect's own setTrailerStatus, and the error's metadata
 * such as `retry-after-ms`), a message over readMaxBytes refused RESOURCE_EXHAUSTED.
 * test/e2e/internal-wire.test.ts calls it with stock @grpc/grpc-js and connect-es clients.
 */
export function internalUnaryFastPath(next: Handler, deps: InternalUnaryDeps): Handler {
  const methods = new Map<string, DescMethodUnary>();
  for (const { service } of deps.services) {
    if (!service.typeName.startsWith("switchboard.internal.")) continue;
    for (const method of service.methods) {
      if (method.methodKind === "unary")
        methods.set(`/${service.typeName}/${method.name}`, method as DescMethodUnary);
    }
  }
  const transport = createDirectTransport(() => deps.services, deps.interceptors);
  return (req, res) => {
    const method =
      req.httpVersionMajor === 2 && req.method === "POST" ? methods.get(req.url ?? "") : undefined;
    if (method === undefined || !isGrpcUncompressed(req)) {
      next(req, res);
      return;
    }
    readBody(req as http2.Http2ServerRequest, res as http2.Http2ServerResponse, deps.readMaxBytes, (body) =>
      serve(req as http2.Http2ServerRequest, res as http2.Http2ServerResponse, method, body, transport),
    );
  };
}

function isGrpcUncompressed(req: Request): boolean {
  if (!GRPC_PROTO.test(String(req.headers["content-type"] ?? ""))) return false;
  const encoding = req.headers["grpc-encoding"];
  return encoding === undefined || encoding === "identity";
}

/**
 * Reads the whole request body: one envelope, refused RESOURCE_EXHAUSTED as soon as its header
 * promises more than readMaxBytes (or the body runs past that), without reading the rest. (A
 * body that never ends is the edge's: its body deadline resets the stream, edge.ts.)
 */
function readBody(
  req: http2.Http2ServerRequest,
  res: http2.Http2ServerResponse,
  readMaxBytes: number,
  then: (body: Buffer) => void,
): void {
  const chunks: Buffer[] = [];
  let size = 0;
  let promised: number | undefined;
  const refuse = (bytes: number) => {
    req.off("data", onData);
    req.off("end", onEnd);
    req.pause();
    finish(
      res,
      new ConnectError(
        `message size ${bytes} is larger than configured readMaxBytes ${readMaxBytes}`,
        Code.ResourceExhausted,
      ),
    );
  };
  const onData = (chunk: Buffer) => {
    chunks.push(chunk);
    size += chunk.length;
    if (promised === undefined && size >= ENVELOPE_HEADER) {
      promised = (chunks.length === 1 ? chunk : Buffer.concat(chunks, size)).readUInt32BE(1);
      if (promised > readMaxBytes) refuse(promised);
    } else if (size > ENVELOPE_HEADER + readMaxBytes) refuse(size - ENVELOPE_HEADER);
  };
  const onEnd = () => then(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
  req.on("data", onData);
  req.once("end", onEnd);
}

async function serve(
  req: http2.Http2ServerRequest,
  res: http2.Http2ServerResponse,
  method: DescMethodUnary,
  body: Buffer,
  transport: Transport,
): Promise<void> {
  // The caller went away (reset, connection lost) before the answer: the handler's signal aborts.
  const gone = new AbortController();
  let answered = false;
  res.once("close", () => {
    if (!answered) gone.abort(new ConnectError("the caller cancelled the call", Code.Canceled));
  });
  let header: Record<string, string> | undefined;
  let answer: Buffer;
  let trailer: Record<string, string>;
  try {
    const timeout = parseTimeout(first(req.headers["grpc-timeout"]), Number.MAX_SAFE_INTEGER);
    if (timeout.error) throw timeout.error;
    const input = parse(method, messageOf(body));
    const out = await transport.unary(
      method,
      gone.signal,
      timeout.timeoutMs,
      headersFromHttp2(req.headers),
      input,
      createContextValues(),
    );
    answer = envelope(toBinary(method.output, out.message));
    header = headersOf(out.header);
    trailer = { "grpc-status": "0", ...headersOf(out.trailer) };
  } catch (err) {
    answered = true;
    finish(res, err);
    return;
  }
  answered = true;
  if (res.stream.destroyed || res.stream.closed) return;
  res.writeHead(200, { "content-type": CONTENT_TYPE, ...header });
  res.addTrailers(trailer);
  res.end(answer);
}

/**
 * The one message of a unary request: a body that is not exactly one uncompressed envelope is
 * refused.
 */
function messageOf(body: Buffer): Uint8Array {
  // connect-node's codes and words for each, so that a client sees one answer whichever path
  // serves it (test/e2e/internal-wire.test.ts holds them equal).
  if (body.length < ENVELOPE_HEADER || body.length < ENVELOPE_HEADER + body.readUInt32BE(1))
    throw new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument);
  if ((body[0]! & FLAG_COMPRESSED) !== 0)
    throw new ConnectError(
      "protocol error: received compressed message without grpc-encoding",
      Code.Internal,
    );
  if (body.length > ENVELOPE_HEADER + body.readUInt32BE(1))
    throw new ConnectError(
      "protocol error: received extra input message for unary method",
      Code.Unimplemented,
    );
  return body.subarray(ENVELOPE_HEADER);
}

/** The request message; one that does not parse is refused as connect-node refuses it. */
function parse(method: DescMethodUnary, bytes: Uint8Array) {
  try {
    return fromBinary(method.input, bytes);
  } catch (err) {
    throw new ConnectError(
      `parse binary: ${err instanceof Error ? err.message : String(err)}`,
      Code.Internal,
    );
  }
}

/** Ends the call with an error status in trailers, as connect-node's gRPC handler does. */
function finish(res: http2.Http2ServerResponse, thrown: unknown): void {
  if (res.stream.destroyed || res.stream.closed) return;
  const error = ConnectError.from(thrown);
  if (!res.headersSent) res.writeHead(200, { "content-type": CONTENT_TYPE });
  const trailers = headersOf(error.metadata);
  setTrailerStatus(new Headers(), error).forEach((value, key) => {
    trailers[key] = value;
  });
  res.addTrailers(trailers);
  res.end();
}

/** A Headers object as a plain record (empty for none). */
function headersOf(headers: Headers): Record<string, string> {
  const out: Record<string, string> = {};
  headers.forEach((value, key) => {
    out[key] = value;
  });
  return out;
}

function first(value: string | string[] | undefined): string | null {
  return (Array.isArray(value) ? value[0] : value) ?? null;
}
