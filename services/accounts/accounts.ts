import { timingSafeEqual } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { BusEventSchema, DeviceRevokedSchema } from "../../gen/switchboard/internal/v1/events_pb.js";
import {
  type Device,
  type DeviceCredential,
  DeviceCredentialSchema,
  DeviceSchema,
  type User,
  UserSchema,
} from "../../gen/switchboard/v1/accounts_pb.js";
import type { EventBus } from "../bus/types.js";
import type { Tokens } from "../common/auth.js";
import { defaultPrivacy, type PrivacyDefaults } from "../common/config.js";
import {
  AlreadyExistsError,
  InvalidInputError,
  LimitError,
  NotFoundError,
  PermissionError,
  UnauthenticatedError,
  UnavailableError,
  UnimplementedError,
} from "../common/errors.js";
import { newId, newSecret, sha256Hex } from "../common/ids.js";
import type { Logger } from "../common/log.js";
import { Refusals } from "../common/refusals.js";
import { isStoreError } from "../store/errors.js";
import type { AccountStore, DeviceRecord, PushTarget, UserRecord } from "../store/types.js";
import { Avatars } from "./avatars.js";
import { INVALID_INVITE, INVITE_REQUIRED, Invites, type RegistrationMode } from "./invites.js";
import type { Keys } from "./keys.js";
import { Privacy } from "./privacy.js";
import { type AccountRate, enforce, type RefusalSink } from "./refusals.js";
import { Blocks, Reports } from "./safety.js";
import { Suspensions } from "./suspension.js";
import type { UserData } from "./user-data.js";
import { lookAlikes, ReservedNames } from "./usernames.js";

/** Existing usernames a registration checks for look-alikes at most (see lookAlikes). */
const MAX_LOOKALIKE_LOOKUPS = 64;

/** The abuse controls of the accounts manager; each is off when absent. */
export interface AccountAbuseOptions {
  /** Registrations per source address (the key is the address, an IPv6 one by its /64). */
  registerPerAddress?: AccountRate | undefined;
  /** Registrations on the whole deployment. */
  registerServerWide?: AccountRate | undefined;
  /** Names looked up per requesting user (LookupUsers; each id or username costs one). */
  lookups?: AccountRate | undefined;
  /** Usernames and display names nobody may take, matched loosely. */
  reservedNames?: readonly string[] | undefined;
  /** "invite": only holders of an operator's invite may register (default "open"). */
  registration?: RegistrationMode | undefined;
  /** Reports per reporting user (ReportUser). */
  reports?: AccountRate | undefined;
  /** Blocks and unblocks per user (BlockUser, UnblockUser). */
  blockChanges?: AccountRate | undefined;
}

/** Options for the accounts manager. */
export interface AccountsOptions {
  /** Active devices per user. */
  maxDevicesPerUser: number;
  /** Link code lifetime, in seconds. */
  linkCodeTtlSeconds: number;
  /** Rate limits and reserved names. */
  abuse?: AccountAbuseOptions;
  /** Counts and logs refusals (the process's); one of its own when absent. */
  refusals?: RefusalSink;
  /** The clock, in milliseconds since the Unix epoch. */
  now?: () => number;
  /** Privacy settings of users who never chose (default: everyone for each). */
  privacyDefaults?: PrivacyDefaults;
}

/** A stored user as the API shows it (the account and admin services). */
export function toUser(u: UserRecord): User {
  return create(UserSchema, {
    userId: u.userId,
    username: u.username,
    displayName: u.displayName,
    createdAtMs: BigInt(u.createdAtMs),
  });
}

/** A stored device as the API shows it (the account and admin services). */
export function toDevice(d: DeviceRecord): Device {
  return create(DeviceSchema, {
    deviceId: d.deviceId,
    userId: d.userId,
    name: d.name,
    createdAtMs: BigInt(d.createdAtMs),
    revokedAtMs: BigInt(d.revokedAtMs),
    pushKind: d.push?.target.kind ?? "",
  });
}

/** Names one registration of a target; equal targets get equal ids. */
export function pushTargetId(target: PushTarget): string {
  const key =
    target.kind === "webpush"
      ? `${target.endpoint}\n${target.p256dh}\n${target.auth}`
      : target.kind === "fcm"
        ? target.token
        : `${target.environment}\n${target.topic}\n${target.token}`;
  return sha256Hex(`${target.kind}\n${key}`).slice(0, 32);
}

function sameHash(a: string, b: string): boolean {
  const x = Buffer.from(a, "hex");
  const y = Buffer.from(b, "hex");
  return x.length === y.length && timingSafeEqual(x, y);
}

/**
 * A link code names the device that made it: `<device id>_<secret>`. The code is stored only as a
 * hash, so the device id cannot be altered without making the code unknown, and redeeming it can
 * check that device without a store field (codes made before this format are refused as unknown).
 */
function linkCodeCreator(code: string): string | undefined {
  const match = /^(dv_[0-9a-z]{26})_[A-Za-z0-9_-]{16,}$/.exec(code);
  return match?.[1];
}

/** Domain rules for users, devices and credentials. Inputs are validated by the handler. */
export class Accounts {
  private readonly now: () => number;
  private readonly abuse: AccountAbuseOptions;
  private readonly reserved: ReservedNames;
  /** Refusals by an abuse control, counted and logged. */
  private readonly refusals: RefusalSink;
  /**
   * The key directory of this accounts role, which knows the devices' registration ids
   * (DirectoryService.GetDeviceRegistrations). The server attaches it when it builds the
   * accounts role, which owns both.
   */
  keyDirectory: Pick<Keys, "registrations"> | undefined;
  /**
   * Records where a device being linked starts in each of its user's conversations
   * (SequencerService.RecordDeviceLink on every replica), so it is never served history from
   * before its link. The server attaches it; a link fails while it cannot be recorded.
   */
  deviceLinks: ((userId: string, deviceId: string) => Promise<void>) | undefined;
  /** Users' privacy settings (who may add them to groups or start a direct conversation). */
  readonly privacy: Privacy;
  /** Registration invites (made by operators; required in the "invite" registration mode). */
  readonly invites: Invites;
  /** Operator suspensions of users. */
  readonly suspensions: Suspensions;
  /** Users' blocks of other users. */
  readonly blocks: Blocks;
  /** Users' reports of other users, for operators. */
  readonly reports: Reports;
  /** Users' avatar records (object id and length; the media service owns the objects). */
  readonly avatars: Avatars;
  /** Operator deletion and export of a user's data; the server attaches it (it needs the sequencer). */
  userData: UserData | undefined;

  constructor(
    private readonly store: AccountStore,
    private readonly tokens: Tokens,
    private readonly bus: EventBus,
    private readonly log: Logger,
    private readonly options: AccountsOptions,
  ) {
    this.now = options.now ?? Date.now;
    this.abuse = options.abuse ?? {};
    this.reserved = new ReservedNames(this.abuse.reservedNames ?? []);
    this.refusals = options.refusals ?? new Refusals(log);
    this.privacy = new Privacy(store, options.privacyDefaults ?? defaultPrivacy, log, bus);
    this.invites = new Invites(store, log, this.now);
    this.suspensions = new Suspensions(store, bus, log, this.now);
    this.blocks = new Blocks(store, bus, log, this.now, this.abuse.blockChanges, this.refusals);
    this.reports = new Reports(store, this.abuse.reports, this.refusals, log, this.now);
    this.avatars = new Avatars(store, log);
  }

  /** How registration is opened on this server. */
  get registrationMode(): RegistrationMode {
    return this.abuse.registration ?? "open";
  }

  private newDevice(userId: string, name: string): { record: DeviceRecord; credential: DeviceCredential } {
    const secret = newSecret();
    const record: DeviceRecord = {
      deviceId: newId("dv"),
      userId,
      name,
      secretHash: sha256Hex(secret),
      createdAtMs: this.now(),
      revokedAtMs: 0,
    };
    const credential = create(DeviceCredentialSchema, {
      userId,
      deviceId: record.deviceId,
      deviceSecret: secret,
    });
    return { record, credential };
  }

  /**
   * Creates a user and its first device. `peer` is the caller's network address as the edge saw
   * it (PEER_HEADER), the key of the per-address limit; in-process callers (tools, tests) give none.
   * `inviteToken` is checked only in the "invite" registration mode (ignored otherwise); one use
   * of its invite is spent only when the user is created.
   */
  async register(username: string, displayName: string, deviceName: string, peer?: string, inviteToken = "") {
    // Name rules first: they cost nothing and spend no one's registration allowance.
    const reservedUsername = this.reserved.match(username);
    const reservedDisplay = displayName === "" ? undefined : this.reserved.match(displayName);
    if (reservedUsername !== undefined || reservedDisplay !== undefined) {
      this.refusals.refuse("username_reserved", "registration refused: reserved name", {
        peer,
        code: "invalid_argument",
      });
      const field = reservedUsername !== undefined ? "username" : "display_name";
      throw new InvalidInputError(
        `${field}: too close to the reserved name "${reservedUsername ?? reservedDisplay}"; choose another`,
      );
    }
    const a = this.abuse;
    const invited = this.registrationMode === "invite";
    // Costs nothing either, and spends no allowance of the address's other callers.
    if (invited && inviteToken === "") {
      this.refusals.refuse("invite_required", "registration refused: no invite", {
        peer,
        code: "permission_denied",
      });
      throw new PermissionError(INVITE_REQUIRED);
    }
    await enforce(
      peer === undefined ? undefined : a.registerPerAddress,
      peer ?? "",
      1,
      this.refusals,
      "register_rate_address",
      `registrations are limited to ${a.registerPerAddress?.limit.burst} per hour per network address`,
      { peer },
    );
    await enforce(
      a.registerServerWide,
      "all",
      1,
      this.refusals,
      "register_rate_server",
      `registrations are limited to ${a.registerServerWide?.limit.burst} per hour on this server`,
      { peer },
    );
    // After the rate limits, which bound how fast tokens can be tried (each costs a store write).
    // Before the username checks, so that without an invite nobody learns which names exist.
    let inviteId: string | undefined;
    if (invited) {
      const use = await this.invites.take(inviteToken);
      if ("refused" in use) {
        // The log says which; the caller is told one thing for all of them.
        this.refusals.refuse("invite_invalid", "registration refused: invalid or used invite", {
          peer,
          invite: use.refused,
          code: "permission_denied",
        });
        throw new PermissionError(INVALID_INVITE);
      }
      inviteId = use.inviteId;
    }
    try {
      const created = await this.createUser(username, displayName, deviceName, peer);
      if (inviteId !== undefined) this.log.info({ userId: created.user.userId, inviteId }, "invite used");
      return created;
    } catch (err) {
      // Nobody was created, so the use is not lost (the name was taken, or the store failed).
      if (inviteId !== undefined) {
        await this.invites.giveBack(inviteId).catch((giveBackErr: unknown) => {
          this.log.warn({ err: giveBackErr, inviteId }, "could not give back an invite's use");
        });
      }
      throw err;
    }
  }

  private async createUser(username: string, displayName: string, deviceName: string, peer?: string) {
    const similar = await Promise.all(
      lookAlikes(username, MAX_LOOKALIKE_LOOKUPS).map((n) => this.store.getUserByUsername(n)),
    );
    const lookAlike = similar.find((u) => u !== undefined);
    if (lookAlike !== undefined) {
      this.refusals.refuse("username_lookalike", "registration refused: look-alike of an existing username", {
        peer,
        code: "already_exists",
      });
      throw new AlreadyExistsError(
        `username "${username}" looks like an existing user's ("${lookAlike.username}"); choose another`,
      );
    }
    const user: UserRecord = {
      userId: newId("u"),
      username,
      displayName: displayName || username,
      createdAtMs: this.now(),
    };
    const device = this.newDevice(user.userId, deviceName);
    try {
      await this.store.createUser(user, device.record);
    } catch (err) {
      if (isStoreError(err, "already_exists")) {
        throw new AlreadyExistsError(`username "${username}" is taken`);
      }
      throw err;
    }
    this.log.info({ userId: user.userId, deviceId: device.record.deviceId }, "user registered");
    return { user: toUser(user), credential: device.credential };
  }

  /** Exchanges a device credential for an access token. */
  async createToken(deviceId: string, secret: string) {
    const device = await this.store.getDevice(deviceId);
    // One message for unknown device and wrong secret, so ids cannot be probed.
    if (device === undefined || !sameHash(device.secretHash, sha256Hex(secret))) {
      throw new UnauthenticatedError("unknown device or wrong secret");
    }
    if (device.revokedAtMs !== 0) throw new UnauthenticatedError("device has been revoked");
    if ((await this.suspensions.suspendedAmong([device.userId])).size > 0) {
      throw new PermissionError("account suspended by an operator");
    }
    return this.tokens.issue(device.userId, device.deviceId, this.now());
  }

  /**
   * Issues a one-time code that links a new device to the user. The code names the device that
   * made it: it is void once that device is revoked, or once any device of the user is revoked
   * after the code was made (a revocation says the account was at risk; see linkDevice).
   */
  async createLinkCode(userId: string, deviceId: string) {
    const code = `${deviceId}_${newSecret(18)}`;
    const expiresAtMs = this.now() + this.options.linkCodeTtlSeconds * 1000;
    await this.store.putLinkCode({ codeHash: sha256Hex(code), userId, expiresAtMs });
    return { code, expiresAtMs };
  }

  /** Redeems a link code for a new device. */
  async linkDevice(code: string, deviceName: string) {
    const record = await this.store.takeLinkCode(sha256Hex(code));
    if (record === undefined || record.expiresAtMs < this.now()) {
      throw new NotFoundError("link code is unknown, used or expired");
    }
    const user = await this.store.getUser(record.userId);
    if (user === undefined) throw new NotFoundError("link code is unknown, used or expired");
    const creator = linkCodeCreator(code);
    if (creator === undefined) throw new NotFoundError("link code is unknown, used or expired");
    // Made at expiry minus the lifetime; a revocation at or after that moment voids the code.
    const createdAtMs = record.expiresAtMs - this.options.linkCodeTtlSeconds * 1000;
    const devices = await this.store.listDevices(user.userId);
    const maker = devices.find((d) => d.deviceId === creator);
    const revokedSince = devices.some((d) => d.revokedAtMs !== 0 && d.revokedAtMs >= createdAtMs);
    if (maker === undefined || maker.revokedAtMs !== 0 || revokedSince) {
      this.refusals.refuse("link_code_void", "link refused: the code was voided by a revocation", {
        userId: user.userId,
        code: "permission_denied",
      });
      throw new PermissionError(
        maker === undefined || maker.revokedAtMs !== 0
          ? "link code is void: the device that created it has been revoked"
          : "link code is void: a device of the account was revoked after it was created",
      );
    }
    const device = this.newDevice(user.userId, deviceName);
    // Before the device exists, so none of its reads can come first. On failure the code is
    // put back: nothing was linked, and the same code can be tried again.
    try {
      await this.deviceLinks?.(user.userId, device.record.deviceId);
    } catch (err) {
      await this.store.putLinkCode(record);
      this.log.warn({ err, userId: user.userId }, "could not record where a linked device starts");
      throw new UnavailableError("the device could not be linked now; retry with the same code");
    }
    try {
      await this.store.addDevice(device.record, this.options.maxDevicesPerUser);
    } catch (err) {
      if (isStoreError(err, "limit")) {
        throw new LimitError(
          `a user may have at most ${this.options.maxDevicesPerUser} active devices; revoke one first`,
        );
      }
      throw err;
    }
    this.log.info({ userId: user.userId, deviceId: device.record.deviceId }, "device linked");
    return { user: toUser(user), credential: device.credential };
  }

  /** The user's devices, oldest first. */
  async listDevices(userId: string, includeRevoked: boolean): Promise<Device[]> {
    const devices = await this.store.listDevices(userId);
    return devices.filter((d) => includeRevoked || d.revokedAtMs === 0).map(toDevice);
  }

  /** Revokes one of the user's devices and tells every gateway to close its streams. */
  async revokeDevice(userId: string, deviceId: string): Promise<Device> {
    const device = await this.store.getDevice(deviceId);
    if (device === undefined || device.userId !== userId) throw new NotFoundError("no such device");
    const revoked = (await this.store.revokeDevice(deviceId, this.now())) ?? device;
    this.bus.broadcast([
      create(BusEventSchema, {
        event: { case: "deviceRevoked", value: create(DeviceRevokedSchema, { userId, deviceId }) },
      }),
    ]);
    this.log.info({ userId, deviceId }, "device revoked");
    return toDevice(revoked);
  }

  /**
   * Spends `names` of the user's lookup allowance (each id or username looked up costs one), so a
   * user cannot enumerate the directory; RESOURCE_EXHAUSTED past it.
   */
  async limitLookups(requesterUserId: string, names: number): Promise<void> {
    const lookups = this.abuse.lookups;
    await enforce(
      lookups,
      requesterUserId,
      names,
      this.refusals,
      "lookup_rate",
      `user lookups are limited to ${lookups?.limit.burst} names per minute per user`,
      { userId: requesterUserId },
    );
  }

  /**
   * Replaces the user's display name (already checked for length and control characters by the
   * handler); one too close to a reserved name is refused as at registration.
   */
  async setDisplayName(userId: string, displayName: string): Promise<User> {
    const reserved = this.reserved.match(displayName);
    if (reserved !== undefined) {
      this.refusals.refuse("username_reserved", "display name refused: reserved name", {
        userId,
        code: "invalid_argument",
      });
      throw new InvalidInputError(
        `display_name: too close to the reserved name "${reserved}"; choose another`,
      );
    }
    const user = await this.store.setDisplayName(userId, displayName);
    if (user === undefined) throw new NotFoundError("no such user");
    return toUser(user);
  }

  /** Users by id and by username; unknown ones are left out. */
  async lookupUsers(userIds: readonly string[], usernames: readonly string[]): Promise<User[]> {
    const found = await Promise.all([
      ...userIds.map((id) => this.store.getUser(id)),
      ...usernames.map((name) => this.store.getUserByUsername(name)),
    ]);
    const unique = new Map<string, UserRecord>();
    for (const u of found) if (u !== undefined) unique.set(u.userId, u);
    return [...unique.values()].map(toUser);
  }

  /** Registers (or replaces) where the device receives pushes. */
  async setPushTarget(userId: string, deviceId: string, target: PushTarget): Promise<void> {
    const device = await this.store.getDevice(deviceId);
    if (device === undefined || device.userId !== userId || device.revokedAtMs !== 0) {
      throw new NotFoundError("no such device");
    }
    await this.store.setPush(deviceId, { id: pushTargetId(target), target });
    this.log.info({ userId, deviceId, kind: target.kind }, "push target registered");
  }

  /** Stops pushes to the device. */
  async removePushTarget(userId: string, deviceId: string): Promise<void> {
    const device = await this.store.getDevice(deviceId);
    if (device === undefined || device.userId !== userId) throw new NotFoundError("no such device");
    await this.store.setPush(deviceId, undefined);
  }

  /** Push targets of active devices; devices without one are left out. */
  async getPushTargets(deviceIds: readonly string[]) {
    const devices = await Promise.all(deviceIds.map((id) => this.store.getDevice(id)));
    return devices.flatMap((d) =>
      d !== undefined && d.revokedAtMs === 0 && d.push !== undefined
        ? [{ deviceId: d.deviceId, userId: d.userId, targetId: d.push.id, target: d.push.target }]
        : [],
    );
  }

  /** Removes a target a provider reported gone, unless the device registered another since. */
  async dropPushTarget(deviceId: string, targetId: string): Promise<boolean> {
    const dropped = await this.store.setPush(deviceId, undefined, targetId);
    if (dropped) this.log.info({ deviceId }, "push target removed: the provider reported it gone");
    return dropped;
  }

  /** Device status for other services: a suspended user's devices are not active. */
  async getDevices(deviceIds: readonly string[]) {
    const devices = (await Promise.all(deviceIds.map((id) => this.store.getDevice(id)))).filter(
      (d): d is DeviceRecord => d !== undefined,
    );
    const suspended = await this.suspensions.suspendedAmong(devices.map((d) => d.userId));
    return devices.map((d) => ({
      deviceId: d.deviceId,
      userId: d.userId,
      active: d.revokedAtMs === 0 && !suspended.has(d.userId),
    }));
  }

  /** Active devices of users. */
  async getUserDevices(userIds: readonly string[]) {
    return Promise.all(
      userIds.map(async (userId) => ({
        userId,
        deviceIds: (await this.store.listDevices(userId))
          .filter((d) => d.revokedAtMs === 0)
          .map((d) => d.deviceId),
      })),
    );
  }

  /** The users' active devices with their registration ids from the key directory. */
  async getDeviceRegistrations(userIds: readonly string[]) {
    if (this.keyDirectory === undefined) {
      throw new UnimplementedError("the key directory is not served by this accounts process");
    }
    return this.keyDirectory.registrations(userIds);
  }

  /** Which users exist. */
  async checkUsers(userIds: readonly string[]): Promise<string[]> {
    const users = await Promise.all(userIds.map((id) => this.store.getUser(id)));
    return users.filter((u): u is UserRecord => u !== undefined).map((u) => u.userId);
  }
}
