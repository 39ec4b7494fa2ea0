/**
 * What an operator does to an account on ScyllaDB (the AccountStore's setSuspended and
 * deleteUser): suspensions in a table of their own (`user_suspensions`, migration 0009, so the
 * users table needs no ALTER), and a user's removal row by row in an order a crash can resume.
 */
import type { UserRecord } from "../types.js";
import { unknownOutcome } from "./outcome.js";
import { type Cql, long, num } from "./schema.js";

/** When an operator suspended the user, or undefined when not suspended. */
export async function suspendedAt(cql: Cql, userId: string): Promise<number | undefined> {
  const row = await cql.one("SELECT suspended_at_ms FROM user_suspensions WHERE user_id = ?", [userId]);
  const at = row === undefined ? 0 : num(row.get("suspended_at_ms"));
  return at > 0 ? at : undefined;
}

/**
 * Suspends at atMs, or lifts the suspension with 0. A plain write: suspending is rare and done by
 * one operator at a time, and two suspensions racing both mean "suspended" (the first time read
 * wins when it was there already).
 */
export async function setSuspended(cql: Cql, user: UserRecord, atMs: number): Promise<UserRecord> {
  if (!(atMs >= 0)) throw new RangeError(`suspension time must be 0 or positive, got ${atMs}`);
  const { suspendedAtMs: _, ...rest } = user;
  if (atMs === 0) {
    await cql.run("DELETE FROM user_suspensions WHERE user_id = ?", [user.userId]);
    return rest;
  }
  const already = await suspendedAt(cql, user.userId);
  if (already !== undefined) return { ...rest, suspendedAtMs: already };
  await cql.run("INSERT INTO user_suspensions (user_id, suspended_at_ms) VALUES (?, ?)", [
    user.userId,
    long(atMs),
  ]);
  return { ...rest, suspendedAtMs: atMs };
}

/** A conditional delete, run again once if its outcome is unknown (each is idempotent). */
async function lwtDelete(cql: Cql, query: string, params: unknown[]): Promise<void> {
  try {
    await cql.lwt(query, params);
  } catch (err) {
    if (!unknownOutcome(err)) throw err;
    await cql.lwt(query, params);
  }
}

/**
 * Removes a user: every device (its id claim and its listing row), the version row, the privacy
 * settings, the suspension, the username claim (only if still this user's), and the user row last.
 * Not atomic as on LMDB, but ordered: devices go first, so a half-deleted user can no longer
 * authenticate, and the user row goes last, so a deletion interrupted by a crash is finished by
 * running it again (every step is idempotent).
 */
export async function deleteUser(cql: Cql, user: UserRecord): Promise<void> {
  const rows: Array<{ createdAtMs: number; deviceId: string }> = [];
  for await (const row of cql.pages("SELECT created_at_ms, device_id FROM user_devices WHERE user_id = ?", [
    user.userId,
  ])) {
    rows.push({ createdAtMs: num(row.get("created_at_ms")), deviceId: row.get("device_id") as string });
  }
  for (const { createdAtMs, deviceId } of rows) {
    // The version row (created_at_ms -1) has no id claim.
    if (createdAtMs >= 0) {
      await lwtDelete(cql, "DELETE FROM devices_by_id WHERE device_id = ? IF user_id = ?", [
        deviceId,
        user.userId,
      ]);
    }
    // The table is written only by LWT (accounts.ts), deletes included.
    await lwtDelete(
      cql,
      "DELETE FROM user_devices WHERE user_id = ? AND created_at_ms = ? AND device_id = ? IF EXISTS",
      [user.userId, long(createdAtMs), deviceId],
    );
  }
  await cql.run("DELETE FROM user_privacy WHERE user_id = ?", [user.userId]);
  await cql.run("DELETE FROM user_suspensions WHERE user_id = ?", [user.userId]);
  // The user's own blocks; others' blocks of the user and reports about them stay with those.
  await cql.run("DELETE FROM user_blocks WHERE user_id = ?", [user.userId]);
  await lwtDelete(cql, "DELETE FROM usernames WHERE username = ? IF user_id = ?", [
    user.username,
    user.userId,
  ]);
  await cql.run("DELETE FROM users WHERE user_id = ?", [user.userId]);
}
