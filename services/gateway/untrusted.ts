import { toBinary } from "@bufbuild/protobuf";
import { type OutgoingEntry, OutgoingEntrySchema } from "../../gen/switchboard/v1/entry_pb.js";
import { DEVICE_ENTRY_WIRE_BYTES, type Limits } from "../common/config.js";
import { InvalidInputError } from "../common/errors.js";
import { encodedSizeBound, stripUnknownFields } from "../common/wire-size.js";
import { bodyBytes, devicePayloadsOf } from "../sequencer/index.js";

/**
 * Bytes an outgoing entry may take beyond its payload and device entries: the client message id
 * (64 characters), the conversation id, the body's tags and scalars. Generous: only unknown
 * fields (which are dropped before this is checked) could need more.
 */
export const ENTRY_ENVELOPE_BYTES = 512;

/**
 * Drops the fields a device sent that this server's schema does not know, at every depth of
 * the message, before anything is checked, stored or forwarded: protobuf-es keeps them and
 * writes them back out, so they would ride past every size limit into the log and to every
 * recipient. Returns the bytes dropped.
 */
export function dropUnknownFields(message: object): number {
  return stripUnknownFields(message);
}

/** The largest encoded outgoing entry with this many device entries. */
export function maxEntryBytes(limits: Limits, deviceEntries: number): number {
  return limits.maxPayloadBytes + ENTRY_ENVELOPE_BYTES + deviceEntries * DEVICE_ENTRY_WIRE_BYTES;
}

/**
 * Checks the size of the entry as it will be stored: its encoding, not only its payload field,
 * against the payload limit plus its ids and framing. INVALID_ARGUMENT when larger.
 */
export function requireEntrySize(entry: OutgoingEntry, limits: Limits): void {
  // A payload over its limit gets the sequencer's answer, which names the field.
  if (bodyBytes(entry.body) > limits.maxPayloadBytes) return;
  const max = maxEntryBytes(limits, devicePayloadsOf(entry.body).length);
  // The bound never undercounts and costs a walk of the fields, where encoding cost a copy of every
  // send: only an entry near its limit is encoded for the exact figure.
  if (encodedSizeBound(entry) <= max) return;
  const bytes = toBinary(OutgoingEntrySchema, entry).length;
  if (bytes > max) {
    throw new InvalidInputError(
      `entry: ${bytes} bytes encoded; the limit is ${max} (the ${limits.maxPayloadBytes}-byte payload limit plus ids and framing)`,
    );
  }
}
