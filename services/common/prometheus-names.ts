import { DataPointType, type MetricData, type ResourceMetrics } from "@opentelemetry/sdk-metrics";

/**
 * Prometheus names with their unit, as OpenTelemetry's Prometheus compatibility rules give them
 * and as Prometheus' own conventions want: `rpc.server.call.duration` in seconds is scraped as
 * `rpc_server_call_duration_seconds`, `v8js.memory.heap.used` in bytes as
 * `v8js_memory_heap_used_bytes`, a gauge of unit "1" gets `_ratio`. The JavaScript Prometheus
 * exporter (0.223) leaves units out of names, so the semantic-convention names would otherwise
 * lose them. Names that already end in their unit (`switchboard.store.commit.duration_seconds`)
 * are left as they are; annotation units such as "{resource}" add nothing.
 */

const UNIT_SUFFIXES: Readonly<Record<string, string>> = {
  s: "seconds",
  ms: "milliseconds",
  By: "bytes",
  KiBy: "kibibytes",
  MiBy: "mebibytes",
};

/** The name a metric is exported under: its own, plus its unit's suffix when it lacks one. */
export function prometheusName(metric: MetricData): string {
  const { name, unit } = metric.descriptor;
  const suffix =
    unit === "1" ? (metric.dataPointType === DataPointType.GAUGE ? "ratio" : undefined) : UNIT_SUFFIXES[unit];
  if (suffix === undefined) return name;
  const tail = name.split(/[._]/).at(-1);
  return tail === suffix ? name : `${name}_${suffix}`;
}

/** The collected metrics with their Prometheus names (copies: the SDK's descriptors stay untouched). */
export function withUnitSuffixes(resourceMetrics: ResourceMetrics): ResourceMetrics {
  return {
    ...resourceMetrics,
    scopeMetrics: resourceMetrics.scopeMetrics.map((scope) => ({
      ...scope,
      metrics: scope.metrics.map((metric) => {
        const name = prometheusName(metric);
        return name === metric.descriptor.name
          ? metric
          : { ...metric, descriptor: { ...metric.descriptor, name } };
      }),
    })),
  };
}
