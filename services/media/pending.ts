/**
 * The pending marker both engines keep beside each unclaimed record, so the sweep lists only
 * those. putRecord writes the marker first and the record after it, so a crash between the two
 * never leaves an unclaimed record nothing would sweep.
 *
 * That order means a sweep can find a marker without its record for two reasons: a putRecord in
 * progress (the record is on its way) or one a crash cut short (it never comes). Deleting the
 * first would race the record's write, and could delete the record of an upload whose URL is
 * about to be handed out. So the marker holds its record's creation time, by the same clock as
 * the sweep's cutoff: a marker without a record is abandoned only once it is as old as an
 * unclaimed upload the sweep deletes, far longer than any write takes.
 */
import type { ObjectRecord } from "./types.js";

/** What a pending marker holds: its record's creation time, in decimal milliseconds. */
export function pendingMarkerBody(record: ObjectRecord): string {
  return String(Math.floor(record.createdAtMs));
}

/**
 * True when a pending marker found without its record is a crash's leftover, for a sweep that
 * deletes unclaimed uploads created before createdBeforeMs. An empty marker, written by a version
 * before markers held a time, is taken for one as it was then.
 */
export function isAbandonedPendingMarker(body: string, createdBeforeMs: number): boolean {
  if (!/^\d{1,16}$/.test(body)) return true;
  return Number(body) < createdBeforeMs;
}
