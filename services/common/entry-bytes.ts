import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { type Entry, EntrySchema } from "../../gen/switchboard/v1/entry_pb.js";
import { encodeEntry } from "./hot-encoding.js";

/**
 * Entries already encoded, by object. In one process an entry is one object from the sequencer's
 * commit to every stream it is pushed on (calls and the bus pass messages by reference), so the
 * bytes the store writes are the bytes the device streams write: encoded once, not once by the
 * store and again for delivery. Sound because a protobuf message is never changed once built
 * (docs/architecture.md, "In-process calls"): an entry that changes is a new object.
 */
const encoded = new WeakMap<Entry, Uint8Array>();

/** The entry's protobuf encoding (exactly toBinary's), computed once per object. Do not modify it. */
export function entryBytes(entry: Entry): Uint8Array {
  let bytes = encoded.get(entry);
  if (bytes === undefined) {
    bytes = encodeEntry(entry) ?? toBinary(EntrySchema, entry);
    encoded.set(entry, bytes);
  }
  return bytes;
}

/**
 * Decodes an entry encoded by entryBytes, and remembers those bytes as the new object's own, so
 * an entry read back (from the sequencer's tail) is not encoded again on its way to a stream.
 * Sound because decoding and encoding again gives back the same bytes for anything entryBytes
 * wrote (protobuf-es writes fields in number order and unknown fields as they came; the tests
 * hold it). Its bytes fields are views into `bytes`, which must not change.
 */
export function decodeEntry(bytes: Uint8Array): Entry {
  // A Buffer's views are Buffers: read a plain view, so the entry's bytes fields are Uint8Arrays
  // as in any other decoded message.
  const view = Buffer.isBuffer(bytes)
    ? new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    : bytes;
  const entry = fromBinary(EntrySchema, view);
  encoded.set(entry, bytes);
  return entry;
}
