/** The accounts port: users, devices, link codes, invites, privacy, blocks and reports (see ../types.ts). */

/** A user account. */
export interface UserRecord {
  /** Server-assigned id ("u_..."). */
  userId: string;
  /** Unique handle. */
  username: string;
  /** Free-form name. */
  displayName: string;
  /** Creation time, in milliseconds since the Unix epoch. */
  createdAtMs: number;
  /**
   * When an operator suspended the user, in milliseconds since the Unix epoch; absent (or 0)
   * while not suspended. Only engines with setSuspended store it.
   */
  suspendedAtMs?: number;
}

/** A device and its credential. */
export interface DeviceRecord {
  /** Server-assigned id ("dv_..."). */
  deviceId: string;
  /** The owner. */
  userId: string;
  /** A name for people. */
  name: string;
  /** SHA-256 of the device secret, hex. The secret itself is never stored. */
  secretHash: string;
  /** Creation time, in milliseconds since the Unix epoch. */
  createdAtMs: number;
  /** Revocation time, in milliseconds since the Unix epoch; 0 while active. */
  revokedAtMs: number;
  /** Where the device receives push wake-ups, if anywhere. */
  push?: PushRegistration;
}

/** A device's push target with an id that names this registration. */
export interface PushRegistration {
  /** A hash of the target; a removal reported for an older registration is recognised by it. */
  id: string;
  /** The target. */
  target: PushTarget;
}

/**
 * Where a device receives pushes. One per device; registering another replaces it. Declared here,
 * below the services, because the store owns what it persists (JSON in ScyllaDB, a record in
 * LMDB); the notification service re-exports these types as its own.
 */
export type PushTarget = WebPushTarget | FcmTarget | ApnsTarget;

/** A Web Push subscription (RFC 8030); also UnifiedPush distributors and ntfy. */
export interface WebPushTarget {
  kind: "webpush";
  /** The push service URL from the subscription (https). */
  endpoint: string;
  /** The subscription's P-256 public key, base64url (65 bytes uncompressed). */
  p256dh: string;
  /** The subscription's authentication secret, base64url (16 bytes). */
  auth: string;
}

/** A Firebase Cloud Messaging registration token. */
export interface FcmTarget {
  kind: "fcm";
  /** The registration token. */
  token: string;
}

/** An Apple Push Notification service device token. */
export interface ApnsTarget {
  kind: "apns";
  /** The device token, hex. */
  token: string;
  /** The app's bundle id (the apns-topic). */
  topic: string;
  /** Which APNs environment issued the token. */
  environment: "sandbox" | "production";
}

/** A one-time code that links a new device to a user. */
export interface LinkCodeRecord {
  /** SHA-256 of the code, hex. */
  codeHash: string;
  /** The user the code links to. */
  userId: string;
  /** Expiry, in milliseconds since the Unix epoch. */
  expiresAtMs: number;
}

/** An invitation to register, made by an operator (SWITCHBOARD_REGISTRATION=invite). */
export interface InviteRecord {
  /** Server-assigned id ("iv_..."); the token starts with it. */
  id: string;
  /** SHA-256 of the token, hex. The token itself is never stored. */
  tokenHash: string;
  /** Registrations it still allows. */
  usesLeft: number;
  /** Registrations it allowed when it was made. */
  maxUses: number;
  /** Creation time, in milliseconds since the Unix epoch. */
  createdAtMs: number;
  /** Expiry, in milliseconds since the Unix epoch: it works while now < expiresAtMs. */
  expiresAtMs: number;
  /** Revocation time, in milliseconds since the Unix epoch; 0 while not revoked. */
  revokedAtMs: number;
  /** The operator's note. */
  note: string;
}

/** Why an invite did not give a use: no such invite (or a wrong token), revoked, expired, none left. */
export type InviteRefusal = "unknown" | "revoked" | "expired" | "used_up";

/** What AccountStore.takeInviteUse did: took one use (the record after it), or why not. */
export type InviteTake = { taken: InviteRecord } | { refused: InviteRefusal };

/** Who may do something that involves a user: anyone, users who share a conversation with them, no one. */
export type PrivacyAudience = "everyone" | "contacts" | "nobody";

/**
 * A user's privacy settings as stored. A field is absent until the user first sets it, so the
 * server's configured default applies to it (and a changed default reaches every such user).
 * Later settings (profile) are new optional fields.
 */
export interface PrivacyRecord {
  /** Who may add the user to groups. */
  groupAdd?: PrivacyAudience;
  /** Who may start a new direct conversation with the user. */
  directOpen?: PrivacyAudience;
  /** Who sees the user's online state and last seen ("contacts": a direct conversation). */
  lastSeen?: PrivacyAudience;
  /** Whether the user's read receipts reach others (and theirs reach the user). */
  readReceipts?: boolean;
  /** Who sees the user's display name ("contacts": a direct conversation). */
  profile?: PrivacyAudience;
}

/**
 * A user's profile avatar as the server stores it: which media object holds its ciphertext, and
 * how long that is. The key never reaches the server (docs/encryption.md, "Avatars").
 */
export interface AvatarRecord {
  /** The media object ("m_..."). */
  objectId: string;
  /** The ciphertext's length, in bytes. */
  lengthBytes: number;
  /** When it was set, in milliseconds since the Unix epoch. */
  setAtMs: number;
}

/** One block: a user no longer reachable by another (services/accounts/blocks.ts). */
export interface BlockRecord {
  /** The blocked user. */
  blockedUserId: string;
  /** When the block was made, in milliseconds since the Unix epoch. */
  blockedAtMs: number;
}

/** A message a reporter's device decrypted and disclosed with a report. */
export interface DisclosedMessageRecord {
  /** Its conversation. */
  conversationId: string;
  /** Its seq there. */
  seq: number;
  /** Its sender as the reporter's device saw it. */
  senderUserId: string;
  /** When the server stored it, in milliseconds since the Unix epoch. */
  sentAtMs: number;
  /** The plaintext (bounded by the accounts service: 4,096 bytes each, 64 KiB a report). */
  text: string;
}

/** A user's report of another user, kept for operators. */
export interface ReportRecord {
  /** "rp_..." (time-ordered: newer ids sort after older ones). */
  reportId: string;
  /** Who reported. */
  reporterUserId: string;
  /** Who was reported. */
  reportedUserId: string;
  /** When, in milliseconds since the Unix epoch. */
  createdAtMs: number;
  /** The reporter's words. */
  reason: string;
  /** The reported message's conversation, or "". */
  conversationId: string;
  /** The reported message's seq, or 0. */
  targetSeq: number;
  /** What the reporter's device disclosed, oldest first. */
  messages: DisclosedMessageRecord[];
}

/**
 * Users' blocks and reports: account data, kept by the accounts store of each engine (the
 * AccountStore includes it).
 */
export interface SafetyStore {
  /**
   * Records that userId blocked blockedUserId at atMs; returns false (nothing written) when it
   * was blocked already. Rejects with StoreError "limit" when userId already has maxBlocks blocks
   * (LMDB checks atomically; ScyllaDB counts before writing, so racing blocks may pass it by a few).
   */
  block(userId: string, blockedUserId: string, atMs: number, maxBlocks: number): Promise<boolean>;
  /** Removes a block; returns whether there was one. */
  unblock(userId: string, blockedUserId: string): Promise<boolean>;
  /** The blocks of a user, by blocked user id; empty for an unknown user. */
  listBlocked(userId: string): Promise<BlockRecord[]>;
  /** Stores a report (its id is new). */
  putReport(report: ReportRecord): Promise<void>;
  /**
   * Reports newest first (by reportId), of one reported user or (undefined) of everyone, at most
   * `limit`; `truncated` when there were more. ScyllaDB lists everyone's from the last 90 days.
   */
  listReports(
    reportedUserId: string | undefined,
    limit: number,
  ): Promise<{ reports: ReportRecord[]; truncated: boolean }>;
}

/** Users, devices and link codes. */
export interface AccountStore extends SafetyStore {
  /**
   * Creates a user with its first device. Rejects with StoreError "already_exists" when the
   * username is taken (atomically: two concurrent registrations of one name, one wins).
   */
  createUser(user: UserRecord, firstDevice: DeviceRecord): Promise<void>;
  /** A user by id. */
  getUser(userId: string): Promise<UserRecord | undefined>;
  /** A user by username. */
  getUserByUsername(username: string): Promise<UserRecord | undefined>;
  /**
   * Replaces a user's display name; returns the user as stored after it, or undefined for an
   * unknown user (nothing is written then).
   */
  setDisplayName(userId: string, displayName: string): Promise<UserRecord | undefined>;
  /**
   * Adds a device to an existing user. Rejects with StoreError "limit" when the user already has
   * maxActiveDevices active devices, and "not_found" for an unknown user; atomically.
   */
  addDevice(device: DeviceRecord, maxActiveDevices: number): Promise<void>;
  /** A device by id, revoked or not. */
  getDevice(deviceId: string): Promise<DeviceRecord | undefined>;
  /** All devices of a user, revoked ones included, oldest first. */
  listDevices(userId: string): Promise<DeviceRecord[]>;
  /**
   * Marks a device revoked at atMs (milliseconds since the Unix epoch); returns the updated
   * record, undefined if unknown. Idempotent.
   */
  revokeDevice(deviceId: string, atMs: number): Promise<DeviceRecord | undefined>;
  /**
   * Sets or clears a device's push registration. With ifCurrentId, only a registration with that
   * id is replaced (a provider's "gone" for an old token must not remove a newer one). Returns
   * false when the device is unknown or the condition did not hold.
   */
  setPush(deviceId: string, push: PushRegistration | undefined, ifCurrentId?: string): Promise<boolean>;
  /** Stores a link code. */
  putLinkCode(code: LinkCodeRecord): Promise<void>;
  /**
   * Consumes a link code: returns it and deletes it atomically, so it is redeemed at most once.
   * Returns undefined when the code is unknown or already used (expiry is the caller's check).
   */
  takeLinkCode(codeHash: string): Promise<LinkCodeRecord | undefined>;
  /**
   * The stored privacy settings of users, by user id. A user who never set any (or an unknown
   * user) maps to an empty record.
   */
  getPrivacy(userIds: readonly string[]): Promise<Map<string, PrivacyRecord>>;
  /**
   * Sets the fields present in changes and keeps the others (a change of one setting never
   * overwrites a concurrent change of another). Returns the stored settings after the write.
   * Rejects with StoreError "not_found" for an unknown user.
   */
  setPrivacy(userId: string, changes: PrivacyRecord): Promise<PrivacyRecord>;
  /** A user's avatar, or undefined when they have none (or do not exist). */
  getAvatar(userId: string): Promise<AvatarRecord | undefined>;
  /**
   * Replaces a user's avatar (undefined: removes it) and returns the one replaced, atomically:
   * of two concurrent calls each returns a different previous avatar, so every replaced object is
   * handed to exactly one caller to delete. Rejects with StoreError "not_found" for an unknown
   * user (when setting; removing from an unknown user returns undefined).
   */
  swapAvatar(userId: string, avatar: AvatarRecord | undefined): Promise<AvatarRecord | undefined>;
  /**
   * Stores a new invite. Rejects with StoreError "already_exists" when the id is taken. An
   * engine may forget an invite 30 days after its expiry (ScyllaDB's TTL); LMDB keeps it.
   */
  putInvite(invite: InviteRecord): Promise<void>;
  /** An invite by id, whatever its state. */
  getInvite(id: string): Promise<InviteRecord | undefined>;
  /**
   * Invites, newest first (by createdAtMs), at most `limit` of them; `truncated` when there
   * were more.
   */
  listInvites(limit: number): Promise<{ invites: InviteRecord[]; truncated: boolean }>;
  /**
   * Marks an invite revoked at atMs (milliseconds since the Unix epoch); returns the updated
   * record, undefined if unknown. Idempotent.
   */
  revokeInvite(id: string, atMs: number): Promise<InviteRecord | undefined>;
  /**
   * Takes one use of an invite, atomically: of concurrent takes, no more succeed than the uses
   * it had left. Refused (nothing written) when the invite is unknown or tokenHash is not its
   * hash ("unknown"), revoked, expired at nowMs (milliseconds since the Unix epoch), or has no use
   * left.
   */
  takeInviteUse(id: string, tokenHash: string, nowMs: number): Promise<InviteTake>;
  /**
   * Gives back one use taken by takeInviteUse whose registration did not happen (the username
   * was taken), atomically with concurrent takes. Does nothing for an unknown invite.
   */
  returnInviteUse(id: string): Promise<void>;
  /**
   * Suspends a user at atMs (milliseconds since the Unix epoch), or lifts the suspension with 0;
   * returns the user after the write, undefined for an unknown user. Suspending a suspended user
   * keeps the first time. Optional for engines that cannot store it: without it an operator
   * cannot suspend (the admin service says so). Both engines here have it.
   */
  setSuspended?(userId: string, atMs: number): Promise<UserRecord | undefined>;
  /**
   * Removes a user: the user, the username (free to register again), every device record and
   * its listing row, and the privacy settings. Returns false for an unknown user. LMDB does it
   * atomically; ScyllaDB row by row, devices first and the user row last, so running it again
   * finishes an interrupted one. Keys, conversations and pushes are the callers' (the admin
   * service's deletion) to remove first. Optional like setSuspended.
   */
  deleteUser?(userId: string): Promise<boolean>;
}
