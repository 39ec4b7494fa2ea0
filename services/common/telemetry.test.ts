import assert from "node:assert/strict";
import { afterEach, describe, it } from "node:test";
import { context, propagation, ROOT_CONTEXT, trace } from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { NodeTracerProvider } from "@opentelemetry/sdk-trace-node";
import { endSpan, extractContext, injectContext, startSpan } from "./telemetry.js";

const TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

describe("startSpan", () => {
  afterEach(() => {
    trace.disable();
    propagation.disable();
  });

  it("with no tracer registered, carries the parent's trace on without a span of its own", () => {
    propagation.setGlobalPropagator(new W3CTraceContextPropagator());
    const parent = extractContext({ traceparent: TRACEPARENT });
    const { span, ctx } = startSpan("test.span", parent, { attributes: { a: 1 } });
    assert.equal(ctx, parent, "the parent's context is the child's");
    assert.equal(span.isRecording(), false);
    assert.equal(span.spanContext().spanId, "b7ad6b7169203331");
    span.setAttribute("b", 2);
    endSpan(span, new Error("recorded nowhere"));
    // What goes on to the next process names the same trace and parent as the no-op tracer's would.
    assert.equal(injectContext(ctx).traceparent, TRACEPARENT);

    const root = startSpan("test.root", ROOT_CONTEXT);
    assert.equal(root.span.spanContext().traceId, "00000000000000000000000000000000");
    assert.equal(injectContext(root.ctx).traceparent, undefined, "no trace to propagate");
  });

  it("records a child of the parent once a tracer provider is registered, by anyone", () => {
    const exporter = new InMemorySpanExporter();
    const provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
    provider.register({ propagator: new W3CTraceContextPropagator() });
    const parent = extractContext({ traceparent: TRACEPARENT });
    const { span, ctx } = startSpan("test.span", parent, { attributes: { a: 1 } });
    assert.notEqual(ctx, parent);
    assert.equal(trace.getSpan(ctx), span);
    context.with(ctx, () => endSpan(span));
    const [finished] = exporter.getFinishedSpans();
    assert.equal(finished?.name, "test.span");
    assert.equal(finished?.spanContext().traceId, "0af7651916cd43dd8448eb211c80319c");
    assert.equal(finished?.parentSpanContext?.spanId, "b7ad6b7169203331");
    assert.equal(finished?.attributes.a, 1);
  });
});
