import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { DomainError, type ErrorKind, withoutStack } from "./errors.js";
import { INTERNAL_HEADER } from "./internal-auth.js";
import type { Logger } from "./log.js";
import type { Refusals } from "./refusals.js";

/**
 * Where failures become wire errors. Domain code throws the typed errors of ./errors.ts; this
 * module alone chooses their gRPC/Connect codes, strips what must not cross the wire, and counts
 * the refusals clients are given.
 */

/** Error metadata (a gRPC trailer) telling the client when to retry, in milliseconds. */
export const RETRY_AFTER_HEADER = "retry-after-ms";

/** The one table from domain error kinds to wire codes. */
export const CODE_OF_KIND: Readonly<Record<ErrorKind, Code>> = {
  invalid_input: Code.InvalidArgument,
  out_of_range: Code.OutOfRange,
  not_found: Code.NotFound,
  already_exists: Code.AlreadyExists,
  conflict: Code.FailedPrecondition,
  permission_denied: Code.PermissionDenied,
  unauthenticated: Code.Unauthenticated,
  limit: Code.ResourceExhausted,
  unavailable: Code.Unavailable,
  superseded: Code.Aborted,
  deadline: Code.DeadlineExceeded,
  unimplemented: Code.Unimplemented,
};

/**
 * True when a call to another service failed in transit rather than being answered: the peer
 * process died or the connection dropped. connect-node reports a reset connection as ABORTED
 * and a stream torn down with its connection as CANCELED; neither is the peer's answer, and
 * clients treat ABORTED as final (it is how a gateway says a newer stream replaced this one), so
 * both must reach them as UNAVAILABLE, the code that means "retry". A reset keeps the Node system
 * error (ECONNRESET, EPIPE, ERR_HTTP2_...) as its cause; an answer from the peer has none.
 */
export function isTransportFailure(err: unknown): boolean {
  if (err instanceof ConnectError && err.code === Code.Canceled) return true;
  for (let e: unknown = err, depth = 0; typeof e === "object" && e !== null && depth < 5; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && /^(E[A-Z]+|ERR_HTTP2_|ERR_STREAM_)/.test(code)) return true;
    e = (e as { cause?: unknown }).cause;
  }
  return false;
}

/**
 * The wire form of a domain error: its code from the table, its message, the retry hint as the
 * retry-after-ms trailer when it has one, and its details. The cause stays behind (it is for logs).
 */
export function toConnectError(err: DomainError): ConnectError {
  const retry = err.retryAfterMs;
  // A wire error's stack would always point here; refusals past capacity make thousands a second.
  return withoutStack(
    () =>
      new ConnectError(
        err.message,
        CODE_OF_KIND[err.kind],
        retry === undefined ? undefined : { [RETRY_AFTER_HEADER]: String(Math.max(0, Math.ceil(retry))) },
        err.details.map((d) => ({ desc: d.desc, value: d.value })),
      ),
  );
}

/** The wire code err will reach a client with, when it is a deliberate failure (else undefined). */
export function wireCodeOf(err: unknown): Code | undefined {
  if (err instanceof DomainError) return CODE_OF_KIND[err.kind];
  if (err instanceof ConnectError) return err.code;
  return undefined;
}

/** Codes that say the server turned a request away (as opposed to failing to serve it). */
const REFUSAL_CODES = new Set<Code>([
  Code.InvalidArgument,
  Code.NotFound,
  Code.AlreadyExists,
  Code.PermissionDenied,
  Code.ResourceExhausted,
  Code.FailedPrecondition,
  Code.OutOfRange,
  Code.Unauthenticated,
]);

/**
 * The boundary's translation of a failure into the wire error a client gets: what errorBoundary
 * applies to every RPC, for code that answers outside the interceptors (the device stream's fast
 * path, services/server/device-stream.ts). `fromOutside` is false for calls from other services.
 */
export type WireErrors = (thrown: unknown, procedure: string, fromOutside: boolean) => ConnectError;

/** The boundary's translation (see errorBoundary), counting refusals at the network face. */
export function wireErrors(log: Logger, refusals?: Refusals): WireErrors {
  return (thrown: unknown, procedure: string, fromOutside: boolean): ConnectError => {
    const err = thrown instanceof DomainError ? toConnectError(thrown) : thrown;
    if (err instanceof ConnectError) {
      // At the network face, a client's request turned away is counted and logged once, here;
      // a call from another service is that service's to report.
      if (refusals && fromOutside && REFUSAL_CODES.has(err.code) && !isTransportFailure(err)) {
        const code = Code[err.code].replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase();
        refusals.refuse(code, err.rawMessage, { procedure, code });
      }
      if (isTransportFailure(err)) {
        return new ConnectError(`a backend service is unavailable: ${err.rawMessage}`, Code.Unavailable);
      }
      if ([...err.metadata.keys()].every((k) => k === RETRY_AFTER_HEADER)) return err;
      const retry = err.metadata.get(RETRY_AFTER_HEADER);
      return new ConnectError(
        err.rawMessage,
        err.code,
        retry === null ? undefined : { [RETRY_AFTER_HEADER]: retry },
      );
    }
    log.error({ err, procedure }, "unexpected error");
    return new ConnectError("internal error", Code.Internal);
  };
}

/**
 * The one place where failures become wire errors: a domain error gets its code from
 * CODE_OF_KIND; a ConnectError (an answer relayed from another service) keeps its code, message
 * and retry hint but no other metadata (that call's response headers must not reach the client
 * and are not valid on another response); anything else is a bug or an I/O fault, logged with
 * its cause and sent as a bare Internal so no stack, path or driver message leaks to a client.
 */
export function errorBoundary(log: Logger, refusals?: Refusals): Interceptor {
  const translate = wireErrors(log, refusals);
  return (next) => async (req) => {
    const fromOutside = !req.header.has(INTERNAL_HEADER);
    const procedure = `/${req.service.typeName}/${req.method.name}`;
    try {
      const res = await next(req);
      if (!res.stream) return res;
      const messages = res.message;
      return {
        ...res,
        message: (async function* () {
          try {
            yield* messages;
          } catch (err) {
            throw translate(err, procedure, fromOutside);
          }
        })(),
      };
    } catch (err) {
      throw translate(err, procedure, fromOutside);
    }
  };
}
