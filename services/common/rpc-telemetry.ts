import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { type Attributes, context, propagation, SpanKind, SpanStatusCode } from "@opentelemetry/api";
import { ATTR_ERROR_TYPE } from "@opentelemetry/semantic-conventions";
import {
  ATTR_RPC_METHOD,
  ATTR_RPC_RESPONSE_STATUS_CODE,
  ATTR_RPC_SYSTEM_NAME,
  METRIC_RPC_SERVER_CALL_DURATION,
  RPC_SYSTEM_NAME_VALUE_CONNECTRPC,
  RPC_SYSTEM_NAME_VALUE_GRPC,
} from "./semconv.js";
import { meter, startSpan } from "./telemetry.js";

/**
 * Tracing and metrics for every RPC, on both sides, named as the OpenTelemetry RPC semantic
 * conventions (semconv 1.40) name them: `rpc.server.call.duration` with `rpc.system.name`,
 * `rpc.method` (fully qualified, "package.Service/Method"), `rpc.response.status_code` and, for
 * server errors only, `error.type`. The deprecated `rpc.service`, `rpc.system` and
 * `rpc.grpc.status_code` are not emitted. The W3C trace context travels in the request headers,
 * so a send's trace continues from the gateway into the sequencer and the other services.
 */

const headerGetter = {
  get: (h: Headers, key: string) => h.get(key) ?? undefined,
  keys: (h: Headers) => [...h.keys()],
};
const headerSetter = { set: (h: Headers, key: string, value: string) => h.set(key, value) };

/**
 * Codes the conventions count as the server's failure (the others are the caller's: a bad
 * argument, a missing permission, a precondition). Only these set `error.type` and an error span.
 */
const SERVER_ERRORS = new Set<Code>([
  Code.Unknown,
  Code.DeadlineExceeded,
  Code.Unimplemented,
  Code.Internal,
  Code.Unavailable,
  Code.DataLoss,
]);

/** The RPC system a request speaks: gRPC and gRPC-Web are "grpc"; the Connect protocol is "connectrpc". */
export function rpcSystemOf(header: Headers): string {
  const type = header.get("content-type") ?? "";
  return type.startsWith("application/grpc") ? RPC_SYSTEM_NAME_VALUE_GRPC : RPC_SYSTEM_NAME_VALUE_CONNECTRPC;
}

/**
 * The status code as each system spells it: gRPC's canonical names ("OK", "UNAVAILABLE"), the
 * Connect protocol's error codes ("unavailable"), "OK" for a success in both.
 */
export function statusCodeOf(system: string, err: unknown): { status: string; serverError: boolean } {
  if (err === undefined) return { status: "OK", serverError: false };
  const code = ConnectError.from(err).code;
  const snake = (Code[code] ?? "Unknown").replace(/([a-z])([A-Z])/g, "$1_$2");
  return {
    status: system === RPC_SYSTEM_NAME_VALUE_GRPC ? snake.toUpperCase() : snake.toLowerCase(),
    serverError: SERVER_ERRORS.has(code),
  };
}

/** The attributes of a finished call: its status, and error.type when the server failed. */
function outcomeAttributes(system: string, err: unknown): Attributes {
  const { status, serverError } = statusCodeOf(system, err);
  return serverError
    ? { [ATTR_RPC_RESPONSE_STATUS_CODE]: status, [ATTR_ERROR_TYPE]: status }
    : { [ATTR_RPC_RESPONSE_STATUS_CODE]: status };
}

/** Counts a stream that ended with an error: its system, method ("package.Service/Method") and the error. */
export type StreamErrors = (system: string, method: string, err: unknown) => void;

/**
 * `switchboard.rpc.server.streams`, the streams that ended with an error by system, method and
 * status code: what serverTelemetry records for streams, for a stream served outside the
 * interceptors (the device stream's fast path, services/server/device-stream.ts).
 */
export function streamErrorCounter(): StreamErrors {
  const streams = meter().createCounter("switchboard.rpc.server.streams", {
    description: "Streams that ended with an error, by system, method and status code",
  });
  return (system, method, err) =>
    streams.add(1, {
      [ATTR_RPC_SYSTEM_NAME]: system,
      [ATTR_RPC_METHOD]: method,
      ...outcomeAttributes(system, err),
    });
}

/** Server side: a span per unary call, continuing the caller's trace; duration and outcome by code. */
export function serverTelemetry(): Interceptor {
  const m = meter();
  const duration = m.createHistogram(METRIC_RPC_SERVER_CALL_DURATION, {
    description: "Time to answer a unary RPC, by system, method and status code",
    unit: "s",
    advice: {
      explicitBucketBoundaries: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    },
  });
  const streamErrors = streamErrorCounter();
  return (next) => async (req) => {
    const system = rpcSystemOf(req.header);
    const attributes = {
      [ATTR_RPC_SYSTEM_NAME]: system,
      [ATTR_RPC_METHOD]: `${req.service.typeName}/${req.method.name}`,
    };
    if (req.stream) {
      // A device stream lives for hours: a duration would say nothing, so it is not in
      // rpc.server.call.duration; its frames get their own spans (see the gateway).
      try {
        const res = await next(req);
        return res;
      } catch (err) {
        streamErrors(system, attributes[ATTR_RPC_METHOD], err);
        throw err;
      }
    }
    const parent = propagation.extract(context.active(), req.header, headerGetter);
    const { span, ctx } = startSpan(`${req.service.typeName}/${req.method.name}`, parent, {
      kind: SpanKind.SERVER,
      attributes,
    });
    const started = performance.now();
    let failure: unknown;
    try {
      return await context.with(ctx, () => next(req));
    } catch (err) {
      failure = err;
      throw err;
    } finally {
      const outcome = outcomeAttributes(system, failure);
      duration.record((performance.now() - started) / 1000, { ...attributes, ...outcome });
      span.setAttributes(outcome);
      if (outcome[ATTR_ERROR_TYPE] !== undefined)
        span.setStatus({ code: SpanStatusCode.ERROR, message: String(outcome[ATTR_ERROR_TYPE]) });
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
    // The internal calls go over gRPC (createGrpcTransport).
    const { span, ctx } = startSpan(`${req.service.typeName}/${req.method.name}`, context.active(), {
      kind: SpanKind.CLIENT,
      attributes: {
        [ATTR_RPC_SYSTEM_NAME]: RPC_SYSTEM_NAME_VALUE_GRPC,
        [ATTR_RPC_METHOD]: `${req.service.typeName}/${req.method.name}`,
      },
    });
    propagation.inject(ctx, req.header, headerSetter);
    let failure: unknown;
    try {
      return await context.with(ctx, () => next(req));
    } catch (err) {
      failure = err;
      throw err;
    } finally {
      // A client sees every failure as one: the conventions' client side has no caller to blame.
      const { status } = statusCodeOf(RPC_SYSTEM_NAME_VALUE_GRPC, failure);
      span.setAttribute(ATTR_RPC_RESPONSE_STATUS_CODE, status);
      if (failure !== undefined) {
        span.setAttribute(ATTR_ERROR_TYPE, status);
        span.setStatus({ code: SpanStatusCode.ERROR, message: status });
      }
      span.end();
    }
  };
}
