import { UnavailableError } from "../../common/errors.js";
import { FaultWindow } from "../faults.js";
import { type CommitFailure, isIoFailure, StorageFault } from "./storage-fault.js";

/**
 * Storage faults of the embedded engine: a commit that the disk refused (full, EIO, a failed
 * fsync) becomes a retryable refusal instead of an error nobody expects, and is remembered so
 * that readiness and metrics can say writes are failing.
 *
 * What a full disk looks like. LMDB grows its data file as it writes; when the filesystem has no
 * room for the growth, the write thread's mdb_txn_commit fails ("mdb_page_spill flushing error 5",
 * EIO, or ENOSPC) and lmdb-js rejects every write of that transaction with "Commit failed (see
 * commitError for details)", the cause in `commitError`, a promise that is rejected too. Nothing of
 * that transaction is stored. The environment stays usable: reads go on, and a later commit
 * succeeds as soon as it fits (in freed pages, or because space came back).
 */

export { FAILING_HOLD_MS } from "../faults.js";

/** The client's retry hint for a refused write, in ms. */
export const RETRY_AFTER_MS = 1_000;

/** Tracks the engine's write failures and turns them into refusals. */
export class WriteFaults {
  private readonly window: FaultWindow;

  constructor(now: () => number = Date.now) {
    this.window = new FaultWindow("storage writes", now);
  }

  /**
   * Runs a write and classifies its failure: a storage fault becomes UnavailableError (retryable,
   * with a retry hint); a domain refusal or a bug passes through unchanged.
   */
  async run<T>(write: () => Promise<T>): Promise<T> {
    try {
      return await write();
    } catch (err) {
      if (!isIoFailure(err)) throw err;
      if (err instanceof StorageFault) {
        this.window.failed(err.detail ?? err.message);
      } else {
        // lmdb-js rejects the cause separately and leaves it to the caller: observed here, or it
        // would be an unhandled rejection, which ends the process.
        const { commitError } = err as CommitFailure;
        commitError?.then(undefined, (cause: unknown) => {
          if (cause instanceof Error) this.window.explain(cause.message);
        });
        this.window.failed(commitError ? "" : err.message);
      }
      // Only a refused commit is known to have stored nothing; a retry with the same
      // client_msg_id finds a write that was stored after all.
      const outcome =
        err instanceof StorageFault && err.outcomeUnknown
          ? "the write may not have been stored"
          : "the write was not stored";
      throw new UnavailableError(`storage is failing: ${outcome}; retry`, {
        retryAfterMs: RETRY_AFTER_MS,
        cause: err,
      });
    }
  }

  /** Why writes are failing, for readiness, or undefined (FaultWindow.problem). */
  problem(): string | undefined {
    return this.window.problem();
  }
}
