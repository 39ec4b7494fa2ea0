/**
 * Spans for committed events crossing NATS, under the OpenTelemetry messaging conventions: a
 * PRODUCER "send" span per published event and a CONSUMER "process" span per consumed one, each
 * with messaging.system "nats", the subject, the message id and the body size. The publisher's
 * span context rides in the message's headers (W3C traceparent), so the consumer's span is its
 * child and everything fanout does for the event stays in the sender's trace.
 *
 * Only events that arrive traced get spans: with tracing off, or for an unsampled trace, this
 * costs a check per event.
 */
import { context, type Span, trace } from "@opentelemetry/api";
import type { BusEvent } from "../../../gen/switchboard/internal/v1/events_pb.js";
import {
  ATTR_MESSAGING_BATCH_MESSAGE_COUNT,
  ATTR_MESSAGING_CONSUMER_GROUP_NAME,
  ATTR_MESSAGING_DESTINATION_NAME,
  ATTR_MESSAGING_MESSAGE_BODY_SIZE,
  ATTR_MESSAGING_MESSAGE_ID,
  ATTR_MESSAGING_OPERATION_NAME,
  ATTR_MESSAGING_OPERATION_TYPE,
  ATTR_MESSAGING_SYSTEM,
  MESSAGING_OPERATION_TYPE_VALUE_PROCESS,
  MESSAGING_OPERATION_TYPE_VALUE_SEND,
} from "../../common/semconv.js";
import { type Carrier, carries, injectContext, SpanKind, startSpan } from "../../common/telemetry.js";

/** What a span knows of one message. */
export interface MessageFacts {
  /** The JetStream stream: names the span ("send SWITCHBOARD_EVENTS"), a low-cardinality name. */
  stream: string;
  /** The subject (one per conversation). */
  subject: string;
  /** The message id (Nats-Msg-Id), when it has one. */
  msgId: string | undefined;
  /** The payload's size, in bytes. */
  bodyBytes: number;
}

function attributesOf(facts: MessageFacts) {
  return {
    [ATTR_MESSAGING_SYSTEM]: "nats",
    [ATTR_MESSAGING_DESTINATION_NAME]: facts.subject,
    [ATTR_MESSAGING_MESSAGE_BODY_SIZE]: facts.bodyBytes,
    ...(facts.msgId !== undefined && { [ATTR_MESSAGING_MESSAGE_ID]: facts.msgId }),
  };
}

/**
 * The span of one publish, child of the event's own context (the sequencer's bus.publish), and
 * the headers to send in its place; undefined for an event that carries no trace.
 */
export function sendSpan(event: BusEvent, facts: MessageFacts): { span: Span; carrier: Carrier } | undefined {
  if (!carries(event.traceContext)) return undefined;
  const { span, ctx } = startSpan(`send ${facts.stream}`, event.traceContext, {
    kind: SpanKind.PRODUCER,
    attributes: {
      ...attributesOf(facts),
      [ATTR_MESSAGING_OPERATION_TYPE]: MESSAGING_OPERATION_TYPE_VALUE_SEND,
      [ATTR_MESSAGING_OPERATION_NAME]: "publish",
    },
  });
  return { span, carrier: injectContext(ctx) };
}

/**
 * The span of one consumed event, child of the publisher's span from the headers; the event's
 * trace context becomes this span's, so its handler continues from here. Undefined when the
 * message carried no trace.
 */
export function processSpan(event: BusEvent, facts: MessageFacts & { durable: string }): Span | undefined {
  if (!carries(event.traceContext)) return undefined;
  const { span, ctx } = startSpan(`process ${facts.stream}`, event.traceContext, {
    kind: SpanKind.CONSUMER,
    attributes: {
      ...attributesOf(facts),
      [ATTR_MESSAGING_OPERATION_TYPE]: MESSAGING_OPERATION_TYPE_VALUE_PROCESS,
      [ATTR_MESSAGING_OPERATION_NAME]: "process",
      [ATTR_MESSAGING_CONSUMER_GROUP_NAME]: facts.durable,
    },
  });
  event.traceContext = injectContext(ctx);
  return span;
}

/**
 * The span of one delivery batch published to a gateway's core subject, in the context fanout
 * runs it in (the event's span, or its batch's); undefined outside a recording span. The
 * deliveries carry their own events' contexts in the payload, so each gateway.deliver span is a
 * child of its event's fanout span, and this one records the hop.
 */
export function deliverySpan(
  name: string,
  subject: string,
  bodyBytes: number,
  deliveries: number,
): Span | undefined {
  if (!trace.getActiveSpan()?.isRecording()) return undefined;
  return startSpan(`send ${name}`, context.active(), {
    kind: SpanKind.PRODUCER,
    attributes: {
      [ATTR_MESSAGING_SYSTEM]: "nats",
      [ATTR_MESSAGING_DESTINATION_NAME]: subject,
      [ATTR_MESSAGING_OPERATION_TYPE]: MESSAGING_OPERATION_TYPE_VALUE_SEND,
      [ATTR_MESSAGING_OPERATION_NAME]: "publish",
      [ATTR_MESSAGING_MESSAGE_BODY_SIZE]: bodyBytes,
      [ATTR_MESSAGING_BATCH_MESSAGE_COUNT]: deliveries,
    },
  }).span;
}
