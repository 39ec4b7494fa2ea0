/** Trace export. */
import { z } from "zod";
import { check, type Env, httpUrl, nonEmptyText } from "./schema.js";

/** Where spans go and how many. */
export interface TracingConfig {
  /** The OTLP/HTTP traces endpoint; tracing is off without one. */
  otlpEndpoint: string | undefined;
  /** The share of root spans sampled, from 0 to 1. */
  sampleRatio: number;
}

/**
 * Traces go to an OTLP/HTTP collector when one is named (ours, or the standard OpenTelemetry
 * variable); without one, tracing is off and spans cost a no-op call.
 */
export const tracingVariables = z.object({
  /** Unset or empty: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT. */
  SWITCHBOARD_OTLP_ENDPOINT: nonEmptyText(),
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: nonEmptyText(),
  SWITCHBOARD_TRACE_SAMPLE_RATIO: z
    .string()
    .optional()
    .transform((raw, ctx) => {
      const ratio = raw === undefined || raw === "" ? 0.1 : Number(raw);
      if (!Number.isFinite(ratio) || ratio < 0 || ratio > 1) {
        ctx.addIssue({
          code: "custom",
          message: `configuration: SWITCHBOARD_TRACE_SAMPLE_RATIO must be a number from 0 to 1, got "${raw}"`,
        });
        return z.NEVER;
      }
      return ratio;
    }),
});

export function loadTracing(env: Env): TracingConfig {
  const vars = check(tracingVariables, env);
  // Either variable is checked under our name, the one operators are told about.
  const endpoint = check(
    httpUrl("SWITCHBOARD_OTLP_ENDPOINT"),
    vars.SWITCHBOARD_OTLP_ENDPOINT ?? vars.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
  );
  return { otlpEndpoint: endpoint, sampleRatio: vars.SWITCHBOARD_TRACE_SAMPLE_RATIO };
}
