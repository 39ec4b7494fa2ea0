/** Domain conditions every store engine reports the same way. */
export type StoreErrorKind = "not_found" | "already_exists" | "limit" | "conflict";

/** A domain condition from a store; anything else a store throws is an I/O failure. */
export class StoreError extends Error {
  constructor(
    readonly kind: StoreErrorKind,
    message: string,
  ) {
    super(message);
    this.name = "StoreError";
  }
}

/** True when err is a StoreError of the given kind. */
export function isStoreError(err: unknown, kind: StoreErrorKind): err is StoreError {
  return err instanceof StoreError && err.kind === kind;
}
