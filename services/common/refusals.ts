import type { Counter } from "@opentelemetry/api";
import type { Logger } from "./log.js";
import { meter } from "./telemetry.js";

/** What is known of one refusal; never a payload, token or secret. */
export interface RefusalFields {
  /** The client's source address (or its /64 for IPv6), when the refusal is about a connection. */
  address?: string;
  /** The RPC, as its path ("/switchboard.v1.AccountService/Register"). */
  procedure?: string;
  /** The gRPC code the client got, as its lower-case name ("resource_exhausted"). */
  code?: string;
  /** Anything else that tells an operator why, without identifying content. */
  [key: string]: string | number | undefined;
}

/**
 * Where a refusal is recorded: a Refusals, or (on a stream thread, stream-thread.ts) a stand-in
 * that hands it to the main thread's, where the log and the metric are.
 */
export type RefusalSink = Pick<Refusals, "refuse">;

/**
 * Counts and logs what the server turns away. Every refusal is counted (the metric
 * `switchboard.refusals` by reason and code); the log line is written once per reason and
 * address per window, with how many were folded into it, so an attacker cannot turn a flood of
 * refusals into a flood of log lines.
 */
export class Refusals {
  /** Refusals by reason since start, for tests and the admin service. */
  readonly counts = new Map<string, number>();
  private readonly counter: Counter;
  private readonly logged = new Map<string, { at: number; folded: number }>();

  constructor(
    private readonly log: Logger,
    private readonly windowMs = 10_000,
    private readonly now: () => number = Date.now,
  ) {
    this.counter = meter().createCounter("switchboard.refusals", {
      description: "Requests, connections and frames turned away, by reason and gRPC code",
    });
  }

  /** Records one refusal. `reason` is a short stable name ("connections_per_address"). */
  refuse(reason: string, message: string, fields: RefusalFields = {}): void {
    this.counts.set(reason, (this.counts.get(reason) ?? 0) + 1);
    this.counter.add(1, { reason, code: fields.code ?? "none" });
    const key = `${reason}\u0000${fields.address ?? ""}`;
    const now = this.now();
    const seen = this.logged.get(key);
    if (seen !== undefined && now - seen.at < this.windowMs) {
      seen.folded++;
      return;
    }
    const folded = seen?.folded ?? 0;
    this.logged.set(key, { at: now, folded: 0 });
    if (this.logged.size > 10_000) this.forgetOld(now);
    this.log.info({ refusal: reason, ...fields, ...(folded > 0 ? { folded } : {}) }, message);
  }

  /** Drops the log windows that have passed, so many addresses cannot grow the map without end. */
  private forgetOld(now: number): void {
    for (const [key, seen] of this.logged) {
      if (now - seen.at >= this.windowMs) this.logged.delete(key);
    }
    // Still full (a flood from that many addresses inside one window): start over, which at
    // worst logs one more line per address.
    if (this.logged.size > 10_000) this.logged.clear();
  }
}
