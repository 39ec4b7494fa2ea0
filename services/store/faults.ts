import { lazyInstrument, meter } from "../common/telemetry.js";

/**
 * What a store engine remembers of its storage failing, for readiness and metrics: each engine
 * decides what counts as a failure (a refused commit under LMDB, an unreachable cluster under
 * ScyllaDB) and reports it here.
 */

/** How long writes count as failing after the last failure, in ms. */
export const FAILING_HOLD_MS = 10_000;

const writeFailures = lazyInstrument(() =>
  meter().createCounter("switchboard.store.write_failures", {
    description:
      "Store operations the storage refused (full disk, I/O error, failed fsync, database unreachable); they were refused UNAVAILABLE",
  }),
);

/** The window in which a store counts as failing, and why. */
export class FaultWindow {
  private lastFailureAtMs = 0;
  private failingSinceMs = 0;
  private failures = 0;
  /** The latest failure's reason (a cause may arrive after the failure: see `explain`). */
  private reason = "";

  /** @param what how problem() names what fails ("storage writes", "the database"). */
  constructor(
    private readonly what: string,
    private readonly now: () => number = Date.now,
  ) {}

  /** Records one failure, counting it in switchboard.store.write_failures. */
  failed(reason: string): void {
    if (this.problem() === undefined) {
      this.failingSinceMs = this.now();
      this.failures = 0;
    }
    this.lastFailureAtMs = this.now();
    this.failures++;
    if (reason !== "") this.reason = reason;
    writeFailures().add(1);
  }

  /** Gives the current failure a better reason once it is known. */
  explain(reason: string): void {
    this.reason = reason;
  }

  /**
   * Why the store is failing, for readiness, or undefined: until FAILING_HOLD_MS after the last
   * failure. Time, not the next success, ends it: a smaller write may fit on a disk that is still
   * nearly full, and readiness must not flap on it; and a process taken out of service while not
   * ready gets no work that could prove it well again.
   */
  problem(): string | undefined {
    if (this.lastFailureAtMs === 0 || this.now() - this.lastFailureAtMs >= FAILING_HOLD_MS) return undefined;
    const since = new Date(this.failingSinceMs).toISOString();
    return `${this.what} failing since ${since} (${this.failures} failed): ${this.reason || "commit failed"}`;
  }
}
