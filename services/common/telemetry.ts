import type { IncomingMessage, ServerResponse } from "node:http";
import {
  type Attributes,
  type Context,
  context,
  INVALID_SPAN_CONTEXT,
  type Link,
  metrics,
  ProxyTracerProvider,
  propagation,
  ROOT_CONTEXT,
  type Span,
  SpanKind,
  SpanStatusCode,
  trace,
} from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { PrometheusExporter, PrometheusSerializer } from "@opentelemetry/exporter-prometheus";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { MeterProvider } from "@opentelemetry/sdk-metrics";
import {
  BatchSpanProcessor,
  ParentBasedSampler,
  TraceIdRatioBasedSampler,
} from "@opentelemetry/sdk-trace-base";
import { NodeTracerProvider } from "@opentelemetry/sdk-trace-node";
import { ATTR_SERVICE_NAME, ATTR_SERVICE_VERSION } from "@opentelemetry/semantic-conventions";
import { withUnitSuffixes } from "./prometheus-names.js";
import { startRuntimeMetrics } from "./runtime-metrics.js";

/**
 * OpenTelemetry for every process: traces (off unless an OTLP endpoint is configured; the API's
 * no-op tracer then costs a function call per span) and metrics (always on, exported for
 * Prometheus on the admin port's /metrics), the runtime's own (event loop, heap, GC, CPU,
 * memory) included.
 */

/** Tracing settings. */
export interface TracingConfig {
  /** OTLP/HTTP traces endpoint (".../v1/traces"); tracing is off when absent. */
  otlpEndpoint: string | undefined;
  /** Share of new traces sampled (0..1); a sampled parent's children always are. */
  sampleRatio: number;
}

/** The name services create their tracer and meter under. */
export const INSTRUMENTATION = "switchboard";

/** The tracer every service uses. Before startTelemetry (or with tracing off) it is a no-op. */
export function tracer() {
  return trace.getTracer(INSTRUMENTATION);
}

/** The meter every service uses. */
export function meter() {
  return metrics.getMeter(INSTRUMENTATION);
}

/**
 * An instrument made on first use rather than at import, so it binds to the meter provider the
 * process sets up at start-up instead of the no-op one that exists before.
 */
export function lazyInstrument<T>(make: () => T): () => T {
  let instrument: T | undefined;
  return () => {
    instrument ??= make();
    return instrument;
  };
}

/** A process's telemetry. */
export interface Telemetry {
  /** Serves the Prometheus text format. */
  metricsHandler(req: IncomingMessage, res: ServerResponse): void;
  /** Flushes spans and stops exporting. */
  shutdown(): Promise<void>;
}

let current: { telemetry: Telemetry; users: number } | undefined;

/** The provider the API falls back to when none is registered: its tracer starts no-op spans. */
const NOOP_TRACER_PROVIDER = new ProxyTracerProvider().getDelegate();

/**
 * True when a tracer provider is registered: startTelemetry's (an OTLP endpoint is configured) or
 * one an embedding application or a test registered itself.
 */
function tracing(): boolean {
  const provider = trace.getTracerProvider();
  const delegate = provider instanceof ProxyTracerProvider ? provider.getDelegate() : provider;
  return delegate !== NOOP_TRACER_PROVIDER;
}

/** A span that records nothing and names no trace: what the no-op tracer starts without a parent. */
const NO_SPAN = trace.wrapSpanContext(INVALID_SPAN_CONTEXT);

/**
 * Starts the process's providers. The global providers are process-wide, so a second call (two
 * servers in one test process) shares the first one's; each caller's shutdown releases it.
 */
export function startTelemetry(options: {
  tracing: TracingConfig;
  serviceVersion: string;
  instanceId: string;
  roles: readonly string[];
}): Telemetry {
  if (current) {
    current.users++;
    return release(current.telemetry);
  }
  const resource = resourceFromAttributes({
    [ATTR_SERVICE_NAME]: "switchboard",
    [ATTR_SERVICE_VERSION]: options.serviceVersion,
    "service.instance.id": options.instanceId,
    "switchboard.roles": options.roles.join(","),
  });
  // W3C trace context is what crosses gRPC headers and NATS headers, with or without a tracer.
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());

  let tracerProvider: NodeTracerProvider | undefined;
  if (options.tracing.otlpEndpoint !== undefined) {
    tracerProvider = new NodeTracerProvider({
      resource,
      sampler: new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(options.tracing.sampleRatio) }),
      spanProcessors: [
        new BatchSpanProcessor(new OTLPTraceExporter({ url: options.tracing.otlpEndpoint }), {
          // Bounded: a collector that is down costs dropped spans, never memory.
          maxQueueSize: 8192,
          scheduledDelayMillis: 1000,
        }),
      ],
    });
    tracerProvider.register({ propagator: new W3CTraceContextPropagator() });
  }

  // The exporter is the reader that collects; serialising here adds the units to the names.
  const prometheus = new PrometheusExporter({ preventServerStart: true });
  const serializer = new PrometheusSerializer();
  const meterProvider = new MeterProvider({ resource, readers: [prometheus] });
  metrics.setGlobalMeterProvider(meterProvider);
  const stopRuntimeMetrics = startRuntimeMetrics(meterProvider, INSTRUMENTATION);

  const telemetry: Telemetry = {
    metricsHandler: (_req, res) => {
      prometheus.collect().then(
        ({ resourceMetrics }) => {
          res
            .writeHead(200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" })
            .end(serializer.serialize(withUnitSuffixes(resourceMetrics)));
        },
        (err: unknown) => {
          res
            .writeHead(500, { "content-type": "text/plain" })
            .end(`# failed to collect metrics: ${String(err)}\n`);
        },
      );
    },
    async shutdown() {
      stopRuntimeMetrics();
      await tracerProvider?.shutdown();
      await meterProvider.shutdown();
      trace.disable();
      metrics.disable();
      propagation.disable();
    },
  };
  current = { telemetry, users: 1 };
  return release(telemetry);
}

function release(telemetry: Telemetry): Telemetry {
  let released = false;
  return {
    metricsHandler: telemetry.metricsHandler,
    async shutdown() {
      if (released || current === undefined) return;
      released = true;
      current.users--;
      if (current.users === 0) {
        current = undefined;
        await telemetry.shutdown();
      }
    },
  };
}

/** A carrier of propagated context: the map a proto field or a header set holds. */
export type Carrier = Record<string, string>;

/** The current (or given) context as a carrier, for a message that crosses a process. */
export function injectContext(ctx: Context = context.active()): Carrier {
  const carrier: Carrier = {};
  propagation.inject(ctx, carrier);
  return carrier;
}

/** The context a carrier holds (the root context when it holds none). */
export function extractContext(carrier: Readonly<Record<string, string>> | undefined): Context {
  if (carrier === undefined) return context.active();
  return propagation.extract(context.active(), carrier);
}

/** True when the carrier names a sampled span worth continuing. */
export function carries(carrier: Readonly<Record<string, string>> | undefined): boolean {
  return carrier !== undefined && "traceparent" in carrier;
}

/**
 * Starts a span as a child of `parent` (a context or a carrier), with links to other traces that
 * share the work (batches). Returns the span and the context to run its children in.
 */
export function startSpan(
  name: string,
  parent: Context | Readonly<Record<string, string>> | undefined,
  options: { kind?: SpanKind; attributes?: Attributes; links?: Link[] } = {},
): { span: Span; ctx: Context } {
  const parentCtx =
    parent === undefined ? context.active() : isContext(parent) ? parent : extractContext(parent);
  // Tracing off: the no-op tracer's span would only carry the parent's span context on, which the
  // parent's context already does (so propagation is unchanged). Skipping it saves a span, its
  // options and a context per call on the hot path: several per message.
  if (!tracing()) return { span: trace.getSpan(parentCtx) ?? NO_SPAN, ctx: parentCtx };
  const span = tracer().startSpan(
    name,
    {
      kind: options.kind ?? SpanKind.INTERNAL,
      attributes: options.attributes ?? {},
      links: options.links ?? [],
    },
    parentCtx,
  );
  return { span, ctx: trace.setSpan(parentCtx, span) };
}

function isContext(value: unknown): value is Context {
  return typeof (value as Context).getValue === "function";
}

/** Ends a span, recording an error if there was one. */
export function endSpan(span: Span, err?: unknown): void {
  if (err !== undefined) {
    span.recordException(err instanceof Error ? err : new Error(String(err)));
    span.setStatus({ code: SpanStatusCode.ERROR, message: err instanceof Error ? err.message : String(err) });
  }
  span.end();
}

/** Links to the spans named by carriers (the other traces a batch serves). */
export function linksFrom(carriers: ReadonlyArray<Readonly<Record<string, string>> | undefined>): Link[] {
  const links: Link[] = [];
  for (const c of carriers) {
    if (!carries(c)) continue;
    const sc = trace.getSpanContext(extractContext(c));
    if (sc) links.push({ context: sc });
  }
  return links;
}

/** The trace and span ids of the active span, for log lines. */
export function activeTraceIds(): { trace_id: string; span_id: string } | undefined {
  const sc = trace.getActiveSpan()?.spanContext();
  if (sc === undefined || !trace.isSpanContextValid(sc)) return undefined;
  return { trace_id: sc.traceId, span_id: sc.spanId };
}

export { context, ROOT_CONTEXT, SpanKind, trace };
