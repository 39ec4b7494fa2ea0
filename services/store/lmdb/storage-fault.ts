import { DomainError } from "../../common/errors.js";

// Kept apart from write-faults.ts, which reports to the metrics: the write thread's worker needs
// these and nothing of OpenTelemetry (write-worker.ts).

/** lmdb-js's failed commit: the error it gives each write of a transaction that did not commit. */
export interface CommitFailure extends Error {
  /** Rejected with the cause (the errno's error) once the write thread reports it. */
  commitError?: Promise<never>;
}

/**
 * A storage fault met on the write thread (write-thread.ts), made again on this one: the message
 * of the failure and, for a failed commit, the cause lmdb gave (`detail`).
 */
export class StorageFault extends Error {
  constructor(
    message: string,
    readonly detail: string | undefined,
    /**
     * True when the write may have been stored all the same: the write thread stopped while it
     * held the write, possibly after its commit. A refused commit stored nothing.
     */
    readonly outcomeUnknown = false,
  ) {
    super(message);
    this.name = "StorageFault";
  }
}

/** An errno-style failure (from lmdb's native code or the filesystem). */
export function isIoFailure(err: unknown): err is Error {
  if (err instanceof StorageFault) return true;
  if (!(err instanceof Error) || err instanceof DomainError) return false;
  const { code } = err as { code?: unknown };
  if ((err as CommitFailure).commitError !== undefined) return true;
  // lmdb-js reports native failures with the errno (or an MDB_ code) as a number.
  if (typeof code === "number") return true;
  return typeof code === "string" && /^E[A-Z]+$/.test(code);
}
