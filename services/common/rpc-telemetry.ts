import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { context, propagation, SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import { meter, tracer } from "./telemetry.js";

/**
 * Tracing and metrics for every RPC, on both sides. The W3C trace context travels in the request
 * headers, so a send's trace continues from the gateway into the sequencer and the other services.
 */

const headerGetter = {
  get: (h: Headers, key: string) => h.get(key) ?? undefined,
  keys: (h: Headers) => [...h.keys()],
};
const headerSetter = { set: (h: Headers, key: string, value: string) => h.set(key, value) };

function codeName(err: unknown): string {
  if (err === undefined) return "ok";
  return Code[ConnectError.from(err).code]?.replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase() ?? "unknown";
}

/** Server side: a span per unary call, continuing the caller's trace; duration and outcome by code. */
export function serverTelemetry(): Interceptor {
  const m = meter();
  const duration = m.createHistogram("switchboard.rpc.server.duration_seconds", {
    description: "Time to answer a unary RPC, by service, method and gRPC code",
    unit: "s",
    advice: {
      explicitBucketBoundaries: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    },
  });
  const streams = m.createCounter("switchboard.rpc.server.streams", {
    description: "Streams ended, by service, method and gRPC code",
  });
  return (next) => async (req) => {
    const attributes = { "rpc.service": req.service.typeName, "rpc.method": req.method.name };
    if (req.stream) {
      // A device stream lives for hours; its frames get their own spans (see the gateway).
      try {
        const res = await next(req);
        return res;
      } catch (err) {
        streams.add(1, { ...attributes, "rpc.grpc.status": codeName(err) });
        throw err;
      }
    }
    const parent = propagation.extract(context.active(), req.header, headerGetter);
    const span = tracer().startSpan(
      `${req.service.typeName}/${req.method.name}`,
      { kind: SpanKind.SERVER, attributes: { "rpc.system": "grpc", ...attributes } },
      parent,
    );
    const started = performance.now();
    let failure: unknown;
    try {
      return await context.with(trace.setSpan(parent, span), () => next(req));
    } catch (err) {
      failure = err;
      throw err;
    } finally {
      const code = codeName(failure);
      duration.record((performance.now() - started) / 1000, { ...attributes, "rpc.grpc.status": code });
      if (failure !== undefined) span.setStatus({ code: SpanStatusCode.ERROR, message: code });
      span.setAttribute("rpc.grpc.status", code);
      span.end();
    }
  };
}

/** Client side: a span per unary call, whose context goes out in the request headers. */
export function clientTelemetry(): Interceptor {
  return (next) => async (req) => {
    if (req.stream) {
      propagation.inject(context.active(), req.header, headerSetter);
      return next(req);
    }
    const span = tracer().startSpan(`${req.service.typeName}/${req.method.name}`, {
      kind: SpanKind.CLIENT,
      attributes: {
        "rpc.system": "grpc",
        "rpc.service": req.service.typeName,
        "rpc.method": req.method.name,
      },
    });
    const ctx = trace.setSpan(context.active(), span);
    propagation.inject(ctx, req.header, headerSetter);
    try {
      return await context.with(ctx, () => next(req));
    } catch (err) {
      span.setStatus({ code: SpanStatusCode.ERROR, message: codeName(err) });
      throw err;
    } finally {
      span.end();
    }
  };
}
