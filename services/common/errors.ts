/**
 * The failures domain code reports. Managers, stores and adapters throw these and never build
 * wire errors: which gRPC/Connect code each becomes is decided in one table, at the boundary
 * (services/common/boundary.ts). Anything else thrown is a bug or an I/O fault and reaches a
 * client as a bare INTERNAL.
 *
 * The message is for the client: it says what was refused and why, in words that identify
 * nothing the caller may not know (never a payload, token, secret or another user's data).
 */

import type { DescMessage, MessageShape } from "@bufbuild/protobuf";

/** What kind of failure: the key of the boundary's code table. */
export type ErrorKind =
  /** The request itself is malformed or breaks a documented rule (a size, a format). */
  | "invalid_input"
  /** A position or range outside what exists (a seq past the head). */
  | "out_of_range"
  /** The thing named does not exist, or the caller may not learn whether it does. */
  | "not_found"
  /** Creating something that exists already (a username taken, a key uploaded twice). */
  | "already_exists"
  /** The current state does not allow this now (a stale version, a device not yet linked). */
  | "conflict"
  /** The caller is known but may not do this. */
  | "permission_denied"
  /** The caller's credentials are missing, wrong or revoked. */
  | "unauthenticated"
  /** A quota or rate limit: retry after `retryAfterMs` when given, or make less. */
  | "limit"
  /** A dependency cannot serve right now; retrying later is safe (`retryAfterMs` when known). */
  | "unavailable"
  /** A newer session or request took this one's place; do not retry this one. */
  | "superseded"
  /** A wait ran past its deadline. */
  | "deadline"
  /** This process does not serve the operation (it is configured elsewhere). */
  | "unimplemented";

/**
 * A protobuf message that travels with the error (a google.rpc.Status detail) for clients that
 * act on it, such as the devices a send must re-address.
 */
export interface ErrorDetail<Desc extends DescMessage = DescMessage> {
  /** The message's schema. */
  desc: Desc;
  /** The message. */
  value: MessageShape<Desc>;
}

/** Options common to every domain error. */
export interface DomainErrorOptions {
  /** When the caller may retry, in milliseconds (sent as the retry-after-ms trailer). */
  retryAfterMs?: number;
  /** Messages the client needs to act on the failure, sent as error details. */
  details?: readonly ErrorDetail[];
  /** The underlying failure, for logs; never shown to the client. */
  cause?: unknown;
}

// Frozen intrinsics (node --frozen-intrinsics) make the limit read-only; errors then keep stacks.
const stackTraceLimitWritable = Object.getOwnPropertyDescriptor(Error, "stackTraceLimit")?.writable === true;

/**
 * Builds an error without capturing a stack trace, for failures that are answers on a hot path:
 * a refusal past capacity, a rate limit, a wire error made at the boundary. V8 captures
 * Error.stackTraceLimit frames whenever an Error is constructed, which costs microseconds; past
 * capacity a gateway refuses thousands of sends a second and those captures were an eighth of
 * its main thread (docs/benchmarks.md, "Tenth pass"). Such an error's stack would only ever point
 * at the code that refuses, which its message already names.
 */
export function withoutStack<T>(make: () => T): T {
  if (!stackTraceLimitWritable) return make();
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    return make();
  } finally {
    Error.stackTraceLimit = limit;
  }
}

/** A failure domain code reports on purpose; `kind` chooses the wire code at the boundary. */
export class DomainError extends Error {
  /** When the caller may retry, in milliseconds, when that is known. */
  readonly retryAfterMs: number | undefined;
  /** Messages sent with the error as details; none for most failures. */
  readonly details: readonly ErrorDetail[];

  constructor(
    readonly kind: ErrorKind,
    message: string,
    options: DomainErrorOptions = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "DomainError";
    this.retryAfterMs = options.retryAfterMs;
    this.details = options.details ?? [];
  }
}

/** The request is malformed or breaks a documented rule. */
export class InvalidInputError extends DomainError {
  constructor(message: string, options?: DomainErrorOptions) {
    super("invalid_input", message, options);
  }
}

/** A position or range outside what exists. */
export class OutOfRangeError extends DomainError {
  constructor(message: string, options?: DomainErrorOptions) {
    super("out_of_range", message, options);
  }
}

/** The thing named does not exist (or the caller may not learn whether it does). */
export class NotFoundError extends DomainError {
  constructor(message: string, options?: DomainErrorOptions) {
    super("not_found", message, options);
  }
}

/** Creating something that already exists. */
export class AlreadyExistsError extends DomainError {
  constructor(message: string, options?: DomainErrorOptions) {
    super("already_exists", message, options);
  }
}

/** The current state does not allow the operation now. */
export class ConflictError extends DomainError {
  constructor(message: string, options?: DomainErrorOptions) {
    super("conflict", message, options);
  }
}

/** The caller is known but may not do this. */
export class PermissionError extends DomainError {
  constructor(message: string, options?: DomainErrorOptions) {
    super("permission_denied", message, options);
  }
}

/** The caller's credentials are missing, wrong or revoked. */
export class UnauthenticatedError extends DomainError {
  constructor(message: string, options?: DomainErrorOptions) {
    super("unauthenticated", message, options);
  }
}

/** A quota or rate limit was reached; `retryAfterMs` says when to try again, when known. */
export class LimitError extends DomainError {
  constructor(message: string, options?: DomainErrorOptions) {
    super("limit", message, options);
  }
}

/** A dependency cannot serve right now; retrying later is safe. */
export class UnavailableError extends DomainError {
  constructor(message: string, options?: DomainErrorOptions) {
    super("unavailable", message, options);
  }
}

/** A newer session or request replaced this one. */
export class SupersededError extends DomainError {
  constructor(message: string, options?: DomainErrorOptions) {
    super("superseded", message, options);
  }
}

/** A wait ran past its deadline. */
export class DeadlineError extends DomainError {
  constructor(message: string, options?: DomainErrorOptions) {
    super("deadline", message, options);
  }
}

/** This process does not serve the operation. */
export class UnimplementedError extends DomainError {
  constructor(message: string, options?: DomainErrorOptions) {
    super("unimplemented", message, options);
  }
}

/** True when err is a DomainError of the given kind. */
export function isDomainError(err: unknown, kind?: ErrorKind): err is DomainError {
  return err instanceof DomainError && (kind === undefined || err.kind === kind);
}
