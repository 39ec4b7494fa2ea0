/**
 * Guardrail metrics of conversation health (issue 12): how often people block, report, mute and
 * leave, for an A/B test's guardrails (an experiment that makes people block more is harmful
 * whatever else it improves). Counts only: the one attribute is the action, never a user, a
 * conversation or a flag variant, so the series stay four and identify nobody. Per day is the
 * query's business: increase(switchboard_guardrail_actions_total[1d]).
 */
import { lazyInstrument, meter } from "./telemetry.js";

/** What a guardrail counts. */
export type GuardrailAction = "block" | "report" | "mute" | "leave";

const actions = lazyInstrument(() =>
  meter().createCounter("switchboard.guardrail.actions", {
    description:
      "Blocks (new ones), reports (stored), mutes (a conversation muted) and leaves (a member leaving a group), by action; counts only",
  }),
);

/** Counts one action where it took effect (the process that wrote it). */
export function countGuardrail(action: GuardrailAction): void {
  actions().add(1, { action });
}
