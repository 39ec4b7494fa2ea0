/** The least time between two cuts: one push-back often answers a whole burst of sends. */
const CUT_INTERVAL_MS = 100;

/**
 * How many sends a client lets be in flight, within the server's max_sends_in_flight: additive
 * increase, multiplicative decrease, as TCP's congestion avoidance. Halved when the server says it
 * is past its capacity ("server overloaded"), at most once per 100 ms; grown by one per window's
 * worth of acknowledged sends, that is by one per round trip; unbounded again once it reaches the
 * cap. So a crowd of clients eases off together instead of queueing, and comes back gently.
 *
 * Growing by one per acknowledged send instead (as this client did) doubles the window every
 * round trip: each device was back at its cap a few round trips after a cut. Past capacity that
 * cost 40-50 % more refusals (docs/benchmarks.md, seventh pass).
 */
export class SendWindow {
  private size = Number.POSITIVE_INFINITY;
  private cutAt = Number.NEGATIVE_INFINITY;

  constructor(private readonly now: () => number = () => performance.now()) {}

  /** The sends that may be in flight now, given the server's cap. */
  limit(cap: number): number {
    return Math.min(cap, Math.floor(this.size));
  }

  /** A send was acknowledged. */
  acked(cap: number): void {
    if (this.size === Number.POSITIVE_INFINITY) return;
    const grown = this.size + 1 / this.size;
    this.size = grown >= cap ? Number.POSITIVE_INFINITY : grown;
  }

  /** The server refused a send as past its capacity, with `inFlight` other sends still in flight. */
  overloaded(inFlight: number): void {
    const now = this.now();
    if (now - this.cutAt < CUT_INTERVAL_MS) return;
    this.cutAt = now;
    this.size = Math.max(1, Math.floor(Math.min(this.size, inFlight + 1) / 2));
  }
}
