import { MAX_TTL_SECONDS } from "../../common/config.js";
import { StoreError } from "../errors.js";
import type {
  AccountStore,
  AvatarRecord,
  BlockRecord,
  DeviceRecord,
  InviteRecord,
  InviteTake,
  LinkCodeRecord,
  PrivacyRecord,
  PushRegistration,
  ReportRecord,
  UserRecord,
} from "../types.js";
import { ScyllaAvatars } from "./avatars.js";
import { ScyllaInvites } from "./invites.js";
import { deleteUser, setSuspended, suspendedAt } from "./operator.js";
import { outageOf } from "./outage.js";
import { unknownOutcome } from "./outcome.js";
import { ScyllaPrivacy } from "./privacy.js";
import { ScyllaSafetyStore } from "./safety.js";
import { type Cql, num, type Row, sleep } from "./schema.js";

/**
 * A username claim whose registration never finished (its user row is missing) may be taken over
 * after this long, in milliseconds: the registering process is presumed dead by then.
 */
export const CLAIM_GRACE_MS = 5 * 60_000;

/** How often addDevice retries when other device changes of the same user keep winning. */
const ADD_DEVICE_ATTEMPTS = 64;

/** Tries of a new user's row after its username and device were claimed (0.1 s, 0.4 s apart). */
const USER_INSERT_ATTEMPTS = 3;

/** Link codes stay readable this long past their expiry, in seconds, so the caller can say "expired". */
const LINK_CODE_GRACE_SECONDS = 86_400;

// The per-user version row in user_devices, which every device insert compares-and-sets in the
// same single-partition conditional batch. Listings read created_at_ms >= 0, so it never shows.
const VERSION_CREATED_AT = -1;
const VERSION_DEVICE_ID = "~version";

const DEVICE_COLUMNS = "device_id, created_at_ms, name, secret_hash, revoked_at_ms, push_id, push_target";

const INSERT_DEVICE = `INSERT INTO user_devices (user_id, created_at_ms, device_id, name, secret_hash,
  revoked_at_ms, push_id, push_target) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`;

function deviceParams(d: DeviceRecord): unknown[] {
  return [
    d.userId,
    d.createdAtMs,
    d.deviceId,
    d.name,
    d.secretHash,
    d.revokedAtMs,
    d.push?.id ?? "",
    d.push === undefined ? "" : JSON.stringify(d.push.target),
  ];
}

function deviceOf(row: Row, userId: string): DeviceRecord {
  const pushId = (row.get("push_id") as string | null) ?? "";
  return {
    deviceId: row.get("device_id") as string,
    userId,
    name: (row.get("name") as string | null) ?? "",
    secretHash: (row.get("secret_hash") as string | null) ?? "",
    createdAtMs: num(row.get("created_at_ms")),
    revokedAtMs: num(row.get("revoked_at_ms")),
    ...(pushId !== "" && {
      push: {
        id: pushId,
        target: JSON.parse(row.get("push_target") as string) as PushRegistration["target"],
      },
    }),
  };
}

interface DevicePointer {
  userId: string;
  createdAtMs: number;
}

/**
 * The accounts port on ScyllaDB. Every table whose rows are checked-and-set is written only by
 * LWT (usernames, devices_by_id, user_devices, link_codes): LWT and plain writes to the same cells
 * carry timestamps from different clocks, and a plain write could then lose to, or beat, a
 * conditional one it should have followed.
 */
export class ScyllaAccountStore implements AccountStore {
  /** Blocks and reports, in a file of their own. */
  private readonly safety: ScyllaSafetyStore;
  private readonly invites: ScyllaInvites;
  private readonly privacy: ScyllaPrivacy;
  private readonly avatars: ScyllaAvatars;

  constructor(private readonly cql: Cql) {
    this.avatars = new ScyllaAvatars(cql);
    this.safety = new ScyllaSafetyStore(cql);
    this.invites = new ScyllaInvites(cql);
    this.privacy = new ScyllaPrivacy(cql);
  }

  block(userId: string, blockedUserId: string, atMs: number, maxBlocks: number): Promise<boolean> {
    return this.safety.block(userId, blockedUserId, atMs, maxBlocks);
  }

  unblock(userId: string, blockedUserId: string): Promise<boolean> {
    return this.safety.unblock(userId, blockedUserId);
  }

  listBlocked(userId: string): Promise<BlockRecord[]> {
    return this.safety.listBlocked(userId);
  }

  putReport(report: ReportRecord): Promise<void> {
    return this.safety.putReport(report);
  }

  listReports(reportedUserId: string | undefined, limit: number) {
    return this.safety.listReports(reportedUserId, limit);
  }

  /**
   * The username claim is the commit point and comes first, so a losing registration writes
   * nothing. The user row comes last: a crash in between leaves a claim without a user, which
   * getUserByUsername does not show and a later registration may take over after CLAIM_GRACE_MS.
   * A conditional write that times out is read back (see decided), so a timeout whose write did
   * apply carries on, and one whose write did not is undone like any refusal: no username stays
   * held and no device half-written for the client's retry to trip over.
   */
  async createUser(user: UserRecord, firstDevice: DeviceRecord): Promise<void> {
    if (firstDevice.userId !== user.userId) {
      throw new RangeError(
        `first device ${firstDevice.deviceId} belongs to ${firstDevice.userId}, not ${user.userId}`,
      );
    }
    await this.claimUsername(user);
    const released: Promise<unknown>[] = [];
    try {
      await this.claimDeviceId(firstDevice);
      try {
        const applied = await this.decided(
          () =>
            this.cql.lwtBatch([
              {
                query: `INSERT INTO user_devices (user_id, created_at_ms, device_id, version)
              VALUES (?, ${VERSION_CREATED_AT}, '${VERSION_DEVICE_ID}', 1) IF NOT EXISTS`,
                params: [user.userId],
              },
              { query: INSERT_DEVICE, params: deviceParams(firstDevice) },
            ]),
          () => this.hasDeviceRow(firstDevice),
        );
        if (!applied) throw new StoreError("already_exists", `user ${user.userId} exists`);
      } catch (err) {
        released.push(this.releaseDeviceId(firstDevice));
        throw err;
      }
    } catch (err) {
      released.push(this.releaseUsername(user));
      await Promise.allSettled(released);
      throw err;
    }
    const insertUser = () =>
      this.cql.run("INSERT INTO users (user_id, username, display_name, created_at_ms) VALUES (?, ?, ?, ?)", [
        user.userId,
        user.username,
        user.displayName,
        user.createdAtMs,
      ]);
    // A plain insert is idempotent: one whose outcome is unknown, or that met a passing outage, is
    // simply written again. Giving up here leaves the username claimed without a user until
    // CLAIM_GRACE_MS lets a registration take it over, so a few tries are worth the wait.
    for (let attempt = 1; ; attempt++) {
      try {
        await insertUser();
        return;
      } catch (err) {
        if (attempt >= USER_INSERT_ATTEMPTS || !(unknownOutcome(err) || outageOf(err) !== undefined))
          throw err;
        await sleep(100 * 4 ** (attempt - 1));
      }
    }
  }

  async getUser(userId: string): Promise<UserRecord | undefined> {
    const [row, suspendedAtMs] = await Promise.all([
      this.cql.one("SELECT username, display_name, created_at_ms FROM users WHERE user_id = ?", [userId]),
      suspendedAt(this.cql, userId),
    ]);
    if (row === undefined) return undefined;
    return {
      userId,
      username: row.get("username") as string,
      displayName: (row.get("display_name") as string | null) ?? "",
      createdAtMs: num(row.get("created_at_ms")),
      ...(suspendedAtMs !== undefined && { suspendedAtMs }),
    };
  }

  async setDisplayName(userId: string, displayName: string): Promise<UserRecord | undefined> {
    // Conditional, so an unknown (or deleted) user's row is never created by the update.
    const applied = await this.cql.lwt("UPDATE users SET display_name = ? WHERE user_id = ? IF EXISTS", [
      displayName,
      userId,
    ]);
    if (!applied.wasApplied()) return undefined;
    return this.getUser(userId);
  }

  async setSuspended(userId: string, atMs: number): Promise<UserRecord | undefined> {
    const user = await this.getUser(userId);
    return user === undefined ? undefined : setSuspended(this.cql, user, atMs);
  }

  async deleteUser(userId: string): Promise<boolean> {
    const user = await this.getUser(userId);
    if (user === undefined) return false;
    await deleteUser(this.cql, user);
    return true;
  }

  async getUserByUsername(username: string): Promise<UserRecord | undefined> {
    const claim = await this.cql.one("SELECT user_id FROM usernames WHERE username = ?", [username]);
    if (claim === undefined) return undefined;
    const user = await this.getUser(claim.get("user_id") as string);
    return user?.username === username ? user : undefined;
  }

  async addDevice(device: DeviceRecord, maxActiveDevices: number): Promise<void> {
    if ((await this.getUser(device.userId)) === undefined) {
      throw new StoreError("not_found", `no user ${device.userId}`);
    }
    await this.claimDeviceId(device);
    try {
      for (let attempt = 0; attempt < ADD_DEVICE_ATTEMPTS; attempt++) {
        let version: number | undefined;
        let active = 0;
        for await (const row of this.cql.pages(
          "SELECT created_at_ms, version, revoked_at_ms FROM user_devices WHERE user_id = ?",
          [device.userId],
        )) {
          if (num(row.get("created_at_ms")) === VERSION_CREATED_AT) version = num(row.get("version"));
          else if (num(row.get("revoked_at_ms")) === 0) active++;
        }
        if (version === undefined) throw new StoreError("not_found", `no user ${device.userId}`);
        if (active >= maxActiveDevices) {
          throw new StoreError("limit", `user ${device.userId} already has ${active} active devices`);
        }
        // The version moves with every device added, so the count above still holds if it applies.
        const applied = await this.decided(
          () =>
            this.cql.lwtBatch([
              {
                query: `UPDATE user_devices SET version = ? WHERE user_id = ? AND created_at_ms = ${VERSION_CREATED_AT}
              AND device_id = '${VERSION_DEVICE_ID}' IF version = ?`,
                params: [version + 1, device.userId, version],
              },
              { query: INSERT_DEVICE, params: deviceParams(device) },
            ]),
          // The device id is this call's (claimed above), so its row exists only if this applied.
          () => this.hasDeviceRow(device),
        );
        if (applied) return;
        await sleep(Math.random() * 10 * (attempt + 1));
      }
      throw new Error(`adding a device to ${device.userId} kept losing to concurrent changes`);
    } catch (err) {
      await this.releaseDeviceId(device).catch(() => {});
      throw err;
    }
  }

  async getDevice(deviceId: string): Promise<DeviceRecord | undefined> {
    const pointer = await this.pointer(deviceId);
    return pointer === undefined ? undefined : this.readDevice(deviceId, pointer, false);
  }

  async listDevices(userId: string): Promise<DeviceRecord[]> {
    const out: DeviceRecord[] = [];
    for await (const row of this.cql.pages(
      `SELECT ${DEVICE_COLUMNS} FROM user_devices WHERE user_id = ? AND created_at_ms >= 0`,
      [userId],
    )) {
      out.push(deviceOf(row, userId));
    }
    return out;
  }

  async revokeDevice(deviceId: string, atMs: number): Promise<DeviceRecord | undefined> {
    // 0 means "active", so it cannot be a revocation time.
    if (!(atMs > 0)) throw new RangeError(`revocation time must be positive, got ${atMs}`);
    const pointer = await this.pointer(deviceId);
    if (pointer === undefined) return undefined;
    // Revoking twice keeps the first revocation time.
    await this.cql.lwt(
      `UPDATE user_devices SET revoked_at_ms = ? WHERE user_id = ? AND created_at_ms = ? AND device_id = ?
        IF revoked_at_ms = 0`,
      [atMs, pointer.userId, pointer.createdAtMs, deviceId],
    );
    return this.readDevice(deviceId, pointer, true);
  }

  async setPush(
    deviceId: string,
    push: PushRegistration | undefined,
    ifCurrentId?: string,
  ): Promise<boolean> {
    const pointer = await this.pointer(deviceId);
    if (pointer === undefined) return false;
    const set = [push?.id ?? "", push === undefined ? "" : JSON.stringify(push.target)];
    const where = [pointer.userId, pointer.createdAtMs, deviceId];
    const update = `UPDATE user_devices SET push_id = ?, push_target = ?
      WHERE user_id = ? AND created_at_ms = ? AND device_id = ?`;
    const result =
      ifCurrentId === undefined
        ? await this.cql.lwt(`${update} IF EXISTS`, [...set, ...where])
        : await this.cql.lwt(`${update} IF push_id = ?`, [...set, ...where, ifCurrentId]);
    return result.wasApplied();
  }

  async putLinkCode(code: LinkCodeRecord): Promise<void> {
    const ttl = Math.min(
      MAX_TTL_SECONDS,
      Math.max(0, Math.ceil((code.expiresAtMs - Date.now()) / 1000)) + LINK_CODE_GRACE_SECONDS,
    );
    const values = [code.userId, code.expiresAtMs];
    for (let attempt = 0; attempt < 3; attempt++) {
      const inserted = await this.cql.lwt(
        `INSERT INTO link_codes (code_hash, user_id, expires_at_ms) VALUES (?, ?, ?) IF NOT EXISTS USING TTL ${ttl}`,
        [code.codeHash, ...values],
      );
      if (inserted.wasApplied()) return;
      const replaced = await this.cql.lwt(
        `UPDATE link_codes USING TTL ${ttl} SET user_id = ?, expires_at_ms = ? WHERE code_hash = ? IF EXISTS`,
        [...values, code.codeHash],
      );
      if (replaced.wasApplied()) return;
    }
    throw new Error(`storing link code ${code.codeHash.slice(0, 8)}... kept racing its removal`);
  }

  async takeLinkCode(codeHash: string): Promise<LinkCodeRecord | undefined> {
    const row = await this.cql.one(
      "SELECT user_id, expires_at_ms FROM link_codes WHERE code_hash = ?",
      [codeHash],
      {
        serial: true,
      },
    );
    if (row === undefined) return undefined;
    // Of concurrent takers only one sees its delete applied.
    const result = await this.cql.lwt("DELETE FROM link_codes WHERE code_hash = ? IF EXISTS", [codeHash]);
    if (!result.wasApplied()) return undefined;
    return { codeHash, userId: row.get("user_id") as string, expiresAtMs: num(row.get("expires_at_ms")) };
  }

  getPrivacy(userIds: readonly string[]): Promise<Map<string, PrivacyRecord>> {
    return this.privacy.getPrivacy(userIds);
  }

  async setPrivacy(userId: string, changes: PrivacyRecord): Promise<PrivacyRecord> {
    if ((await this.getUser(userId)) === undefined) throw new StoreError("not_found", `no user ${userId}`);
    return this.privacy.setPrivacy(userId, changes);
  }

  getAvatar(userId: string): Promise<AvatarRecord | undefined> {
    return this.avatars.getAvatar(userId);
  }

  async swapAvatar(userId: string, avatar: AvatarRecord | undefined): Promise<AvatarRecord | undefined> {
    if (avatar !== undefined && (await this.getUser(userId)) === undefined)
      throw new StoreError("not_found", `no user ${userId}`);
    return this.avatars.swapAvatar(userId, avatar);
  }

  putInvite(invite: InviteRecord): Promise<void> {
    return this.invites.putInvite(invite);
  }

  getInvite(id: string): Promise<InviteRecord | undefined> {
    return this.invites.getInvite(id);
  }

  listInvites(limit: number): Promise<{ invites: InviteRecord[]; truncated: boolean }> {
    return this.invites.listInvites(limit);
  }

  revokeInvite(id: string, atMs: number): Promise<InviteRecord | undefined> {
    return this.invites.revokeInvite(id, atMs);
  }

  takeInviteUse(id: string, tokenHash: string, nowMs: number): Promise<InviteTake> {
    return this.invites.takeInviteUse(id, tokenHash, nowMs);
  }

  returnInviteUse(id: string): Promise<void> {
    return this.invites.returnInviteUse(id);
  }

  /**
   * Runs a conditional write and says whether it applied. When it fails with an unknown outcome
   * (outcome.ts), `readBack` (a LOCAL_SERIAL read, which settles any Paxos round left in flight)
   * says whether it applied after all; if even that fails, the write's own error is thrown.
   * `refused` receives the result of a write that was refused (the row an IF found there).
   */
  private async decided(
    write: () => Promise<{ wasApplied(): boolean; rows?: Row[] }>,
    readBack: () => Promise<boolean>,
    refused?: (rows: Row[] | undefined) => void,
  ): Promise<boolean> {
    let result: { wasApplied(): boolean; rows?: Row[] };
    try {
      result = await write();
    } catch (err) {
      if (!unknownOutcome(err)) throw err;
      let applied: boolean;
      try {
        applied = await readBack();
      } catch {
        throw err;
      }
      // Not applied, and now it never will be: the caller's timeout stands, nothing is held.
      if (!applied) throw err;
      return true;
    }
    if (!result.wasApplied()) refused?.(result.rows);
    return result.wasApplied();
  }

  /** The user id holding a username, read at LOCAL_SERIAL. */
  private async usernameHolder(username: string): Promise<string | undefined> {
    const row = await this.cql.one("SELECT user_id FROM usernames WHERE username = ?", [username], {
      serial: true,
    });
    return (row?.get("user_id") as string | null | undefined) ?? undefined;
  }

  /** True if the device's row is in its user's partition, read at LOCAL_SERIAL. */
  private async hasDeviceRow(device: DeviceRecord): Promise<boolean> {
    const row = await this.cql.one(
      "SELECT device_id FROM user_devices WHERE user_id = ? AND created_at_ms = ? AND device_id = ?",
      [device.userId, device.createdAtMs, device.deviceId],
      { serial: true },
    );
    return row !== undefined;
  }

  /** True if the device id points at this device, read at LOCAL_SERIAL. */
  private async holdsDeviceId(device: DeviceRecord): Promise<boolean> {
    const row = await this.cql.one(
      "SELECT user_id, created_at_ms FROM devices_by_id WHERE device_id = ?",
      [device.deviceId],
      { serial: true },
    );
    return (
      row !== undefined &&
      row.get("user_id") === device.userId &&
      num(row.get("created_at_ms")) === device.createdAtMs
    );
  }

  private async claimUsername(user: UserRecord): Promise<void> {
    const refusal: { holder?: Row | undefined } = {};
    const claimed = await this.decided(
      () =>
        this.cql.lwt(
          "INSERT INTO usernames (username, user_id, claimed_at_ms) VALUES (?, ?, ?) IF NOT EXISTS",
          [user.username, user.userId, Date.now()],
        ),
      async () => (await this.usernameHolder(user.username)) === user.userId,
      // A failed conditional insert returns the row that is there.
      (rows) => {
        refusal.holder = rows?.[0];
      },
    );
    if (claimed) return;
    const taken = new StoreError("already_exists", `username ${user.username} is taken`);
    const holder = refusal.holder;
    const holderId = holder?.get("user_id") as string | null | undefined;
    if (holder === undefined || holderId === null || holderId === undefined) throw taken;
    if (Date.now() - num(holder.get("claimed_at_ms")) < CLAIM_GRACE_MS) throw taken;
    if ((await this.getUser(holderId)) !== undefined) throw taken;
    const takeover = await this.decided(
      () =>
        this.cql.lwt(
          "UPDATE usernames SET user_id = ?, claimed_at_ms = ? WHERE username = ? IF user_id = ?",
          [user.userId, Date.now(), user.username, holderId],
        ),
      async () => (await this.usernameHolder(user.username)) === user.userId,
    );
    if (!takeover) throw taken;
  }

  /** Gives back a username this registration claimed; with an unknown outcome, tries once more. */
  private async releaseUsername(user: UserRecord): Promise<void> {
    const release = () =>
      this.cql.lwt("DELETE FROM usernames WHERE username = ? IF user_id = ?", [user.username, user.userId]);
    await this.decided(release, async () => (await this.usernameHolder(user.username)) !== user.userId).catch(
      async (err: unknown) => {
        if (!unknownOutcome(err)) throw err;
        await release();
      },
    );
  }

  private async claimDeviceId(device: DeviceRecord): Promise<void> {
    const claimed = await this.decided(
      () =>
        this.cql.lwt(
          "INSERT INTO devices_by_id (device_id, user_id, created_at_ms) VALUES (?, ?, ?) IF NOT EXISTS",
          [device.deviceId, device.userId, device.createdAtMs],
        ),
      () => this.holdsDeviceId(device),
    );
    if (!claimed) throw new StoreError("already_exists", `device ${device.deviceId} exists`);
  }

  /** Gives back a device id this call claimed; with an unknown outcome, tries once more. */
  private async releaseDeviceId(device: DeviceRecord): Promise<void> {
    const release = () =>
      this.cql.lwt("DELETE FROM devices_by_id WHERE device_id = ? IF user_id = ?", [
        device.deviceId,
        device.userId,
      ]);
    await this.decided(release, async () => !(await this.holdsDeviceId(device))).catch(
      async (err: unknown) => {
        if (!unknownOutcome(err)) throw err;
        await release();
      },
    );
  }

  private async pointer(deviceId: string): Promise<DevicePointer | undefined> {
    const row = await this.cql.one("SELECT user_id, created_at_ms FROM devices_by_id WHERE device_id = ?", [
      deviceId,
    ]);
    if (row === undefined) return undefined;
    return { userId: row.get("user_id") as string, createdAtMs: num(row.get("created_at_ms")) };
  }

  // A pointer whose device row is missing is an addDevice that was refused or never finished.
  private async readDevice(
    deviceId: string,
    pointer: DevicePointer,
    serial: boolean,
  ): Promise<DeviceRecord | undefined> {
    const row = await this.cql.one(
      `SELECT ${DEVICE_COLUMNS} FROM user_devices WHERE user_id = ? AND created_at_ms = ? AND device_id = ?`,
      [pointer.userId, pointer.createdAtMs, deviceId],
      { serial },
    );
    return row === undefined ? undefined : deviceOf(row, pointer.userId);
  }
}
