/**
 * Retention of log entries: which disappearing-message timers members may choose, and the
 * background sweep that deletes entries past their expiry from the store.
 */
import { z } from "zod";
import { fail } from "./error.js";
import { check, type Env, intVariable, listOf } from "./schema.js";

/** The retention section. */
export interface RetentionConfig {
  /**
   * The disappearing-message timers a member may set, in seconds, besides 0 (off); ascending.
   * WhatsApp's 24 hours, 7 days and 90 days by default.
   */
  disappearingSeconds: number[];
  /** How often a sequencer process deletes expired entries from its store, in milliseconds. */
  expirySweepMs: number;
  /** Entries one sweep step deletes, at most (one bounded write); a sweep takes steps until done. */
  expirySweepBatch: number;
  /**
   * The server-wide maximum age of log entries, in milliseconds (0: kept for ever): older entries
   * are served as expired and deleted, delivered or not. A device has this long to receive an
   * entry.
   */
  maxAgeMs: number;
  /**
   * Entries every active device of every member has received (each acknowledged them, or
   * started past them) are deleted once they are this old, in milliseconds (0: off, they wait
   * for maxAgeMs).
   */
  afterDeliveryMs: number;
  /**
   * How far the clocks of media and sequencer processes may differ, in milliseconds: an
   * attachment goes with the entries retention deleted only once their conversation's stored log
   * begins this long after its claim (services/media/retention.ts).
   */
  clockMarginMs: number;
}

/** The default timers: 24 hours, 7 days, 90 days. */
export const DEFAULT_DISAPPEARING_SECONDS: readonly number[] = [86_400, 604_800, 7_776_000];

/** The longest retention accepted, in seconds: ScyllaDB's largest TTL (20 years). */
const MAX_RETENTION_SECONDS = 630_720_000;

/** The longest timer accepted, in seconds (a year): entries are written with it as a TTL. */
const MAX_DISAPPEARING_SECONDS = 365 * 86_400;

/** The retention settings' variables. */
export const retentionVariables = z.object({
  SWITCHBOARD_DISAPPEARING_TIMERS: listOf(),
  SWITCHBOARD_EXPIRY_SWEEP_MS: intVariable("SWITCHBOARD_EXPIRY_SWEEP_MS", 60_000, true),
  SWITCHBOARD_EXPIRY_SWEEP_BATCH: intVariable("SWITCHBOARD_EXPIRY_SWEEP_BATCH", 1_000, true),
  // 30 days: how long an undelivered message waits for its devices, as the design brief says.
  SWITCHBOARD_RETENTION_SECONDS: intVariable("SWITCHBOARD_RETENTION_SECONDS", 2_592_000, true),
  SWITCHBOARD_RETENTION_AFTER_DELIVERY_SECONDS: intVariable(
    "SWITCHBOARD_RETENTION_AFTER_DELIVERY_SECONDS",
    0,
    true,
  ),
  SWITCHBOARD_RETENTION_CLOCK_MARGIN_MS: intVariable("SWITCHBOARD_RETENTION_CLOCK_MARGIN_MS", 300_000, true),
});

/** The retention settings from the environment, each checked. */
export function loadRetention(env: Env): RetentionConfig {
  const vars = check(retentionVariables, env);
  const given = vars.SWITCHBOARD_DISAPPEARING_TIMERS;
  const seconds = given.length === 0 ? [...DEFAULT_DISAPPEARING_SECONDS] : given.map(Number);
  for (const [i, s] of seconds.entries()) {
    if (!Number.isInteger(s) || s < 1 || s > MAX_DISAPPEARING_SECONDS) {
      fail(
        `SWITCHBOARD_DISAPPEARING_TIMERS: "${given[i]}" is not a number of seconds from 1 to ${MAX_DISAPPEARING_SECONDS}`,
      );
    }
  }
  if (vars.SWITCHBOARD_EXPIRY_SWEEP_MS < 1_000) fail("SWITCHBOARD_EXPIRY_SWEEP_MS must be at least 1000");
  if (vars.SWITCHBOARD_EXPIRY_SWEEP_BATCH < 1 || vars.SWITCHBOARD_EXPIRY_SWEEP_BATCH > 10_000)
    fail("SWITCHBOARD_EXPIRY_SWEEP_BATCH must be between 1 and 10000");
  const retention = vars.SWITCHBOARD_RETENTION_SECONDS;
  if (retention > MAX_RETENTION_SECONDS)
    fail(
      `SWITCHBOARD_RETENTION_SECONDS must be at most ${MAX_RETENTION_SECONDS} (20 years), or 0 to keep entries`,
    );
  return {
    maxAgeMs: retention * 1000,
    afterDeliveryMs: vars.SWITCHBOARD_RETENTION_AFTER_DELIVERY_SECONDS * 1000,
    clockMarginMs: vars.SWITCHBOARD_RETENTION_CLOCK_MARGIN_MS,
    disappearingSeconds: [...new Set(seconds)].sort((a, b) => a - b),
    expirySweepMs: vars.SWITCHBOARD_EXPIRY_SWEEP_MS,
    expirySweepBatch: vars.SWITCHBOARD_EXPIRY_SWEEP_BATCH,
  };
}
