/**
 * Users' avatars on ScyllaDB (the AccountStore's avatar methods): one row per user in
 * `user_avatars` (migration 0013), written only by LWT so a replacement hands the object it
 * replaced to exactly one caller. A removal empties the row (object_id '') rather than deleting
 * it: the next set is then a compare-and-set on object_id like every other.
 */
import { StoreError } from "../errors.js";
import type { AvatarRecord } from "../types.js";
import { unknownOutcome } from "./outcome.js";
import { type Cql, num, type Row, sleep } from "./schema.js";

/** Compare-and-set rounds before a swap that keeps losing to concurrent ones gives up. */
const SWAP_ATTEMPTS = 20;

function avatarOf(row: Row | undefined): AvatarRecord | undefined {
  const objectId = (row?.get("object_id") as string | null | undefined) ?? "";
  if (row === undefined || objectId === "") return undefined;
  return { objectId, lengthBytes: num(row.get("length_bytes")), setAtMs: num(row.get("set_at_ms")) };
}

export class ScyllaAvatars {
  constructor(private readonly cql: Cql) {}

  async getAvatar(userId: string): Promise<AvatarRecord | undefined> {
    return avatarOf(
      await this.cql.one("SELECT object_id, length_bytes, set_at_ms FROM user_avatars WHERE user_id = ?", [
        userId,
      ]),
    );
  }

  /** See AccountStore.swapAvatar; the caller has checked that a user being given one exists. */
  async swapAvatar(userId: string, avatar: AvatarRecord | undefined): Promise<AvatarRecord | undefined> {
    const next = avatar ?? { objectId: "", lengthBytes: 0, setAtMs: 0 };
    for (let attempt = 0; attempt < SWAP_ATTEMPTS; attempt++) {
      // Serial, so an LWT left in progress on the row is finished before it is compared.
      const row = await this.cql.one(
        "SELECT object_id, length_bytes, set_at_ms FROM user_avatars WHERE user_id = ?",
        [userId],
        { serial: true },
      );
      const previous = avatarOf(row);
      // Nothing to remove: no write at all.
      if (previous === undefined && avatar === undefined) return undefined;
      const params = [next.objectId, next.lengthBytes, next.setAtMs, userId];
      const write =
        row === undefined
          ? () =>
              this.cql.lwt(
                "INSERT INTO user_avatars (object_id, length_bytes, set_at_ms, user_id) VALUES (?, ?, ?, ?) IF NOT EXISTS",
                params,
              )
          : () =>
              this.cql.lwt(
                "UPDATE user_avatars SET object_id = ?, length_bytes = ?, set_at_ms = ? WHERE user_id = ? IF object_id = ?",
                [...params, (row.get("object_id") as string | null) ?? ""],
              );
      let applied: boolean;
      try {
        applied = (await write()).wasApplied();
      } catch (err) {
        // A timed-out LWT may still apply. A new avatar's object id is this call's alone, so the
        // row holding it says it did; a removal cannot be told apart and reports the timeout.
        if (!unknownOutcome(err) || avatar === undefined) throw err;
        if ((await this.getAvatarSerial(userId))?.objectId !== avatar.objectId) throw err;
        applied = true;
      }
      if (applied) return previous;
      await sleep(Math.random() * 10 * (attempt + 1));
    }
    throw new StoreError("conflict", `the avatar of ${userId} kept changing under ${SWAP_ATTEMPTS} attempts`);
  }

  private async getAvatarSerial(userId: string): Promise<AvatarRecord | undefined> {
    return avatarOf(
      await this.cql.one(
        "SELECT object_id, length_bytes, set_at_ms FROM user_avatars WHERE user_id = ?",
        [userId],
        { serial: true },
      ),
    );
  }
}
