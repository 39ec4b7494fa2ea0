/**
 * Registration invites on ScyllaDB (the AccountStore's invite methods): one row per invite in
 * `invites`, written only by LWT, its cells expiring together 30 days after the invite does. A use
 * is taken by compare-and-set on `uses_left`, so of concurrent registrations no more than the
 * invite's uses succeed.
 */
import { MAX_TTL_SECONDS } from "../../common/config.js";
import { StoreError } from "../errors.js";
import type { InviteRecord, InviteTake } from "../types.js";
import { type Cql, num, type Row, sleep } from "./schema.js";

/** Invites stay readable this long past their expiry, in seconds, so the operator sees "expired". */
const INVITE_GRACE_SECONDS = 30 * 86_400;

/** How often a take or give-back of an invite use retries when concurrent ones keep winning. */
const INVITE_ATTEMPTS = 64;

/** Invites listInvites reads at most before sorting (the table is scanned whole). */
const INVITE_SCAN_MAX = 100_000;

const INVITE_COLUMNS =
  "invite_id, token_hash, uses_left, max_uses, created_at_ms, expires_at_ms, revoked_at_ms, note";

function inviteOf(row: Row): InviteRecord | undefined {
  const tokenHash = row.get("token_hash") as string | null;
  // A row whose cells expired apart from the key (never written so, but read defensively).
  if (tokenHash === null) return undefined;
  return {
    id: row.get("invite_id") as string,
    tokenHash,
    usesLeft: (row.get("uses_left") as number | null) ?? 0,
    maxUses: (row.get("max_uses") as number | null) ?? 0,
    createdAtMs: num(row.get("created_at_ms")),
    expiresAtMs: num(row.get("expires_at_ms")),
    revokedAtMs: num(row.get("revoked_at_ms")),
    note: (row.get("note") as string | null) ?? "",
  };
}

/** The TTL of an invite's cells: until 30 days past its expiry. Every write sets it, so cells expire together. */
function inviteTtl(expiresAtMs: number): number {
  return Math.min(
    MAX_TTL_SECONDS,
    Math.max(1, Math.ceil((expiresAtMs - Date.now()) / 1000) + INVITE_GRACE_SECONDS),
  );
}

/** The invite methods of the accounts port, which ScyllaAccountStore hands to it. */
export class ScyllaInvites {
  constructor(private readonly cql: Cql) {}

  async putInvite(invite: InviteRecord): Promise<void> {
    const result = await this.cql.lwt(
      `INSERT INTO invites (${INVITE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
        IF NOT EXISTS USING TTL ${inviteTtl(invite.expiresAtMs)}`,
      [
        invite.id,
        invite.tokenHash,
        invite.usesLeft,
        invite.maxUses,
        invite.createdAtMs,
        invite.expiresAtMs,
        invite.revokedAtMs,
        invite.note,
      ],
    );
    if (!result.wasApplied()) throw new StoreError("already_exists", `invite ${invite.id} exists`);
  }

  async getInvite(id: string): Promise<InviteRecord | undefined> {
    return this.readInvite(id, false);
  }

  async listInvites(limit: number): Promise<{ invites: InviteRecord[]; truncated: boolean }> {
    const all: InviteRecord[] = [];
    // A range scan cannot be SERIAL; every write was an LWT committed at a quorum.
    for await (const row of this.cql.pages(`SELECT ${INVITE_COLUMNS} FROM invites`, [])) {
      const invite = inviteOf(row);
      if (invite !== undefined) all.push(invite);
      if (all.length >= INVITE_SCAN_MAX) break;
    }
    all.sort((a, b) => b.createdAtMs - a.createdAtMs || (a.id < b.id ? -1 : 1));
    return { invites: all.slice(0, limit), truncated: all.length > limit };
  }

  async revokeInvite(id: string, atMs: number): Promise<InviteRecord | undefined> {
    if (!(atMs > 0)) throw new RangeError(`revocation time must be positive, got ${atMs}`);
    const invite = await this.readInvite(id, true);
    if (invite === undefined || invite.revokedAtMs !== 0) return invite;
    // Revoking twice keeps the first revocation time; the condition also fails on a missing row.
    await this.cql.lwt(
      `UPDATE invites USING TTL ${inviteTtl(invite.expiresAtMs)} SET revoked_at_ms = ?
        WHERE invite_id = ? IF revoked_at_ms = 0`,
      [atMs, id],
    );
    return this.readInvite(id, true);
  }

  async takeInviteUse(id: string, tokenHash: string, nowMs: number): Promise<InviteTake> {
    for (let attempt = 0; attempt < INVITE_ATTEMPTS; attempt++) {
      const invite = await this.readInvite(id, true);
      if (invite === undefined || invite.tokenHash !== tokenHash) return { refused: "unknown" };
      if (invite.revokedAtMs !== 0) return { refused: "revoked" };
      if (nowMs >= invite.expiresAtMs) return { refused: "expired" };
      if (invite.usesLeft <= 0) return { refused: "used_up" };
      // Compare-and-set on the count just read, and on not being revoked since.
      const result = await this.cql.lwt(
        `UPDATE invites USING TTL ${inviteTtl(invite.expiresAtMs)} SET uses_left = ?
          WHERE invite_id = ? IF uses_left = ? AND revoked_at_ms = 0`,
        [invite.usesLeft - 1, id, invite.usesLeft],
      );
      if (result.wasApplied()) return { taken: { ...invite, usesLeft: invite.usesLeft - 1 } };
      await sleep(Math.random() * 10 * (attempt + 1));
    }
    throw new Error(`taking a use of invite ${id} kept losing to concurrent changes`);
  }

  async returnInviteUse(id: string): Promise<void> {
    for (let attempt = 0; attempt < INVITE_ATTEMPTS; attempt++) {
      const invite = await this.readInvite(id, true);
      if (invite === undefined || invite.usesLeft >= invite.maxUses) return;
      const result = await this.cql.lwt(
        `UPDATE invites USING TTL ${inviteTtl(invite.expiresAtMs)} SET uses_left = ?
          WHERE invite_id = ? IF uses_left = ?`,
        [invite.usesLeft + 1, id, invite.usesLeft],
      );
      if (result.wasApplied()) return;
      await sleep(Math.random() * 10 * (attempt + 1));
    }
    throw new Error(`giving back a use of invite ${id} kept losing to concurrent changes`);
  }

  private async readInvite(id: string, serial: boolean): Promise<InviteRecord | undefined> {
    const row = await this.cql.one(`SELECT ${INVITE_COLUMNS} FROM invites WHERE invite_id = ?`, [id], {
      serial,
    });
    return row === undefined ? undefined : inviteOf(row);
  }
}
