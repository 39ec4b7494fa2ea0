/**
 * The claim index both engines keep: one empty marker per claimed object, under its conversation,
 * named by its claim time and id, so that a conversation's claims list in claim-time order and
 * attachment retention (retention.ts) reads only those old enough.
 */
import { isObjectId, type ObjectRecord } from "./types.js";

/** Digits of a claim time in a marker name: zero-padded, so names sort by time. */
const TIME_DIGITS = 16;

// Conversation ids as the server makes them ("d_"/"g_" + base32); anything else (never the case
// outside tests) gets no marker rather than a path or key built from it.
const CONVERSATION_ID = /^[a-z]_[0-9a-z]{1,64}$/;

/** True when a conversation id may name a folder or key prefix. */
export function isClaimConversation(conversationId: string): boolean {
  return CONVERSATION_ID.test(conversationId);
}

/** The marker's name within its conversation's folder; undefined when the record gets none. */
export function claimMarker(record: ObjectRecord): string | undefined {
  if (record.claimedAtMs <= 0 || !isClaimConversation(record.conversationId)) return undefined;
  return `${String(Math.floor(record.claimedAtMs)).padStart(TIME_DIGITS, "0")}.${record.objectId}`;
}

/** A marker's claim time and object id; undefined for a name that is not a marker. */
export function parseClaimMarker(name: string): { claimedAtMs: number; objectId: string } | undefined {
  const dot = name.indexOf(".");
  if (dot !== TIME_DIGITS) return undefined;
  const time = name.slice(0, dot);
  const objectId = name.slice(dot + 1);
  if (!/^\d+$/.test(time) || !isObjectId(objectId)) return undefined;
  return { claimedAtMs: Number(time), objectId };
}

/**
 * True when a claim marker outlived its claim: its record was deleted (a delete cut short) or
 * claimed under another name (a claim cut short, then claimed again). A marker whose record is
 * still unclaimed stays: a claim in progress writes the marker before the record, and a claim cut
 * short leaves the record unclaimed, so a later claim or the unclaimed sweep settles it.
 */
export function isStaleClaimMarker(record: ObjectRecord | undefined, name: string): boolean {
  if (record === undefined) return true;
  return record.claimedAtMs !== 0 && claimMarker(record) !== name;
}
