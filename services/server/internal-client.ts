import * as http2 from "node:http2";
import {
  create,
  type DescMessage,
  type DescMethodStreaming,
  type DescMethodUnary,
  fromBinary,
  isMessage,
  type MessageInitShape,
  toBinary,
} from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  type ContextValues,
  createContextValues,
  type Interceptor,
  type StreamResponse,
  type Transport,
  type UnaryRequest,
  type UnaryResponse,
} from "@connectrpc/connect";
import { requestHeader, validateResponse, validateTrailer } from "@connectrpc/connect/protocol-grpc";
import type { Http2SessionManager } from "@connectrpc/connect-node";
import { ENVELOPE_HEADER, envelope, FLAG_COMPRESSED, headersFromHttp2, intercepted } from "./grpc-wire.js";

/** What the transport needs. */
export interface InternalTransportOptions {
  /** The other process's address ("http://host:port"). */
  baseUrl: string;
  /** The connection to it, shared by every client of this process (pings, reconnects). */
  sessionManager: Http2SessionManager;
  /** The client interceptors (telemetry, the internal credential), outermost first. */
  interceptors: Interceptor[];
  /** The deadline of a call that sets none, in milliseconds. */
  defaultTimeoutMs: number;
  /**
   * The largest answer message, in bytes, as connect-node's readMaxBytes: a longer answer is
   * RESOURCE_EXHAUSTED and its stream cancelled as soon as its envelope says so, unread.
   */
  readMaxBytes: number;
  /** What serves server streams (connect-node's gRPC transport); no internal service has one. */
  streams: Transport;
}

/**
 * Unary gRPC calls to another Switchboard process, written straight on the HTTP/2 session: the
 * client half of the mesh's internal calls, whose server half is internal-unary.ts.
 *
 * Why: connect-node's client cost 530-640 µs of CPU per trivial call (bench/internal-rpc.ts):
 * per call a chain of async generators for the request and the response, linked abort
 * controllers, `Headers` per direction and a universal request and response on top of the
 * HTTP/2 stream. The mesh makes several such calls per message at low rates.
 *
 * What it keeps from connect-node: its session manager (one connection per address, pings,
 * reconnects, the retry of a request that met a closing connection), its request headers
 * (`requestHeader`) and its response checks (`validateResponse`, `validateTrailer`: the status from
 * the trailers or a trailers-only response, `grpc-status-details-bin`, the trailers as the
 * error's metadata, such as `retry-after-ms`), the interceptors, deadlines (`grpc-timeout`, and
 * DEADLINE_EXCEEDED locally when it passes), cancellation by the caller's signal (RST_STREAM
 * CANCEL) and readMaxBytes (RESOURCE_EXHAUSTED, with its message). Failures of the connection keep connect-node's codes and keep the Node error as their
 * cause, which is how a caller tells a process that went away from an answer (boundary.ts,
 * isTransportFailure). No compression, either way: internal traffic is mostly ciphertext.
 */
export function createInternalTransport(options: InternalTransportOptions): Transport {
  const { baseUrl, sessionManager, interceptors, defaultTimeoutMs } = options;
  return {
    async unary<I extends DescMessage, O extends DescMessage>(
      method: DescMethodUnary<I, O>,
      signal: AbortSignal | undefined,
      timeoutMs: number | undefined,
      header: ConstructorParameters<typeof Headers>[0] | undefined,
      input: MessageInitShape<I>,
      contextValues?: ContextValues,
    ): Promise<UnaryResponse<I, O>> {
      const timeout = timeoutMs === undefined ? defaultTimeoutMs : timeoutMs <= 0 ? undefined : timeoutMs;
      const path = `/${method.parent.typeName}/${method.name}`;
      const req: UnaryRequest<I, O> = {
        stream: false,
        service: method.parent,
        method,
        requestMethod: "POST",
        url: `${baseUrl}${path}`,
        signal: signal ?? NEVER,
        header: requestHeader(true, timeout, header),
        contextValues: contextValues ?? createContextValues(),
        message: isMessage(input, method.input) ? input : create(method.input, input),
      };
      return intercepted(interceptors, (r: UnaryRequest<I, O>) =>
        call(sessionManager, path, r, timeout, options.readMaxBytes),
      )(req);
    },
    stream<I extends DescMessage, O extends DescMessage>(
      method: DescMethodStreaming<I, O>,
      signal: AbortSignal | undefined,
      timeoutMs: number | undefined,
      header: ConstructorParameters<typeof Headers>[0] | undefined,
      input: AsyncIterable<MessageInitShape<I>>,
      contextValues?: ContextValues,
    ): Promise<StreamResponse<I, O>> {
      return options.streams.stream(method, signal, timeoutMs, header, input, contextValues);
    },
  };
}

/** The signal of a call without a caller's signal: it never aborts. */
const NEVER = new AbortController().signal;

/** One call on the wire: the request's envelope out, the answer's headers, envelope and trailers in. */
async function call<I extends DescMessage, O extends DescMessage>(
  sessionManager: Http2SessionManager,
  path: string,
  req: UnaryRequest<I, O>,
  timeoutMs: number | undefined,
  readMaxBytes: number,
): Promise<UnaryResponse<I, O>> {
  if (req.signal.aborted) throw ConnectError.from(req.signal.reason, Code.Canceled);
  const body = envelope(toBinary(req.method.input, req.message));
  const headers: http2.OutgoingHttpHeaders = {};
  req.header.forEach((value, key) => {
    headers[key] = value;
  });
  let stream: http2.ClientHttp2Stream;
  try {
    stream = await sessionManager.request("POST", path, headers, {});
  } catch (err) {
    throw fromNodeError(err);
  }
  return new Promise<UnaryResponse<I, O>>((resolve, reject) => {
    let responseHeaders: http2.IncomingHttpHeaders | undefined;
    let trailers: http2.IncomingHttpHeaders = {};
    const chunks: Buffer[] = [];
    let received = 0;
    let failure: ConnectError | undefined;
    const stop = (error: ConnectError) => {
      failure ??= error;
      if (!stream.closed) stream.close(http2.constants.NGHTTP2_CANCEL);
    };
    const unwatch = onAbort(req.signal, () => stop(ConnectError.from(req.signal.reason, Code.Canceled)));
    const timer =
      timeoutMs === undefined
        ? undefined
        : setTimeout(
            () => stop(new ConnectError("the operation timed out", Code.DeadlineExceeded)),
            timeoutMs,
          );
    stream.on("response", (h) => {
      responseHeaders = h;
    });
    stream.on("trailers", (t) => {
      trailers = t;
    });
    stream.on("data", (chunk: Buffer) => {
      if (failure !== undefined) return;
      chunks.push(chunk);
      received += chunk.length;
      sessionManager.notifyResponseByteRead(stream);
      // The envelope promises the length: a peer (or a bad deployment) answering more than this
      // process will hold is refused from its first five bytes, not buffered to the end.
      const promised =
        received < ENVELOPE_HEADER
          ? 0
          : (chunks[0]!.length >= ENVELOPE_HEADER ? chunks[0]! : Buffer.concat(chunks)).readUInt32BE(1);
      const size = Math.max(promised, received - ENVELOPE_HEADER);
      if (size > readMaxBytes) {
        chunks.length = 0;
        stop(
          new ConnectError(
            `message size ${size} is larger than configured readMaxBytes ${readMaxBytes}`,
            Code.ResourceExhausted,
          ),
        );
      }
    });
    stream.on("error", (err) => {
      failure ??= fromNodeError(err);
    });
    stream.once("close", () => {
      unwatch();
      if (timer !== undefined) clearTimeout(timer);
      try {
        if (failure !== undefined) throw failure;
        resolve(answer(req, responseHeaders, trailers, chunks, stream.rstCode));
      } catch (err) {
        reject(err instanceof ConnectError ? err : ConnectError.from(err, Code.Internal));
      }
    });
    stream.end(body);
  });
}

/** The calls waiting on each caller's signal, behind one listener per signal. */
const watchers = new WeakMap<AbortSignal, Set<() => void>>();

/**
 * Runs `then` when `signal` aborts, until the returned function is called. Callers share
 * signals across many calls at once (a stream's, the process's); one listener per signal keeps
 * them under Node's listener warning however many calls wait.
 */
function onAbort(signal: AbortSignal, then: () => void): () => void {
  if (signal === NEVER) return () => {};
  let calls = watchers.get(signal);
  if (calls === undefined) {
    const set = new Set<() => void>();
    calls = set;
    watchers.set(signal, set);
    signal.addEventListener(
      "abort",
      () => {
        watchers.delete(signal);
        for (const call of set) call();
      },
      { once: true },
    );
  }
  calls.add(then);
  return () => {
    calls.delete(then);
  };
}

/** The call's answer from what arrived, or the error it carries. */
function answer<I extends DescMessage, O extends DescMessage>(
  req: UnaryRequest<I, O>,
  responseHeaders: http2.IncomingHttpHeaders | undefined,
  trailers: http2.IncomingHttpHeaders,
  chunks: Buffer[],
  rstCode: number,
): UnaryResponse<I, O> {
  if (responseHeaders === undefined) throw fromResetCode(rstCode, "no answer");
  const header = headersFromHttp2(responseHeaders);
  const { foundStatus, headerError } = validateResponse(Number(responseHeaders[":status"]), header);
  if (headerError !== undefined) throw headerError;
  // Headers came, then the stream was reset before its status: a peer killed mid-answer (Node
  // closes the streams of a lost connection with CANCEL). Callers retry a transport failure; a
  // peer that ended its answer cleanly without a status is INTERNAL (validateTrailer, below).
  if (!foundStatus && rstCode !== http2.constants.NGHTTP2_NO_ERROR) {
    throw fromResetCode(rstCode, "the answer cut off before its status");
  }
  const trailer = headersFromHttp2(trailers);
  if (!foundStatus) validateTrailer(trailer, header);
  const body = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
  if (body.length < ENVELOPE_HEADER) {
    throw new ConnectError("protocol error: missing output message for unary method", Code.Unimplemented);
  }
  if ((body[0]! & FLAG_COMPRESSED) !== 0) {
    throw new ConnectError("protocol error: received compressed output without grpc-encoding", Code.Internal);
  }
  const length = body.readUInt32BE(1);
  if (body.length !== ENVELOPE_HEADER + length) {
    throw new ConnectError("protocol error: the response is not exactly one message", Code.Unimplemented);
  }
  return {
    stream: false,
    service: req.service,
    method: req.method,
    header,
    message: fromBinary(req.method.output, body.subarray(ENVELOPE_HEADER)),
    trailer,
  };
}

/**
 * A stream cut before its answer was whole (no answer, or no status). CANCEL is CANCELED and ENHANCE_YOUR_CALM is
 * RESOURCE_EXHAUSTED, as connect-node reads them; any other way to lose the call (the peer's
 * process gone, its connection reset) is UNAVAILABLE: nothing was answered, and the internal
 * calls are safe to retry (an append carries its idempotency key).
 */
function fromResetCode(rstCode: number, what: string): ConnectError {
  const { constants: c } = http2;
  const code =
    rstCode === c.NGHTTP2_CANCEL
      ? Code.Canceled
      : rstCode === c.NGHTTP2_ENHANCE_YOUR_CALM
        ? Code.ResourceExhausted
        : Code.Unavailable;
  return new ConnectError(`http/2 stream closed with error code 0x${rstCode.toString(16)} and ${what}`, code);
}

/**
 * A Node error of the connection or the stream, with connect-node's codes (a reset is ABORTED,
 * a peer that cannot be reached UNAVAILABLE) and the error itself as the cause.
 */
function fromNodeError(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  const codeOf = (e: unknown) => (e as { code?: unknown } | undefined)?.code;
  const nodeCode = codeOf(err) ?? codeOf((err as { cause?: unknown } | undefined)?.cause);
  const code =
    nodeCode === "ERR_STREAM_DESTROYED" ||
    nodeCode === "ERR_HTTP2_INVALID_STREAM" ||
    nodeCode === "ECONNRESET"
      ? Code.Aborted
      : nodeCode === "ETIMEDOUT" ||
          nodeCode === "ENOTFOUND" ||
          nodeCode === "EAI_AGAIN" ||
          nodeCode === "ECONNREFUSED"
        ? Code.Unavailable
        : Code.Internal;
  const error = ConnectError.from(err, code);
  if (error !== err) error.cause = err;
  return error;
}
