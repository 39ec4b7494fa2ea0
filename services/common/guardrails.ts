/**
 * Guardrail metrics of conversation health (issue 12): how often people block, report, mute and
 * leave, for an A/B test's guardrails (an experiment that makes people block more is harmful
 * whatever else it improves). Counts only: no user or conversation is ever a label. Each action
 * is counted once in total, and once per configured feature flag under the acting user's variant
 * of it, so the arms of an experiment can be compared; the variant is the one GetFeatureFlags
 * gives the user (the same hash). Per day is the query's business:
 * increase(switchboard_guardrail_actions_total[1d]).
 */
import type { FeatureFlag } from "./config/flags.js";
import { assignVariant } from "./feature-flags.js";
import { lazyInstrument, meter } from "./telemetry.js";

/** What a guardrail counts. */
export type GuardrailAction = "block" | "report" | "mute" | "leave";

const actions = lazyInstrument(() =>
  meter().createCounter("switchboard.guardrail.actions", {
    description:
      "Blocks (new ones), reports (stored), mutes (a conversation muted) and leaves (a member leaving a group), by action; counts only",
  }),
);

const byVariant = lazyInstrument(() =>
  meter().createCounter("switchboard.guardrail.variant_actions", {
    description:
      "The guardrail actions again, by action, feature flag and the acting user's variant of it; counts only",
  }),
);

/**
 * The flags the counts are split by: the process's configuration, set once at start-up
 * (services/server/index.ts). A process-wide setting, as the meter it counts on is.
 */
let flags: readonly FeatureFlag[] = [];

/** Sets the feature flags whose variants split the counts (the configured ones). */
export function useGuardrailFlags(configured: readonly FeatureFlag[]): void {
  flags = configured;
}

/** Counts one action of a user where it took effect (the process that wrote it). */
export function countGuardrail(action: GuardrailAction, userId: string): void {
  actions().add(1, { action });
  for (const flag of flags)
    byVariant().add(1, { action, flag: flag.name, variant: assignVariant(flag, userId) });
}
