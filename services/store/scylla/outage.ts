/**
 * The database being away is a refusal the client may retry, not a bug. Without this, a driver
 * error from an unreachable or overloaded cluster (no host available, a coordinator's timeout,
 * "not enough replicas") reached the error boundary as an unknown error and devices got INTERNAL,
 * which they do not retry. The engine's ports are wrapped so that such errors leave them as
 * UnavailableError (with a retry hint); everything else (a StoreError, a bug) passes unchanged.
 *
 * The wrapping sits at the port, after the stores' own handling: code inside the stores (the LWT
 * outcome checks of outcome.ts, the prekey take's timeout handling) still sees the driver's errors.
 */
import { errors, types } from "cassandra-driver";
import { UnavailableError } from "../../common/errors.js";
import type { FaultWindow } from "../faults.js";

/** How long a client should wait before retrying, in milliseconds. */
const RETRY_AFTER_MS = 1000;

/** Coordinator answers that say the cluster cannot serve now (as opposed to a wrong request). */
const TRANSIENT_CODES = new Set<number>([
  types.responseErrorCodes.unavailableException,
  types.responseErrorCodes.overloaded,
  types.responseErrorCodes.isBootstrapping,
  types.responseErrorCodes.writeTimeout,
  types.responseErrorCodes.readTimeout,
]);

/** The UnavailableError for a driver error that means the database cannot serve now, else undefined. */
export function outageOf(err: unknown): UnavailableError | undefined {
  const transient =
    err instanceof errors.NoHostAvailableError ||
    // A request in flight on a connection that closed (the node died): the driver marks it.
    (err instanceof errors.DriverError && (err as { isSocketError?: unknown }).isSocketError === true) ||
    err instanceof errors.OperationTimedOutError ||
    err instanceof errors.BusyConnectionError ||
    (err instanceof errors.ResponseError && TRANSIENT_CODES.has(err.code));
  if (!transient) return undefined;
  return new UnavailableError("the database is unavailable; retry", {
    retryAfterMs: RETRY_AFTER_MS,
    cause: err,
  });
}

/**
 * The store with every method that returns a promise turning an outage's driver error into an
 * UnavailableError, recorded in `window` (readiness and the write-failure metric) when given.
 * Properties and synchronous methods pass through untouched.
 */
export function refusingOutages<T extends object>(store: T, window?: FaultWindow): T {
  return new Proxy(store, {
    get(target, property, receiver) {
      const value = Reflect.get(target, property, receiver);
      if (typeof value !== "function") return value;
      return function (this: unknown, ...args: unknown[]) {
        const result = (value as (...a: unknown[]) => unknown).apply(this === receiver ? target : this, args);
        if (!(result instanceof Promise)) return result;
        return result.catch((err: unknown) => {
          const outage = outageOf(err);
          if (outage === undefined) throw err;
          window?.failed(err instanceof Error ? err.message : String(err));
          throw outage;
        });
      };
    },
  });
}
