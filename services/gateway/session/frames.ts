import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { ConnectError } from "@connectrpc/connect";
import { type Entry, MembershipAction } from "../../../gen/switchboard/v1/entry_pb.js";
import { type ConnectResponse, ConnectResponseSchema } from "../../../gen/switchboard/v1/gateway_pb.js";
import { toConnectError } from "../../common/boundary.js";
import { DomainError } from "../../common/errors.js";
import { encodedSizeBound } from "../../common/wire-size.js";

/** Entries per message frame, so frames stay small (their bytes are bounded by maxPageBytes). */
export const FRAME_ENTRIES = 64;

/**
 * The wire form of a failure answered in band (a send_error, an error frame, a sync page's
 * error), so the device reads the code and message the boundary would have sent: a domain
 * error gets its code from the boundary's table, a call's ConnectError keeps its own (and its
 * details, such as a DeviceMismatch).
 */
export function inBand(err: unknown): ConnectError {
  return err instanceof DomainError ? toConnectError(err) : ConnectError.from(err);
}

/** A frame's init shape: the oneof case with its message's fields ($typeName and defaults optional). */
type FrameInit = NonNullable<
  Exclude<MessageInitShape<typeof ConnectResponseSchema>, ConnectResponse>["frame"]
>;

/** One frame to the device, built from its init shape like every message (create fills the rest). */
export function frame(value: FrameInit): ConnectResponse {
  return create(ConnectResponseSchema, { frame: value });
}

/**
 * Splits entries into frames of at most FRAME_ENTRIES entries and maxBytes of encoded entries
 * (one entry at least).
 */
export function chunks(entries: Entry[], maxBytes: number): Entry[][] {
  const out: Entry[][] = [];
  let current: Entry[] = [];
  let bytes = 0;
  for (const e of entries) {
    const size = encodedSizeBound(e);
    if (current.length >= FRAME_ENTRIES || (current.length > 0 && bytes + size > maxBytes)) {
      out.push(current);
      current = [];
      bytes = 0;
    }
    current.push(e);
    bytes += size;
  }
  if (current.length > 0) out.push(current);
  return out;
}

/**
 * The longest prefix of a page whose encoded entries stay within maxBytes (one entry at least),
 * and whether entries were cut: the sequencer bounds its pages already, this holds the bound
 * against one that does not (an older replica during an upgrade).
 */
export function boundPage(entries: Entry[], maxBytes: number): { entries: Entry[]; cut: boolean } {
  let bytes = 0;
  for (let i = 0; i < entries.length; i++) {
    bytes += encodedSizeBound(entries[i]!);
    if (i > 0 && bytes > maxBytes) return { entries: entries.slice(0, i), cut: true };
  }
  return { entries, cut: false };
}

/** True when the entry takes the principal's user out of the conversation. */
export function removesUser(entry: Entry, userId: string): boolean {
  const body = entry.body;
  if (body.case !== "membership") return false;
  if (body.value.action === MembershipAction.LEFT) return entry.senderUserId === userId;
  return body.value.action === MembershipAction.REMOVED && body.value.userIds.includes(userId);
}
