import type { ConversationRecord, MemberRecord } from "./types.js";

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
