import { Code, ConnectError } from "@connectrpc/connect";
import { RETRY_AFTER_HEADER } from "../common/boundary.js";
import type { Logger } from "../common/log.js";
import type { RateLimit, RateLimiter } from "../common/rate-limit/types.js";
import { lazyInstrument, meter } from "../common/telemetry.js";

/** Why the accounts service refused a caller; the label of switchboard.abuse.refusals. */
export type RefusalReason =
  | "register_rate_address"
  | "register_rate_server"
  | "username_reserved"
  | "username_lookalike"
  | "lookup_rate"
  | "bundle_rate"
  | "prekey_pair_limit"
  | "link_code_void"
  | "invite_required"
  | "invite_invalid";

/**
 * Where the accounts service reports what it turns away: the process's refusal counter and log
 * (services/common/refusals.ts has this shape), or LoggedRefusals when none is given.
 */
export interface RefusalSink {
  /** Records one refusal: `reason` is a short stable name, `fields` never a payload, token or secret. */
  refuse(reason: RefusalReason, message: string, fields?: Record<string, string | number | undefined>): void;
}

/** A refusal of one reason is logged at most once per this many milliseconds, with the count since. */
const LOG_INTERVAL_MS = 10_000;

const counter = lazyInstrument(() =>
  meter().createCounter("switchboard.refusals", {
    description: "Requests, connections and frames turned away, by reason and gRPC code",
  }),
);

/**
 * A sink of its own for an accounts manager built without the process's: counts refusals and logs
 * them at info, one line per reason per 10 s with how many were folded into it, so a flood does
 * not turn into a flood of log lines.
 */
export class LoggedRefusals implements RefusalSink {
  private readonly lastLogged = new Map<string, { at: number; folded: number }>();
  /** Refusals by reason since start. */
  readonly counts = new Map<string, number>();

  constructor(private readonly log: Logger) {}

  refuse(
    reason: RefusalReason,
    message: string,
    fields: Record<string, string | number | undefined> = {},
  ): void {
    this.counts.set(reason, (this.counts.get(reason) ?? 0) + 1);
    counter().add(1, { reason, code: "none" });
    const now = Date.now();
    const last = this.lastLogged.get(reason);
    if (last !== undefined && now - last.at < LOG_INTERVAL_MS) {
      last.folded++;
      return;
    }
    this.lastLogged.set(reason, { at: now, folded: 0 });
    this.log.info({ refusal: reason, ...fields, ...(last?.folded ? { folded: last.folded } : {}) }, message);
  }
}

/** A rate limit of the accounts service: the limit and the limiter that keeps it (shared on Redis). */
export interface AccountRate {
  limiter: RateLimiter;
  limit: RateLimit;
}

/**
 * A limit of `count` per `periodSeconds`, which is also the burst: a quiet key may use a whole
 * period's allowance at once, then one more every periodSeconds / count. Undefined when count is
 * 0 (the limit is off).
 */
export function perPeriod(name: string, count: number, periodSeconds: number): RateLimit | undefined {
  return count > 0 ? { name, rate: count / periodSeconds, burst: count } : undefined;
}

/**
 * Takes `cost` from key's bucket; throws RESOURCE_EXHAUSTED with a retry-after-ms trailer (and
 * counts the refusal) when the bucket is empty. No limit, no check.
 */
export async function enforce(
  rate: AccountRate | undefined,
  key: string,
  cost: number,
  refusals: RefusalSink,
  reason: RefusalReason,
  message: string,
  fields: Record<string, string | number | undefined> = {},
): Promise<void> {
  if (rate === undefined) return;
  const wait = await rate.limiter.take(rate.limit, key, Math.min(cost, rate.limit.burst));
  if (wait <= 0) return;
  refusals.refuse(reason, message, { ...fields, code: "resource_exhausted" });
  const retry = Number.isFinite(wait) ? Math.ceil(wait) : Math.ceil(1000 / rate.limit.rate);
  throw new ConnectError(`${message}; retry in ${retry} ms`, Code.ResourceExhausted, {
    [RETRY_AFTER_HEADER]: String(retry),
  });
}
