import { LimitError } from "../common/errors.js";
import type { RateLimit, RateLimiter } from "../common/rate-limit/types.js";
import type { RefusalFields } from "../common/refusals.js";

/** Why the accounts service refused a caller; the label of switchboard.refusals. */
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
  | "invite_invalid"
  | "report_rate"
  | "block_rate";

/**
 * The process's refusal counter and log (services/common/refusals.ts), seen through the accounts
 * service's reasons, so a misspelt reason is a type error rather than a new metric label.
 */
export interface RefusalSink {
  /** Records one refusal: `reason` is a short stable name, `fields` never a payload, token or secret. */
  refuse(reason: RefusalReason, message: string, fields?: RefusalFields): void;
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
 * Takes `cost` from key's bucket; throws a LimitError (RESOURCE_EXHAUSTED with a retry-after-ms
 * trailer) and counts the refusal when the bucket is empty. No limit, no check.
 */
export async function enforce(
  rate: AccountRate | undefined,
  key: string,
  cost: number,
  refusals: RefusalSink,
  reason: RefusalReason,
  message: string,
  fields: RefusalFields = {},
): Promise<void> {
  if (rate === undefined) return;
  const wait = await rate.limiter.take(rate.limit, key, Math.min(cost, rate.limit.burst));
  if (wait <= 0) return;
  refusals.refuse(reason, message, { ...fields, code: "resource_exhausted" });
  const retry = Number.isFinite(wait) ? Math.ceil(wait) : Math.ceil(1000 / rate.limit.rate);
  throw new LimitError(`${message}; retry in ${retry} ms`, { retryAfterMs: retry });
}
