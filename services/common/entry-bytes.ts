import { toBinary } from "@bufbuild/protobuf";
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
