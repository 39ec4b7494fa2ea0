import assert from "node:assert/strict";
import { test } from "node:test";
import { PrometheusExporter, PrometheusSerializer } from "@opentelemetry/exporter-prometheus";
import { MeterProvider } from "@opentelemetry/sdk-metrics";
import { withUnitSuffixes } from "./prometheus-names.js";

test("Prometheus names carry their unit once, as OpenTelemetry's compatibility rules say", async () => {
  const reader = new PrometheusExporter({ preventServerStart: true });
  const provider = new MeterProvider({ readers: [reader] });
  const m = provider.getMeter("test");
  m.createHistogram("rpc.server.call.duration", { unit: "s" }).record(0.01, { "rpc.method": "a.B/C" });
  m.createHistogram("switchboard.store.commit.duration_seconds", { unit: "s" }).record(0.01);
  m.createObservableGauge("v8js.memory.heap.used", { unit: "By" }).addCallback((r) => r.observe(5));
  m.createObservableGauge("switchboard.sequencer.hot_state.bytes", { unit: "By" }).addCallback((r) =>
    r.observe(5),
  );
  m.createObservableGauge("nodejs.eventloop.utilization", { unit: "1" }).addCallback((r) => r.observe(0.5));
  m.createObservableCounter("process.cpu.time", { unit: "s" }).addCallback((r) => r.observe(1));
  m.createCounter("switchboard.refusals").add(1);
  m.createObservableGauge("v8js.resource.active", { unit: "{resource}" }).addCallback((r) => r.observe(1));

  const { resourceMetrics } = await reader.collect();
  const text = new PrometheusSerializer().serialize(withUnitSuffixes(resourceMetrics));
  const names = new Set(
    text
      .split("\n")
      .filter((l) => l.startsWith("# TYPE "))
      .map((l) => l.split(" ")[2]),
  );
  for (const name of [
    "rpc_server_call_duration_seconds",
    "switchboard_store_commit_duration_seconds",
    "v8js_memory_heap_used_bytes",
    "switchboard_sequencer_hot_state_bytes",
    "nodejs_eventloop_utilization_ratio",
    "process_cpu_time_seconds_total",
    "switchboard_refusals_total",
    "v8js_resource_active",
  ]) {
    assert.ok(names.has(name), `${name} in ${[...names].join(", ")}`);
  }
  assert.match(text, /rpc_server_call_duration_seconds_bucket\{rpc_method="a.B\/C"[^}]*le="5"\} 1/);
  // The SDK's own descriptors keep their names: a second collection names them the same way.
  const again = await reader.collect();
  assert.ok(
    again.resourceMetrics.scopeMetrics[0]!.metrics.some(
      (x) => x.descriptor.name === "rpc.server.call.duration",
    ),
  );
  await provider.shutdown();
});
