import type { MeterProvider } from "@opentelemetry/api";
import { RuntimeNodeInstrumentation } from "@opentelemetry/instrumentation-runtime-node";
import { ATTR_CPU_MODE, METRIC_PROCESS_CPU_TIME, METRIC_PROCESS_MEMORY_USAGE } from "./semconv.js";

/**
 * The process's own health, under the OpenTelemetry runtime and process conventions:
 *
 * - from @opentelemetry/instrumentation-runtime-node: event-loop delay (nodejs.eventloop.delay.*:
 *   min, max, mean, p50, p90, p99), event-loop utilisation and time, V8 heap by space
 *   (v8js.memory.heap.*), garbage collection (v8js.gc.duration by v8js.gc.type);
 * - here: CPU time by mode (process.cpu.time) and resident memory (process.memory.usage), which
 *   that package does not report.
 *
 * Nothing here patches modules: the instrumentation only samples perf_hooks and v8.
 * Returns the function that stops the sampling.
 */
export function startRuntimeMetrics(provider: MeterProvider, meterName: string): () => void {
  // Enabled only once bound to this provider, so it never records into the global no-op one.
  const runtime = new RuntimeNodeInstrumentation({ enabled: false, monitoringPrecision: 10 });
  runtime.setMeterProvider(provider);
  runtime.enable();

  const m = provider.getMeter(meterName);
  m.createObservableCounter(METRIC_PROCESS_CPU_TIME, {
    description: "CPU time this process used, by mode (user, system)",
    unit: "s",
  }).addCallback((r) => {
    const used = process.cpuUsage();
    r.observe(used.user / 1e6, { [ATTR_CPU_MODE]: "user" });
    r.observe(used.system / 1e6, { [ATTR_CPU_MODE]: "system" });
  });
  m.createObservableGauge(METRIC_PROCESS_MEMORY_USAGE, {
    description: "Resident memory of this process (RSS)",
    unit: "By",
  }).addCallback((r) => r.observe(process.memoryUsage.rss()));

  return () => runtime.disable();
}
