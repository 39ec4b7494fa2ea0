import {
  create,
  type DescMessage,
  type DescMethodStreaming,
  type DescMethodUnary,
  type DescService,
  isMessage,
  type MessageInitShape,
} from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  type ContextValues,
  createContextValues,
  type HandlerContext,
  type Interceptor,
  type StreamResponse,
  type Transport,
  type UnaryRequest,
  type UnaryResponse,
} from "@connectrpc/connect";
import { intercepted } from "./grpc-wire.js";

/** A service implementation as a direct transport calls it: method local name to handler. */
type Handlers = Record<string, ((req: unknown, ctx: unknown) => unknown) | undefined>;

/** A service of this process that a direct transport can call. */
export interface DirectService {
  service: DescService;
  impl: object;
}

/**
 * A transport that calls this process's service implementations directly: no serialisation,
 * no envelopes, no HTTP headers on the wire, and no abort of the handler's signal on completion.
 *
 * Why: Connect's in-memory router transport runs the whole protocol for each call. A trivial
 * internal call cost 100-120 µs of CPU that way, most of it in encoding, a `Headers` object per
 * direction, linked abort controllers, and the `DOMException` Node builds when a finished call's
 * signal is aborted (docs/benchmarks.md, "Internal RPCs"). In one process the sequencer, presence,
 * directory and notification calls are several per message.
 *
 * What it keeps: the server-side interceptors (telemetry, the error boundary that turns domain
 * errors into ConnectErrors), so metrics, spans and codes are what they are over the network;
 * deadlines (`timeoutMs` is honoured: the call fails with DEADLINE_EXCEEDED and the handler's
 * signal aborts); the caller's signal; init shapes normalised to messages as a client would send.
 *
 * What it changes: request and response messages are passed by reference, not copied. The code
 * base treats protobuf messages as immutable once built (every change builds a new object:
 * `entryForDevice`, `withoutKeyHolders`), and a service that kept a reference to a request would
 * keep the same bytes over the network; a caller must not change a message after passing it.
 *
 * Streaming methods are not served here (no internal service has one): they fail with
 * UNIMPLEMENTED, which a test checks, rather than silently behaving differently.
 */
export function createDirectTransport(
  services: () => readonly DirectService[],
  interceptors: Interceptor[],
): Transport {
  let byName: Map<string, Handlers> | undefined;
  const handlersOf = (service: DescService): Handlers => {
    if (byName === undefined) {
      byName = new Map();
      for (const s of services()) byName.set(s.service.typeName, s.impl as Handlers);
    }
    const found = byName.get(service.typeName);
    if (found === undefined)
      throw new ConnectError(`${service.typeName} is not served in this process`, Code.Unimplemented);
    return found;
  };

  return {
    async unary<I extends DescMessage, O extends DescMessage>(
      method: DescMethodUnary<I, O>,
      signal: AbortSignal | undefined,
      timeoutMs: number | undefined,
      header: ConstructorParameters<typeof Headers>[0] | undefined,
      input: MessageInitShape<I>,
      contextValues?: ContextValues,
    ): Promise<UnaryResponse<I, O>> {
      const service = method.parent;
      const handler = handlersOf(service)[method.localName];
      const url = `/${service.typeName}/${method.name}`;
      const message = isMessage(input, method.input) ? input : create(method.input, input);
      // A deadline or a caller's signal ends the call from the caller's side, outside the
      // interceptors, as a client transport would: DEADLINE_EXCEEDED or CANCELED, not the
      // boundary's UNAVAILABLE for a failed backend. The handler's signal aborts with it.
      const stop = timeoutMs !== undefined && timeoutMs > 0 ? timeoutMs : undefined;
      const watch = stop !== undefined || signal !== undefined ? callSignal(signal, stop) : undefined;
      const req: UnaryRequest<I, O> = {
        stream: false,
        service,
        method,
        requestMethod: "POST",
        url,
        signal: watch?.signal ?? NEVER,
        header: new Headers(header),
        contextValues: contextValues ?? createContextValues(),
        message,
      };
      const invoke = async (r: UnaryRequest<I, O>): Promise<UnaryResponse<I, O>> => {
        if (handler === undefined) throw new ConnectError(`${url} is not implemented`, Code.Unimplemented);
        const { ctx, answered } = handlerContext(service, method, url, r, stop);
        const out: unknown = await handler.call(handlersOf(service), r.message, ctx);
        return {
          stream: false,
          service,
          method,
          ...answered(),
          message: isMessage(out, method.output) ? out : create(method.output, out as MessageInitShape<O>),
        };
      };
      const next = intercepted(interceptors, invoke);
      if (watch === undefined) return next(req);
      try {
        return await raceSignal(next(req), watch.signal);
      } finally {
        watch.done();
      }
    },
    stream<I extends DescMessage, O extends DescMessage>(
      method: DescMethodStreaming<I, O>,
    ): Promise<StreamResponse<I, O>> {
      return Promise.reject(
        new ConnectError(
          `/${method.parent.typeName}/${method.name}: streams are not served in-process`,
          Code.Unimplemented,
        ),
      );
    },
  };
}

/** The signal of a call without a deadline or a caller's signal: it never aborts. */
const NEVER = new AbortController().signal;

/**
 * The handler's context, built without Connect's createHandlerContext: that one links a new
 * AbortController and a deadline timer to every call and makes three Headers objects, which
 * showed in the profile (abort controllers alone 2-3 % of the thread) for headers nobody reads
 * in-process. The signal is the call's own (it aborts on the deadline or the caller's signal);
 * the response headers are made only if a handler asks for them.
 */
function handlerContext(
  service: DescService,
  method: HandlerContext["method"],
  url: string,
  req: { signal: AbortSignal; header: Headers; contextValues: ContextValues },
  timeoutMs: number | undefined,
): { ctx: HandlerContext; answered: () => { header: Headers; trailer: Headers } } {
  const deadline = timeoutMs === undefined ? undefined : Date.now() + timeoutMs;
  let responseHeader: Headers | undefined;
  let responseTrailer: Headers | undefined;
  const ctx: HandlerContext = {
    service,
    method,
    url,
    requestMethod: "POST",
    protocolName: "direct",
    signal: req.signal,
    timeoutMs: () => (deadline === undefined ? undefined : deadline - Date.now()),
    requestHeader: req.header,
    get responseHeader() {
      responseHeader ??= new Headers();
      return responseHeader;
    },
    get responseTrailer() {
      responseTrailer ??= new Headers();
      return responseTrailer;
    },
    values: req.contextValues,
  };
  // What the handler set, or one shared empty set (callers only read them).
  const answered = () => ({ header: responseHeader ?? NONE, trailer: responseTrailer ?? NONE });
  return { ctx, answered };
}

/** Response headers of a handler that set none. */
const NONE = new Headers();

/**
 * The signal of one call: aborted with DEADLINE_EXCEEDED after `timeoutMs`, or with CANCELED when
 * the caller's signal aborts. `done` clears the timer and the listener.
 */
function callSignal(caller: AbortSignal | undefined, timeoutMs: number | undefined) {
  const controller = new AbortController();
  const onCallerAbort = () => controller.abort(ConnectError.from(caller?.reason, Code.Canceled));
  if (caller?.aborted) onCallerAbort();
  else caller?.addEventListener("abort", onCallerAbort, { once: true });
  const timer =
    timeoutMs === undefined
      ? undefined
      : setTimeout(
          () =>
            controller.abort(
              new ConnectError(`the call timed out after ${timeoutMs} ms`, Code.DeadlineExceeded),
            ),
          timeoutMs,
        );
  return {
    signal: controller.signal,
    done() {
      if (timer !== undefined) clearTimeout(timer);
      caller?.removeEventListener("abort", onCallerAbort);
    },
  };
}

/** The answer, or the signal's reason once it aborts. */
function raceSignal<T>(answer: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    answer.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (err: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(err);
      },
    );
  });
}
