import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import type { Entry } from "../../gen/switchboard/v1/entry_pb.js";
import { StoreError } from "./errors.js";
import type { ConversationRecord, MemberRecord, PinRecord } from "./types.js";

/**
 * Copies of records with exactly the fields of the port's types, so an engine never persists
 * extra properties a caller's object happened to carry.
 */
export function conversationRecord(c: ConversationRecord): ConversationRecord {
  return {
    id: c.id,
    kind: c.kind,
    title: c.title,
    createdAtMs: c.createdAtMs,
    membersVersion: c.membersVersion,
    ...(c.pins !== undefined && { pins: c.pins.map(pinRecord) }),
    ...(c.disappearingSeconds !== undefined && { disappearingSeconds: c.disappearingSeconds }),
    ...(c.disappearingAdminsOnly !== undefined && { disappearingAdminsOnly: c.disappearingAdminsOnly }),
  };
}

/** A pin as stored (see conversationRecord). */
export function pinRecord(p: PinRecord): PinRecord {
  return {
    seq: p.seq,
    pinSeq: p.pinSeq,
    byUserId: p.byUserId,
    atMs: p.atMs,
    ...(p.expiresAtMs !== undefined && { expiresAtMs: p.expiresAtMs }),
  };
}

/** A member record as stored (see conversationRecord). */
export function memberRecord(m: MemberRecord): MemberRecord {
  return {
    userId: m.userId,
    role: m.role,
    joinedSeq: m.joinedSeq,
    addedAtMs: m.addedAtMs,
    deliveredUpTo: m.deliveredUpTo,
    readUpTo: m.readUpTo,
    ...(m.mutedUntilMs !== undefined && { mutedUntilMs: m.mutedUntilMs }),
  };
}

/** The store's refusal of a write that does not continue the log (the fence). */
export function conflict(message: string): StoreError {
  return new StoreError("conflict", message);
}

/** An entry's seq, checked to belong to the conversation written and to be in range. */
export function seqOf(entry: Entry, conversationId: string): number {
  if (entry.conversationId !== conversationId) {
    throw new RangeError(
      `entry of conversation ${entry.conversationId} written to conversation ${conversationId}`,
    );
  }
  if (entry.seq < 1n || entry.seq > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new RangeError(`entry seq ${entry.seq} out of range in ${conversationId}`);
  }
  return Number(entry.seq);
}

/**
 * An encoded entry's server_time_ms (field 6) and expires_at_ms (field 22), read off the wire
 * without decoding the entry: sweeps look at many entries and need no payload.
 */
export function entryTimes(bytes: Uint8Array): { serverTimeMs: number; expiresAtMs: number } {
  const reader = new BinaryReader(bytes);
  let serverTimeMs = 0;
  let expiresAtMs = 0;
  while (reader.pos < reader.len) {
    const [field, wire] = reader.tag();
    if (field === 6 && wire === WireType.Varint) serverTimeMs = Number(reader.int64());
    else if (field === 22 && wire === WireType.Varint) expiresAtMs = Number(reader.int64());
    else reader.skip(wire, field);
  }
  return { serverTimeMs, expiresAtMs };
}
