/**
 * What goes into a NATS message: a committed event with its trace context in headers, and the
 * packing of several events (or deliveries) into payloads within the server's size limit.
 */
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { BinaryReader, BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { headers, type JsMsg, type MsgHdrs } from "nats";
import { type BusEvent, BusEventSchema } from "../../../gen/switchboard/internal/v1/events_pb.js";
import { varintSize } from "../../common/hot-encoding.js";

/**
 * A committed event's payload: the event without its trace context, which rides in NATS headers
 * (traceHeaders), as W3C propagation over NATS does.
 */
export function encodeCommitted(event: BusEvent): Uint8Array {
  return toBinary(
    BusEventSchema,
    Object.keys(event.traceContext).length > 0 ? { ...event, traceContext: {} } : event,
  );
}

/** The headers carrying a trace context (undefined when it is empty). */
export function traceHeaders(traceContext: Readonly<Record<string, string>>): MsgHdrs | undefined {
  const entries = Object.entries(traceContext);
  if (entries.length === 0) return undefined;
  const hdrs = headers();
  for (const [k, v] of entries) hdrs.set(k, v);
  return hdrs;
}

/** A committed event as consumed, its trace context back from the headers; throws on bad bytes. */
export function decodeCommitted(m: JsMsg): BusEvent {
  const event = fromBinary(BusEventSchema, m.data);
  const traceparent = m.headers?.get("traceparent");
  if (traceparent) {
    event.traceContext.traceparent = traceparent;
    const tracestate = m.headers?.get("tracestate");
    if (tracestate) event.traceContext.tracestate = tracestate;
  }
  return event;
}

/**
 * Groups encoded items into payloads, each the wire form of a message whose field 1 repeats them
 * (so a DeliveryBatch splits into smaller DeliveryBatches), none larger than limit bytes.
 */
export function packRepeated(items: readonly Uint8Array[], limit: number): Uint8Array[] {
  const payloads: Uint8Array[] = [];
  let writer = new BinaryWriter();
  let size = 0;
  let count = 0;
  for (const item of items) {
    // Tag (1 byte for field 1) plus the length varint plus the item.
    const framed = 1 + varintSize(item.length) + item.length;
    if (framed > limit)
      throw new RangeError(
        `nats bus: one item of ${item.length} bytes exceeds the ${limit}-byte payload limit`,
      );
    if (count > 0 && size + framed > limit) {
      payloads.push(writer.finish());
      writer = new BinaryWriter();
      size = 0;
      count = 0;
    }
    writer.tag(1, WireType.LengthDelimited).bytes(item);
    size += framed;
    count++;
  }
  if (count > 0) payloads.push(writer.finish());
  return payloads;
}

/** The events of a payload packed by packRepeated; throws on bytes that do not decode. */
export function unpackEvents(data: Uint8Array): BusEvent[] {
  const reader = new BinaryReader(data);
  const events: BusEvent[] = [];
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === 1 && wireType === WireType.LengthDelimited)
      events.push(fromBinary(BusEventSchema, reader.bytes()));
    else reader.skip(wireType);
  }
  return events;
}
