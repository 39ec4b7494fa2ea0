import type { Entry } from "../../gen/switchboard/v1/entry_pb.js";

/**
 * The storage ports of Switchboard. Every stateful service talks to one of these contracts; the
 * embedded engine (LMDB) and the distributed engine (ScyllaDB) implement them, and one shared
 * conformance suite (services/store/conformance) runs against each.
 *
 * Contract for every method: a promise that resolves means the write is durable (fsync'd for the
 * embedded store, a quorum write for ScyllaDB). Failures reject with a StoreError (errors.ts)
 * when they are a domain condition, or with the driver's error for I/O failures.
 */

/** Direct or group. */
export type ConversationKind = "direct" | "group";

/** A member's role in a conversation. */
export type MemberRole = "member" | "admin";

/** A conversation's metadata. */
export interface ConversationRecord {
  /** The conversation id ("d_..." or "g_..."). */
  id: string;
  /** Direct or group. */
  kind: ConversationKind;
  /** The group's title; empty for direct conversations. */
  title: string;
  /** Creation time, in milliseconds since the Unix epoch. */
  createdAtMs: number;
  /** The seq of the latest membership entry (0 before the first one is written). */
  membersVersion: number;
}

/** A member of a conversation. */
export interface MemberRecord {
  /** The member. */
  userId: string;
  /** Their role. */
  role: MemberRole;
  /** The seq of the membership entry that added them; they may read entries from this seq on. */
  joinedSeq: number;
  /** When they were added, in milliseconds since the Unix epoch. */
  addedAtMs: number;
  /** The highest seq any of their devices acknowledged (user-level delivered receipt). */
  deliveredUpTo: number;
  /** The highest seq they marked read. */
  readUpTo: number;
  /** No push wake-ups for this conversation until then, in milliseconds since the Unix epoch. */
  mutedUntilMs?: number;
}

/** A device's cursors in one conversation. */
export interface DeviceCursor {
  /** The conversation. */
  conversationId: string;
  /** The device. */
  deviceId: string;
  /** Every entry up to this seq was received by the device. */
  deliveredUpTo: number;
  /** Every entry up to this seq was read on the device. */
  readUpTo: number;
}

/** A member's user-level cursors in one conversation. */
export interface MemberCursor {
  /** The conversation. */
  conversationId: string;
  /** The member. */
  userId: string;
  /** The highest seq any of the member's devices acknowledged. */
  deliveredUpTo: number;
  /** The highest seq the member read. */
  readUpTo: number;
}

/**
 * Where a device linked to a user who was already in a conversation starts reading it: the
 * device is served entries after floorSeq only, never the history from before its link.
 */
export interface DeviceFloor {
  /** The conversation. */
  conversationId: string;
  /** The linked device. */
  deviceId: string;
  /** The conversation's last seq when the device was linked. */
  floorSeq: number;
}

/** The idempotency record of one send. */
export interface IdempotencyKey {
  /** The sending device. */
  deviceId: string;
  /** The device's client_msg_id. */
  clientMsgId: string;
  /** The seq the send was committed at. */
  seq: number;
}

/** One membership row of a user, as indexed by user. */
export interface UserConversation {
  /** The conversation. */
  conversationId: string;
  /** The seq from which the user can read the conversation. */
  joinedSeq: number;
}

/**
 * Everything one commit does to one conversation. All parts of all writes passed to one
 * ConversationStore.commit call are applied atomically.
 */
export interface ConversationWrite {
  /** The conversation written to. */
  conversationId: string;
  /** Create or replace the conversation's metadata. */
  conversation?: ConversationRecord;
  /**
   * New log entries, in ascending seq order, continuing the log with no gap: the first entry's
   * seq is the current last seq + 1. The store refuses (StoreError "conflict") a seq that is
   * already written, which is what fences two writers that both believe they own a shard.
   */
  append?: Entry[];
  /** Idempotency records for appended entries. */
  idempotency?: IdempotencyKey[];
  /** Existing entries rewritten in place (tombstones of delete-for-everyone). */
  replace?: Entry[];
  /** Members added, or whose role changed. Also maintains the per-user index. */
  putMembers?: MemberRecord[];
  /** Members removed (by user id). Also maintains the per-user index. */
  removeMembers?: string[];
}

/** Entries a store committed for a writer that did not finish its commit (see onRecovered). */
export interface RecoveredCommit {
  /** The conversation appended to. */
  conversationId: string;
  /** The entries the commit appended, ascending by seq. */
  entries: Entry[];
}

/** The conversation log, membership, idempotency index and cursors. */
export interface ConversationStore {
  /**
   * The bytes of entries (encoded, appended and rewritten) one commit should carry, at most.
   * A caller that can split its work at operation boundaries (a sequencer shard's batches) keeps
   * each commit within it; a single operation larger than it commits alone. Undefined: no bound.
   */
  readonly maxCommitBytes?: number;
  /**
   * Registers a listener told of every commit this store finished for a writer that did not: the
   * writer's process died, or its commit failed after part of it was written (ScyllaDB's recovery
   * of a pending intent). Nobody published those entries' events; the listener does. Engines whose
   * commits are all or nothing (LMDB) never call it and may leave it out. Returns the unsubscribe.
   */
  onRecovered?(listener: (recovered: RecoveredCommit) => void): () => void;
  /**
   * Applies writes atomically and durably. Concurrent calls are group-committed: many callers'
   * writes share one transaction and one fsync.
   */
  commit(writes: ConversationWrite[]): Promise<void>;
  /** The conversation's metadata, or undefined if it does not exist. */
  getConversation(conversationId: string): Promise<ConversationRecord | undefined>;
  /** All members, in no particular order. */
  getMembers(conversationId: string): Promise<MemberRecord[]>;
  /** The seq of the last entry, 0 for an empty or unknown conversation. */
  getLastSeq(conversationId: string): Promise<number>;
  /**
   * The seq of the last entry as an ordinary read sees it: never past what is committed, but it
   * may trail a commit in flight, and it does not finish a commit its writer left pending (which
   * getLastSeq does, and which is what a shard loading a conversation needs). For views of many
   * conversations at once (listings, sync states): on ScyllaDB it is one plain read instead of a
   * LOCAL_SERIAL (Paxos) read that competes with the writers' LWTs.
   */
  peekLastSeq(conversationId: string): Promise<number>;
  /** Entries with seq > afterSeq, ascending, at most limit of them. */
  readEntries(conversationId: string, afterSeq: number, limit: number): Promise<Entry[]>;
  /** The seq committed for (deviceId, clientMsgId) in the conversation, if any. */
  getIdempotency(conversationId: string, deviceId: string, clientMsgId: string): Promise<number | undefined>;
  /** The conversations a user is a member of. */
  listUserConversations(userId: string): Promise<UserConversation[]>;
  /** The cursors of the given devices in a conversation; devices without cursors are left out. */
  getDeviceCursors(conversationId: string, deviceIds: readonly string[]): Promise<DeviceCursor[]>;
  /**
   * Saves cursors. The caller guarantees monotonicity (it only passes higher values); the store
   * writes what it is given. Durable like every write, but never blocks entry commits.
   */
  saveCursors(devices: readonly DeviceCursor[], members: readonly MemberCursor[]): Promise<void>;
  /**
   * Deletes idempotency records written before olderThanMs (milliseconds since the Unix epoch);
   * returns how many were removed.
   */
  expireIdempotency(olderThanMs: number): Promise<number>;
  /**
   * Records where linked devices start reading conversations (writes what it is given; a
   * device is linked once, so its floors are written once). Durable like every write.
   */
  putDeviceFloors(floors: readonly DeviceFloor[]): Promise<void>;
  /** A device's floor in one conversation; undefined when none was recorded. */
  getDeviceFloor(deviceId: string, conversationId: string): Promise<number | undefined>;
  /** Every floor recorded for a device, by conversation id. */
  listDeviceFloors(deviceId: string): Promise<Map<string, number>>;
}

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
 * Later settings (last seen, read receipts) are new optional fields.
 */
export interface PrivacyRecord {
  /** Who may add the user to groups. */
  groupAdd?: PrivacyAudience;
  /** Who may start a new direct conversation with the user. */
  directOpen?: PrivacyAudience;
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

/** The two kinds of one-time prekeys: elliptic-curve (X25519) and Kyber (ML-KEM). */
export type PrekeyKind = "ec" | "kyber";

/** A prekey signed with the device's identity key (the signed EC prekey, the Kyber last resort). */
export interface SignedPrekeyRecord {
  /** The device's id for the key. */
  keyId: number;
  /** The public key, libsignal's serialized form. */
  publicKey: Uint8Array;
  /** The identity key's signature of publicKey. */
  signature: Uint8Array;
  /** When it was uploaded, in milliseconds since the Unix epoch. */
  uploadedAtMs: number;
}

/** A one-time prekey: handed out once, then gone. */
export interface OneTimePrekeyRecord {
  /** The device's id for the key, unique per device and kind. */
  keyId: number;
  /** The public key, libsignal's serialized form. */
  publicKey: Uint8Array;
  /** The identity key's signature of publicKey; Kyber prekeys only. */
  signature?: Uint8Array;
}

/** A device's published keys other than its one-time prekeys. */
export interface DeviceKeysRecord {
  /** The device. */
  deviceId: string;
  /** Its user. */
  userId: string;
  /** libsignal's registration id; never changes for a device. */
  registrationId: number;
  /** The identity public key; never changes for a device. */
  identityKey: Uint8Array;
  /** The current signed EC prekey. */
  signedPrekey: SignedPrekeyRecord;
  /** The current Kyber last-resort prekey (handed out when no one-time Kyber prekey is left). */
  kyberLastResort: SignedPrekeyRecord;
}

/** One-time prekeys a device has left. */
export interface PrekeyCountsRecord {
  /** One-time EC prekeys. */
  ec: number;
  /** One-time Kyber prekeys. */
  kyber: number;
}

/** What one KeyStore.putKeys call writes for one device. */
export interface DeviceKeysWrite {
  /** The device. */
  deviceId: string;
  /** Its user. */
  userId: string;
  /**
   * The identity key the device's record must have. When the device has no record yet, the write
   * creates one with it (and then registrationId, signedPrekey and kyberLastResort are required);
   * when the stored identity key differs, the whole write is refused (StoreError "conflict").
   */
  identityKey: Uint8Array;
  /** The registration id, required with the first write; must equal the stored one afterwards. */
  registrationId: number;
  /** Replaces the signed EC prekey. */
  signedPrekey?: SignedPrekeyRecord;
  /** Replaces the Kyber last-resort prekey. */
  kyberLastResort?: SignedPrekeyRecord;
  /** One-time EC prekeys to add; ids already stored for the device are skipped. */
  oneTimeEc?: OneTimePrekeyRecord[];
  /** One-time Kyber prekeys to add; ids already stored for the device are skipped. */
  oneTimeKyber?: OneTimePrekeyRecord[];
}

/** What one take from a device's one-time prekeys returned. */
export interface PrekeyTake {
  /** The EC prekey handed out, if the device had one left; it is deleted. */
  ec?: OneTimePrekeyRecord;
  /** The Kyber prekey handed out, if the device had one left; it is deleted. */
  kyber?: OneTimePrekeyRecord;
  /** What is left after the take. */
  remaining: PrekeyCountsRecord;
}

/** The end-to-end encryption key directory: public keys only, per device. */
export interface KeyStore {
  /**
   * Writes a device's keys. Refuses, writing nothing, with StoreError "conflict" when the device's
   * stored identity key or registration id differs from the write's (checked atomically with the
   * write, so of two concurrent first uploads with different identities one wins), and with
   * "limit" when the device would then hold more than maxOneTimePerKind one-time prekeys of a
   * kind (ids already stored are skipped, not counted twice). Throws a RangeError for a first
   * write without both signed prekeys. Returns the counts after the write.
   *
   * LMDB applies the whole write atomically. ScyllaDB writes the signed prekeys first and the
   * one-time prekeys after them, and checks the limit before writing, so concurrent uploads of
   * one device may pass it by one batch; a failure in between is completed by a retry.
   */
  putKeys(write: DeviceKeysWrite, maxOneTimePerKind: number): Promise<PrekeyCountsRecord>;
  /** A device's keys, undefined when it never uploaded any (or they were deleted). */
  getKeys(deviceId: string): Promise<DeviceKeysRecord | undefined>;
  /** One-time prekeys the device has left (0 and 0 for an unknown device). */
  countPrekeys(deviceId: string): Promise<PrekeyCountsRecord>;
  /**
   * Hands out and deletes one one-time prekey of each kind of the device, atomically per key:
   * of any number of concurrent takes, each stored key goes to at most one of them. A kind with
   * no key left is absent from the result.
   */
  takePrekeys(deviceId: string): Promise<PrekeyTake>;
  /** Deletes everything stored for the device (its revocation). Idempotent. */
  deleteKeys(deviceId: string): Promise<void>;
}

/** One sequencer shard's lease as the store holds it. */
export interface ShardLease {
  /** The logical shard. */
  shard: number;
  /** The sequencer replica (its ordinal) that serves the shard. */
  owner: number;
  /**
   * The fencing token: one more at every change of holder, and when a holder restarts. A replica
   * serves a shard only under the epoch it took it at; seeing another, it stops at once.
   */
  epoch: number;
}

/**
 * Sequencer shard leases, on a store every replica shares (ScyllaDB). Replicas announce they are
 * alive with heartbeats that expire on their own, and move a shard's lease only by a conditional
 * write on its epoch, so of any number of concurrent moves one wins. The leases decide who serves
 * a shard; the conversation log's own fence (the head row's conditional write) stays the final
 * guard against two writers. services/sequencer/ownership.ts runs the protocol.
 */
export interface ShardLeaseStore {
  /**
   * Records that a replica is alive for the next ttlSeconds. The row may expire up to one second
   * early (the database counts TTLs in whole seconds), which the caller's self-fence allows for.
   */
  heartbeat(ordinal: number, incarnation: string, ttlSeconds: number): Promise<void>;
  /** The ordinals whose heartbeat has not expired. */
  liveReplicas(): Promise<Set<number>>;
  /** Every shard's lease, read linearizably (shards never leased are absent). */
  leases(): Promise<ShardLease[]>;
  /**
   * Moves a shard's lease to `owner` at epoch + 1, if its epoch is still `fromEpoch` (undefined:
   * if the shard was never leased, which creates it at epoch 1). Returns the new lease, or
   * undefined when another move came first. An unknown outcome is read back, never guessed.
   */
  transfer(shard: number, fromEpoch: number | undefined, owner: number): Promise<ShardLease | undefined>;
}

/** A store engine: both ports plus its lifecycle. */
export interface StoreEngine {
  /** The conversation port. */
  conversations: ConversationStore;
  /** The accounts port. */
  accounts: AccountStore;
  /** The key directory port. */
  keys: KeyStore;
  /**
   * Shard leases, on an engine every sequencer replica shares (ScyllaDB); absent on an engine
   * whose files belong to one replica (LMDB), where a shard cannot move.
   */
  leases?: ShardLeaseStore;
  /** Flushes pending writes and releases files or connections. */
  close(): Promise<void>;
}
