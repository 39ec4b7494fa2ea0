import { DomainError } from "../common/errors.js";

/** Domain conditions every store engine reports the same way. */
export type StoreErrorKind = "not_found" | "already_exists" | "limit" | "conflict";

/**
 * A domain condition from a store; anything else a store throws is an I/O failure. It is a
 * DomainError, so one that reaches the boundary unhandled gets its kind's code; managers catch the
 * ones whose message should say more (a username taken, a device limit).
 */
export class StoreError extends DomainError {
  declare readonly kind: StoreErrorKind;

  constructor(kind: StoreErrorKind, message: string) {
    super(kind, message);
    this.name = "StoreError";
  }
}

/** True when err is a StoreError of the given kind. */
export function isStoreError(err: unknown, kind: StoreErrorKind): err is StoreError {
  return err instanceof StoreError && err.kind === kind;
}
