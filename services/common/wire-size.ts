/**
 * Sizes of protobuf-es messages on the wire, without encoding them, and the removal of fields a
 * schema does not know. Byte bounds on queues and pages use the size bound: it never
 * undercounts, so a page held to N bytes by it encodes to at most N bytes.
 */

/** Bytes of a field's tag and length prefix, at most (5-byte tag, 5-byte length). */
const FIELD_OVERHEAD = 10;
/** A scalar's bytes with its tag, at most (a 10-byte varint for a negative int64). */
const SCALAR_BYTES = 15;
/** How deep a value is walked; protobuf decoders stop at 100 levels too. */
const MAX_DEPTH = 100;

interface UnknownFieldLike {
  data: Uint8Array;
}

function isUnknownList(value: unknown): value is UnknownFieldLike[] {
  return Array.isArray(value);
}

function valueBound(value: unknown, depth: number): number {
  if (value === undefined || value === null) return 0;
  switch (typeof value) {
    case "string":
      // A UTF-16 code unit is at most 3 bytes of UTF-8 (a surrogate pair, 2 units, is 4).
      return FIELD_OVERHEAD + value.length * 3;
    case "number":
    case "bigint":
    case "boolean":
      return SCALAR_BYTES;
    case "object":
      break;
    default:
      return 0;
  }
  if (value instanceof Uint8Array) return FIELD_OVERHEAD + value.length;
  if (Array.isArray(value)) {
    let n = 0;
    for (const item of value) n += valueBound(item, depth + 1);
    return n;
  }
  if (depth > MAX_DEPTH) return 0;
  return FIELD_OVERHEAD + objectBound(value as Record<string, unknown>, depth + 1);
}

function objectBound(object: Record<string, unknown>, depth: number): number {
  // A oneof is { case, value }: only the value is encoded.
  if ("case" in object && "value" in object && !("$typeName" in object)) {
    return object.case === undefined ? 0 : valueBound(object.value, depth) - FIELD_OVERHEAD;
  }
  let n = 0;
  for (const key in object) {
    if (key === "$typeName") continue;
    const value = object[key];
    if (key === "$unknown") {
      if (isUnknownList(value)) for (const u of value) n += FIELD_OVERHEAD + u.data.length;
      continue;
    }
    // Map entries (a plain object without $typeName) cost their key too.
    n += valueBound(value, depth) + (object.$typeName === undefined ? FIELD_OVERHEAD + key.length * 3 : 0);
  }
  return n;
}

/**
 * An upper bound of the binary encoding of a protobuf-es message, in bytes: every field counted
 * with its largest tag and length prefix, unknown fields included. Cheap (no bytes are copied).
 */
export function encodedSizeBound(message: object): number {
  return objectBound(message as Record<string, unknown>, 0);
}

/**
 * Removes every unknown field from a decoded message, at every depth (protobuf-es keeps them in
 * `$unknown` and writes them back out when the message is encoded again). Returns the bytes
 * removed.
 */
export function stripUnknownFields(message: object): number {
  return strip(message as Record<string, unknown>, 0);
}

function strip(object: Record<string, unknown>, depth: number): number {
  if (depth > MAX_DEPTH) return 0;
  let removed = 0;
  const unknown = object.$unknown;
  if (unknown !== undefined) {
    if (isUnknownList(unknown)) for (const u of unknown) removed += u.data.length;
    delete object.$unknown;
  }
  for (const key in object) {
    const value = object[key];
    if (value === null || typeof value !== "object" || value instanceof Uint8Array) continue;
    if (Array.isArray(value)) {
      for (const item of value) {
        if (item !== null && typeof item === "object" && !(item instanceof Uint8Array))
          removed += strip(item as Record<string, unknown>, depth + 1);
      }
      continue;
    }
    removed += strip(value as Record<string, unknown>, depth + 1);
  }
  return removed;
}
