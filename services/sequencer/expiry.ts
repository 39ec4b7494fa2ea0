/**
 * When entries expire (disappearing messages) and what an expired one is served as. Apart from
 * the timers (disappearing.ts) so that the log (log.ts) can use it without an import loop.
 */
import { create } from "@bufbuild/protobuf";
import { type Entry, EntrySchema } from "../../gen/switchboard/v1/entry_pb.js";

/** Entry bodies that expire while a timer is on: what devices send, never the server's own entries. */
const EXPIRING_BODIES = new Set<Entry["body"]["case"]>(["message", "edit", "delete", "reaction"]);

/**
 * When an entry assigned now expires: its commit time plus the conversation's timer, for the
 * bodies devices send; 0 (never) otherwise or with the timer off.
 */
export function expiryOf(
  body: Entry["body"],
  timerSeconds: number | undefined,
  serverTimeMs: number,
): number {
  if (timerSeconds === undefined || timerSeconds <= 0 || !EXPIRING_BODIES.has(body.case)) return 0;
  return serverTimeMs + timerSeconds * 1000;
}

/**
 * What an expired entry is served as: its seq and the flag, nothing else, whether the store
 * still holds it (the sweep has not reached it yet) or not (deleted, or dropped by a database
 * TTL). The seq stays in the log, so a device marks it done instead of asking for a gap.
 */
export function expiredStub(conversationId: string, seq: number): Entry {
  return create(EntrySchema, { conversationId, seq: BigInt(seq), expired: true });
}

/** Whether an entry is past its expiry at nowMs. */
export function isExpired(entry: Entry, nowMs: number): boolean {
  return entry.expired || (entry.expiresAtMs > 0n && Number(entry.expiresAtMs) <= nowMs);
}
