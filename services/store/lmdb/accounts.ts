import type { Database, Key } from "lmdb";
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
import type { WriteUnit } from "./environment.js";
import { LmdbSafetyStore, type SafetyDbs } from "./safety.js";

/** The sub-databases of the accounts port; engine.ts documents the key layout. */
export interface AccountDbs {
  users: Database<UserRecord, Key>;
  usernames: Database<string, Key>;
  devices: Database<DeviceRecord, Key>;
  userDevices: Database<true, Key>;
  linkCodes: Database<LinkCodeRecord, Key>;
  userPrivacy: Database<PrivacyRecord, Key>;
  userAvatars: Database<AvatarRecord, Key>;
  invites: Database<InviteRecord, Key>;
  /** Blocks and reports (safety.ts). */
  safety: SafetyDbs;
}

// See conversations.ts: an exclusive upper bound for every key that starts with a prefix.
const HIGH = Buffer.from([0xff]);

function userRecord(u: UserRecord): UserRecord {
  return {
    userId: u.userId,
    username: u.username,
    displayName: u.displayName,
    createdAtMs: u.createdAtMs,
    // Stored only while suspended, so records of users never suspended keep their shape.
    ...(u.suspendedAtMs ? { suspendedAtMs: u.suspendedAtMs } : {}),
  };
}

function deviceRecord(d: DeviceRecord): DeviceRecord {
  return {
    deviceId: d.deviceId,
    userId: d.userId,
    name: d.name,
    secretHash: d.secretHash,
    createdAtMs: d.createdAtMs,
    revokedAtMs: d.revokedAtMs,
    ...(d.push !== undefined && { push: { id: d.push.id, target: { ...d.push.target } } }),
  };
}

// Only the known fields, none undefined (msgpack would store an explicit undefined).
function privacyRecord(p: PrivacyRecord): PrivacyRecord {
  return {
    ...(p.groupAdd !== undefined && { groupAdd: p.groupAdd }),
    ...(p.directOpen !== undefined && { directOpen: p.directOpen }),
    ...(p.lastSeen !== undefined && { lastSeen: p.lastSeen }),
    ...(p.readReceipts !== undefined && { readReceipts: p.readReceipts }),
    ...(p.profile !== undefined && { profile: p.profile }),
  };
}

function inviteRecord(i: InviteRecord): InviteRecord {
  return {
    id: i.id,
    tokenHash: i.tokenHash,
    usesLeft: i.usesLeft,
    maxUses: i.maxUses,
    createdAtMs: i.createdAtMs,
    expiresAtMs: i.expiresAtMs,
    revokedAtMs: i.revokedAtMs,
    note: i.note,
  };
}

/**
 * The accounts port on LMDB. Every check-then-write runs as one unit inside the write transaction
 * (see engine.ts), so concurrent callers are serialised and each sees the others' writes.
 */
export class LmdbAccountStore implements AccountStore {
  /** Blocks and reports, in a file of their own. */
  private readonly safety: LmdbSafetyStore;

  constructor(
    private readonly dbs: AccountDbs,
    private readonly writeUnit: WriteUnit,
  ) {
    this.safety = new LmdbSafetyStore(dbs.safety, writeUnit);
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

  async createUser(user: UserRecord, firstDevice: DeviceRecord): Promise<void> {
    if (firstDevice.userId !== user.userId) {
      throw new RangeError(
        `first device ${firstDevice.deviceId} belongs to ${firstDevice.userId}, not ${user.userId}`,
      );
    }
    const { dbs } = this;
    await this.writeUnit(() => {
      if (dbs.usernames.doesExist(user.username)) {
        throw new StoreError("already_exists", `username ${user.username} is taken`);
      }
      if (dbs.users.doesExist(user.userId))
        throw new StoreError("already_exists", `user ${user.userId} exists`);
      if (dbs.devices.doesExist(firstDevice.deviceId)) {
        throw new StoreError("already_exists", `device ${firstDevice.deviceId} exists`);
      }
      dbs.users.put(user.userId, userRecord(user));
      dbs.usernames.put(user.username, user.userId);
      this.putDevice(firstDevice);
    });
  }

  async getUser(userId: string): Promise<UserRecord | undefined> {
    return this.dbs.users.get(userId);
  }

  async getUserByUsername(username: string): Promise<UserRecord | undefined> {
    const userId = this.dbs.usernames.get(username);
    return userId === undefined ? undefined : this.dbs.users.get(userId);
  }

  async addDevice(device: DeviceRecord, maxActiveDevices: number): Promise<void> {
    const { dbs } = this;
    await this.writeUnit(() => {
      if (!dbs.users.doesExist(device.userId)) throw new StoreError("not_found", `no user ${device.userId}`);
      if (dbs.devices.doesExist(device.deviceId)) {
        throw new StoreError("already_exists", `device ${device.deviceId} exists`);
      }
      const active = this.devicesOf(device.userId).filter((d) => d.revokedAtMs === 0).length;
      if (active >= maxActiveDevices) {
        throw new StoreError("limit", `user ${device.userId} already has ${active} active devices`);
      }
      this.putDevice(device);
    });
  }

  async getDevice(deviceId: string): Promise<DeviceRecord | undefined> {
    return this.dbs.devices.get(deviceId);
  }

  async listDevices(userId: string): Promise<DeviceRecord[]> {
    return this.devicesOf(userId);
  }

  async revokeDevice(deviceId: string, atMs: number): Promise<DeviceRecord | undefined> {
    // 0 means "active", so it cannot be a revocation time.
    if (!(atMs > 0)) throw new RangeError(`revocation time must be positive, got ${atMs}`);
    const { dbs } = this;
    return this.writeUnit(() => {
      const device = dbs.devices.get(deviceId);
      // Revoking twice keeps the first revocation time.
      if (device === undefined || device.revokedAtMs !== 0) return device;
      const revoked = { ...device, revokedAtMs: atMs };
      dbs.devices.put(deviceId, revoked);
      return revoked;
    });
  }

  async setPush(
    deviceId: string,
    push: PushRegistration | undefined,
    ifCurrentId?: string,
  ): Promise<boolean> {
    const { dbs } = this;
    return this.writeUnit(() => {
      const device = dbs.devices.get(deviceId);
      if (device === undefined) return false;
      if (ifCurrentId !== undefined && device.push?.id !== ifCurrentId) return false;
      const { push: _old, ...rest } = device;
      dbs.devices.put(deviceId, deviceRecord(push === undefined ? rest : { ...rest, push }));
      return true;
    });
  }

  async putLinkCode(code: LinkCodeRecord): Promise<void> {
    const { dbs } = this;
    await this.writeUnit(() => {
      dbs.linkCodes.put(code.codeHash, {
        codeHash: code.codeHash,
        userId: code.userId,
        expiresAtMs: code.expiresAtMs,
      });
    });
  }

  async takeLinkCode(codeHash: string): Promise<LinkCodeRecord | undefined> {
    const { dbs } = this;
    return this.writeUnit(() => {
      const code = dbs.linkCodes.get(codeHash);
      if (code !== undefined) dbs.linkCodes.remove(codeHash);
      return code;
    });
  }

  async getPrivacy(userIds: readonly string[]): Promise<Map<string, PrivacyRecord>> {
    const out = new Map<string, PrivacyRecord>();
    for (const userId of userIds) out.set(userId, privacyRecord(this.dbs.userPrivacy.get(userId) ?? {}));
    return out;
  }

  async setPrivacy(userId: string, changes: PrivacyRecord): Promise<PrivacyRecord> {
    const { dbs } = this;
    // Read and written in one unit, so concurrent changes of different settings all survive.
    return this.writeUnit(() => {
      if (!dbs.users.doesExist(userId)) throw new StoreError("not_found", `no user ${userId}`);
      const merged = privacyRecord({ ...dbs.userPrivacy.get(userId), ...privacyRecord(changes) });
      dbs.userPrivacy.put(userId, merged);
      return merged;
    });
  }

  async getAvatar(userId: string): Promise<AvatarRecord | undefined> {
    const a = this.dbs.userAvatars.get(userId);
    return a === undefined
      ? undefined
      : { objectId: a.objectId, lengthBytes: a.lengthBytes, setAtMs: a.setAtMs };
  }

  async swapAvatar(userId: string, avatar: AvatarRecord | undefined): Promise<AvatarRecord | undefined> {
    const { dbs } = this;
    // Read and written in one unit: the previous avatar goes to exactly one caller.
    return this.writeUnit(() => {
      const previous = dbs.userAvatars.get(userId);
      if (avatar === undefined) {
        if (previous !== undefined) dbs.userAvatars.remove(userId);
      } else {
        if (!dbs.users.doesExist(userId)) throw new StoreError("not_found", `no user ${userId}`);
        dbs.userAvatars.put(userId, {
          objectId: avatar.objectId,
          lengthBytes: avatar.lengthBytes,
          setAtMs: avatar.setAtMs,
        });
      }
      return previous === undefined
        ? undefined
        : { objectId: previous.objectId, lengthBytes: previous.lengthBytes, setAtMs: previous.setAtMs };
    });
  }

  async putInvite(invite: InviteRecord): Promise<void> {
    const { dbs } = this;
    await this.writeUnit(() => {
      if (dbs.invites.doesExist(invite.id))
        throw new StoreError("already_exists", `invite ${invite.id} exists`);
      dbs.invites.put(invite.id, inviteRecord(invite));
    });
  }

  async getInvite(id: string): Promise<InviteRecord | undefined> {
    return this.dbs.invites.get(id);
  }

  // Operators make invites by hand, so a full scan sorted in memory is cheap enough.
  async listInvites(limit: number): Promise<{ invites: InviteRecord[]; truncated: boolean }> {
    const all: InviteRecord[] = [];
    for (const { value } of this.dbs.invites.getRange()) all.push(value);
    all.sort((a, b) => b.createdAtMs - a.createdAtMs || (a.id < b.id ? -1 : 1));
    return { invites: all.slice(0, limit), truncated: all.length > limit };
  }

  async revokeInvite(id: string, atMs: number): Promise<InviteRecord | undefined> {
    if (!(atMs > 0)) throw new RangeError(`revocation time must be positive, got ${atMs}`);
    const { dbs } = this;
    return this.writeUnit(() => {
      const invite = dbs.invites.get(id);
      if (invite === undefined || invite.revokedAtMs !== 0) return invite;
      const revoked = { ...invite, revokedAtMs: atMs };
      dbs.invites.put(id, revoked);
      return revoked;
    });
  }

  async takeInviteUse(id: string, tokenHash: string, nowMs: number): Promise<InviteTake> {
    const { dbs } = this;
    // Checked and decremented in one unit: concurrent takes are serialised by the write transaction.
    return this.writeUnit((): InviteTake => {
      const invite = dbs.invites.get(id);
      if (invite === undefined || invite.tokenHash !== tokenHash) return { refused: "unknown" };
      if (invite.revokedAtMs !== 0) return { refused: "revoked" };
      if (nowMs >= invite.expiresAtMs) return { refused: "expired" };
      if (invite.usesLeft <= 0) return { refused: "used_up" };
      const taken = { ...invite, usesLeft: invite.usesLeft - 1 };
      dbs.invites.put(id, taken);
      return { taken };
    });
  }

  async returnInviteUse(id: string): Promise<void> {
    const { dbs } = this;
    await this.writeUnit(() => {
      const invite = dbs.invites.get(id);
      if (invite === undefined) return;
      dbs.invites.put(id, { ...invite, usesLeft: Math.min(invite.maxUses, invite.usesLeft + 1) });
    });
  }

  async setDisplayName(userId: string, displayName: string): Promise<UserRecord | undefined> {
    const { dbs } = this;
    return this.writeUnit(() => {
      const user = dbs.users.get(userId);
      if (user === undefined) return undefined;
      const next = userRecord({ ...user, displayName });
      dbs.users.put(userId, next);
      return next;
    });
  }

  async setSuspended(userId: string, atMs: number): Promise<UserRecord | undefined> {
    if (!(atMs >= 0)) throw new RangeError(`suspension time must be 0 or positive, got ${atMs}`);
    const { dbs } = this;
    return this.writeUnit(() => {
      const user = dbs.users.get(userId);
      if (user === undefined) return undefined;
      // Suspending twice keeps the first time.
      if (atMs !== 0 && user.suspendedAtMs) return user;
      const next = userRecord({ ...user, suspendedAtMs: atMs });
      dbs.users.put(userId, next);
      return next;
    });
  }

  async deleteUser(userId: string): Promise<boolean> {
    const { dbs } = this;
    return this.writeUnit(() => {
      const user = dbs.users.get(userId);
      if (user === undefined) return false;
      for (const key of [...dbs.userDevices.getKeys({ start: [userId], end: [userId, HIGH] })]) {
        dbs.devices.remove((key as [string, number, string])[2]);
        dbs.userDevices.remove(key);
      }
      // Only the user's own name: a username re-registered since is another user's.
      if (dbs.usernames.get(user.username) === userId) dbs.usernames.remove(user.username);
      dbs.userPrivacy.remove(userId);
      // The user's own blocks; others' blocks of the user and reports about them stay with those.
      const blocks = dbs.safety.userBlocks;
      for (const key of [...blocks.getKeys({ start: [userId], end: [userId, HIGH] })]) blocks.remove(key);
      dbs.users.remove(userId);
      return true;
    });
  }

  // The index key [userId, createdAtMs, deviceId] is what makes listings oldest first.
  private putDevice(device: DeviceRecord): void {
    this.dbs.devices.put(device.deviceId, deviceRecord(device));
    this.dbs.userDevices.put([device.userId, device.createdAtMs, device.deviceId], true);
  }

  private devicesOf(userId: string): DeviceRecord[] {
    const out: DeviceRecord[] = [];
    for (const key of this.dbs.userDevices.getKeys({ start: [userId], end: [userId, HIGH] })) {
      const device = this.dbs.devices.get((key as [string, number, string])[2]);
      if (device !== undefined) out.push(device);
    }
    return out;
  }
}
