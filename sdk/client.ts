import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Device, SetPushTargetRequestSchema, User } from "../gen/switchboard/v1/accounts_pb.js";
import type { AttachmentPointer } from "../gen/switchboard/v1/content_pb.js";
import type { Conversation, Member, MemberRole } from "../gen/switchboard/v1/conversations_pb.js";
import type { Entry } from "../gen/switchboard/v1/entry_pb.js";
import { linkAccount, registerAccount } from "./client/accounts.js";
import { Avatars } from "./client/avatars.js";
import { type MessageLinks, newClientMsgId } from "./client/bodies.js";
import type { Calls } from "./client/calls.js";
import type { ClientContext } from "./client/context.js";
import { clientClosed } from "./client/errors.js";
import { FeatureFlags } from "./client/flags.js";
import type { History } from "./client/history.js";
import { createProfile, openContext } from "./client/open.js";
import { assembleParts, type ClientParts } from "./client/parts.js";
import { Pins } from "./client/pins.js";
import type { Safety } from "./client/safety.js";
import type { ContactSafetyNumber } from "./e2ee.js";
import type { PrivacyChoices } from "./privacy.js";
import type { ProfileStorage } from "./storage/port.js";
import type { ServerConnection } from "./transport.js";
import type {
  ClientEvents,
  IncomingEntry,
  LinkOptions,
  Listener,
  OpenOptions,
  OutgoingAttachment,
  PayloadCodec,
  RegisterOptions,
  SendResult,
} from "./types.js";

export { newClientMsgId };

/** The codec of plaintext profiles (encryption: false): payloads travel as given. */
export const identityCodec: PayloadCodec = {
  async encode(_conversationId, plaintext) {
    return plaintext;
  },
  async decode(entry) {
    switch (entry.body.case) {
      case "message":
      case "edit":
      case "reaction":
        return entry.body.value.payload;
      default:
        return new Uint8Array();
    }
  },
};

/**
 * A Switchboard device: one profile, one stream, ordered delivery, durable sends.
 *
 * Entries reach the app through the "entry" event strictly in seq order per conversation, each
 * exactly once per profile. Sends are written to the profile's outbox before they leave and are
 * retried with the same idempotency key until the server answers, across reconnects and restarts.
 *
 * This class is the face; the work is done by its parts in sdk/client/: the stream loop
 * (stream.ts), the outbox and its retries (outbox.ts), encryption of sends (sealing.ts), what the
 * app sends (sends.ts), the frames from the server (receive.ts), decoding and delivery of entries
 * (decode.ts, delivery.ts), acks (acks.ts), typing and presence (presence.ts), attachments
 * (attachments.ts), history for a newly linked device (history.ts) and the unary calls by
 * service (accounts.ts, conversations.ts).
 */
export class SwitchboardClient {
  private readonly parts: ClientParts;
  private pinsPart: Pins | undefined;
  private flagsPart: FeatureFlags | undefined;
  private avatarsPart: Avatars | undefined;
  private closing: Promise<void> | undefined;

  private constructor(private readonly ctx: ClientContext) {
    this.parts = assembleParts(ctx);
  }

  // ---------------------------------------------------------------------------------------------
  // Creating and opening profiles

  /** Opens an existing profile. Call connect() to start the stream. */
  static async open(options: OpenOptions): Promise<SwitchboardClient> {
    return new SwitchboardClient(await openContext(options, identityCodec));
  }

  /** True when direct conversations are end-to-end encrypted (OpenOptions.encryption). */
  get encrypted(): boolean {
    return this.ctx.e2ee !== undefined;
  }

  /** Registers a new user with this device as its first, writes a new profile and opens it. */
  static async register(options: RegisterOptions): Promise<SwitchboardClient> {
    await createProfile(options, (conn, host) =>
      registerAccount(conn, options.serverUrl, {
        username: options.username,
        displayName: options.displayName ?? "",
        deviceName: options.deviceName ?? host,
        inviteToken: options.inviteToken ?? "",
      }),
    );
    return SwitchboardClient.openPublished(options);
  }

  /** Joins an existing user with a link code from another device; writes a new profile. */
  static async link(options: LinkOptions): Promise<SwitchboardClient> {
    await createProfile(options, (conn, host) =>
      linkAccount(conn, options.serverUrl, { code: options.code, deviceName: options.deviceName ?? host }),
    );
    return SwitchboardClient.openPublished(options);
  }

  /**
   * Opens a new profile and, with encryption, puts the device's keys in the directory at once:
   * nobody can encrypt to a device before, and an app may well send before it connects. If that
   * fails the profile stands and connect() uploads them.
   */
  private static async openPublished(options: OpenOptions): Promise<SwitchboardClient> {
    const client = await SwitchboardClient.open(options);
    if (client.ctx.e2ee !== undefined) {
      try {
        await client.ctx.e2ee.ensureKeys();
      } catch (err) {
        await client.close();
        throw err;
      }
    }
    return client;
  }

  // ---------------------------------------------------------------------------------------------
  // Identity

  /** This user's id. */
  get userId(): string {
    return this.ctx.profile.credentials.userId;
  }

  /** This user's handle. */
  get username(): string {
    return this.ctx.profile.credentials.username;
  }

  /** This device's id. */
  get deviceId(): string {
    return this.ctx.profile.credentials.deviceId;
  }

  /** The profile directory (with the file engine); with another engine, its location. */
  get profileDir(): string {
    return this.ctx.profile.location;
  }

  /** Where the profile is kept (OpenOptions.storage, or the file engine over profileDir). */
  get storage(): ProfileStorage {
    return this.ctx.profile.storage;
  }

  /** True while a stream is up (after ready). */
  get connected(): boolean {
    return this.parts.stream.ready !== undefined;
  }

  /** The local cursors of a conversation (delivered to the app, read). */
  localCursor(conversationId: string): { delivered: bigint; read: bigint } | undefined {
    return this.ctx.profile.cursor(conversationId);
  }

  /** Sends not yet answered by the server (persisted in the outbox). */
  pendingSends(): Array<{ clientMsgId: string; conversationId: string }> {
    return this.parts.queue.pending();
  }

  // ---------------------------------------------------------------------------------------------
  // Events

  /** Adds a listener. */
  on<K extends keyof ClientEvents>(event: K, listener: Listener<ClientEvents[K]>): this {
    this.ctx.events.on(event, listener);
    return this;
  }

  /** Removes a listener. */
  off<K extends keyof ClientEvents>(event: K, listener: Listener<ClientEvents[K]>): this {
    this.ctx.events.off(event, listener);
    return this;
  }

  /** Resolves with the next event of a kind that matches the predicate. */
  waitFor<K extends keyof ClientEvents>(
    event: K,
    predicate: (value: ClientEvents[K]) => boolean = () => true,
  ): Promise<ClientEvents[K]> {
    return this.ctx.events.waitFor(event, predicate);
  }

  // ---------------------------------------------------------------------------------------------
  // Stream lifecycle

  /**
   * Starts the stream (and keeps it up, reconnecting with backoff). Resolves when the server has
   * accepted it for the first time; rejects if the client stops for good first (e.g. revoked).
   * Takes the profile's lock: one streaming process per profile.
   */
  async connect(): Promise<void> {
    if (this.ctx.fatal !== undefined) throw this.ctx.fatal;
    if (this.ctx.closed) throw clientClosed();
    if (!this.parts.stream.started) {
      this.parts.stream.prepare();
      await this.ctx.profile.lock();
      // Closed while the lock was being taken: close() releases it; no stream opens after close.
      if (this.ctx.closed) throw clientClosed();
      this.parts.stream.start();
      // Intents written before a crash, never encrypted: encrypted now, in their order.
      this.parts.sealer.resumeIntents();
    }
    await this.parts.stream.firstAccepted;
    // With encryption, others can reach this device only once its keys are in the directory.
    if (this.ctx.e2ee !== undefined) await this.ctx.e2ee.ensureKeys();
  }

  /**
   * Drops the current stream and connects again at once (for example after the network
   * changed). Nothing is lost: unanswered sends are resent and the server resends unacked entries.
   */
  reconnect(): void {
    this.parts.stream.reconnect();
  }

  /**
   * Stops the client: hands nothing more to the app, acknowledges what it handled, closes the
   * stream and the connection, and releases the profile. Unanswered sends stay in the outbox (they
   * go out on the next connect); their promises reject with Code.Canceled.
   */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    this.ctx.closed = true;
    this.ctx.e2ee?.stopExpirySweep();
    this.parts.stream.wake();
    await this.parts.delivery.drained();
    await this.parts.decoder.retriesSettled();
    await this.parts.acks.flush().catch(() => {});
    await this.parts.stream.finish();
    // Before the connection and the profile go: listeners that write to the profile finish here,
    // within a grace period, so a listener that never settles cannot hold close() forever.
    let grace: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      this.ctx.events.emitAndWait("closing", {}),
      new Promise<void>((resolve) => {
        grace = setTimeout(resolve, this.ctx.tuning.closingGraceMs);
      }),
    ]);
    clearTimeout(grace);
    await this.ctx.profile.settled();
    this.parts.reorder.pause();
    this.parts.acks.dispose();
    const canceled = new ConnectError("client closed before the server answered", Code.Canceled);
    this.parts.queue.abandon(canceled);
    this.parts.stream.rejectFirst(canceled);
    this.ctx.conn.close();
    await this.ctx.profile.flushCursors().catch(() => {});
    await this.ctx.profile.unlock();
  }

  /** Marks a conversation read up to a seq (cumulative); members see a read receipt. */
  markRead(conversationId: string, seq: bigint | number): void {
    this.parts.acks.markRead(conversationId, seq);
  }

  /** Turns a log entry into what the app sees, decoding its payload. */
  toIncoming(raw: Entry): Promise<IncomingEntry> {
    return this.parts.decoder.toIncoming(raw);
  }

  // ---------------------------------------------------------------------------------------------
  // Sending

  /**
   * Sends a message; resolves when the server has stored it durably (one tick). `replyTo` names
   * the entry it replies to and `mentions` the users (ids) to wake even if they muted the
   * conversation: both travel in clear beside the encrypted content (docs/protocol.md).
   */
  send(
    conversationId: string,
    payload: Uint8Array | string,
    options: { clientMsgId?: string } & MessageLinks = {},
  ): Promise<SendResult> {
    return this.parts.sends.send(conversationId, payload, options.clientMsgId, options);
  }

  /** Replaces the payload of one of this user's earlier messages. */
  edit(
    conversationId: string,
    targetSeq: bigint | number,
    payload: Uint8Array | string,
    options: { clientMsgId?: string } = {},
  ): Promise<SendResult> {
    return this.parts.sends.targeted("edit", conversationId, targetSeq, payload, options.clientMsgId);
  }

  /** Reacts to a message; an empty payload removes this user's reaction. */
  react(
    conversationId: string,
    targetSeq: bigint | number,
    payload: Uint8Array | string,
    options: { clientMsgId?: string } = {},
  ): Promise<SendResult> {
    return this.parts.sends.targeted("reaction", conversationId, targetSeq, payload, options.clientMsgId);
  }

  /**
   * Deletes a message for everyone. `attachments`: the message's attachments (its pointers, as
   * sent or received), deleted from the media store once the delete is in the log; the server
   * cannot see which objects a message carries, so it deletes only what is named here, and only
   * this user's own uploads (MediaService.DeleteAttachments; docs/media.md). Without them they go
   * with the server's retention.
   */
  async deleteForEveryone(
    conversationId: string,
    targetSeq: bigint | number,
    options: { clientMsgId?: string; attachments?: ReadonlyArray<{ objectId: string }> } = {},
  ): Promise<SendResult> {
    const result = await this.parts.sends.deleteForEveryone(conversationId, targetSeq, options.clientMsgId);
    const objectIds = [...new Set((options.attachments ?? []).map((a) => a.objectId))];
    if (objectIds.length > 0) await this.ctx.conn.media.deleteAttachments({ conversationId, objectIds });
    return result;
  }

  /**
   * Sends one message without the stream (GatewayService.Send), for scripts and integrations.
   * Retries transient failures with the same idempotency key; not written to the outbox.
   */
  sendUnary(
    conversationId: string,
    payload: Uint8Array | string,
    options: { clientMsgId?: string; attempts?: number } & MessageLinks = {},
  ): Promise<SendResult> {
    return this.parts.sends.unary(conversationId, payload, options);
  }

  // ---------------------------------------------------------------------------------------------
  // Calls

  /**
   * Voice and video calls' signalling (docs/calls.md), end-to-end encrypted per device; steps
   * arrive as "call" events. Encryption mode only; media is the app's WebRTC stack's.
   */
  get calls(): Pick<
    Calls,
    | "start"
    | "offerTo"
    | "iceServers"
    | "ringing"
    | "accept"
    | "decline"
    | "hangUp"
    | "sendCandidates"
    | "startGroup"
    | "join"
    | "leave"
    | "offerPeer"
    | "answerPeer"
  > {
    return this.parts.calls;
  }

  // ---------------------------------------------------------------------------------------------
  // History for a newly linked device

  /**
   * `sendTo(deviceId, { days })` hands another device of this user this device's recent history,
   * end-to-end encrypted; the receiving device imports it by itself ("historyImported" or
   * "historyRefused") and `entries(conversationId)` lists what it imported. docs/encryption.md.
   */
  get history(): Pick<History, "sendTo" | "entries" | "receivePending" | "settled"> {
    return this.parts.history;
  }

  // ---------------------------------------------------------------------------------------------
  // Typing and presence

  /**
   * Tells the conversation this user started (true) or stopped (false) typing. Receivers expire
   * an indicator after 10 s, so repeat true every few seconds while typing. Dropped when offline.
   */
  setTyping(conversationId: string, active: boolean): void {
    this.parts.presence.setTyping(conversationId, active);
  }

  /** Follows users' presence (each must share a conversation with this user); kept across reconnects. */
  subscribePresence(userIds: readonly string[]): void {
    this.parts.presence.subscribe(userIds);
  }

  /** Stops following users' presence. */
  unsubscribePresence(userIds: readonly string[]): void {
    this.parts.presence.unsubscribe(userIds);
  }

  // ---------------------------------------------------------------------------------------------
  // Attachments (end-to-end encrypted)

  /**
   * Sends a file: encrypts it with a fresh key (AES-256-GCM), uploads the ciphertext straight to
   * the media store through a presigned URL, sends the pointer, key and digest inside an end-to-end
   * encrypted message, then claims the object for the conversation. Needs encryption.
   */
  sendAttachment(
    conversationId: string,
    file: OutgoingAttachment,
    options: { caption?: string | Uint8Array; clientMsgId?: string } = {},
  ): Promise<SendResult & { attachment: AttachmentPointer }> {
    return this.parts.attachments.send(conversationId, file, options);
  }

  /**
   * Encrypts and uploads a file; the pointer to send (with its key) is returned. A `path` is
   * encrypted and uploaded streaming, through a temporary file of ciphertext, so its size does not
   * bound memory; `data` is handled in memory.
   */
  uploadAttachment(conversationId: string, file: OutgoingAttachment): Promise<AttachmentPointer> {
    return this.parts.attachments.upload(conversationId, file);
  }

  /**
   * Downloads an attachment of a message in the conversation, checks its digest and decrypts it.
   * Throws AttachmentError ("digest", "authentication", "format") when the bytes are not the
   * sender's. Without `path` the plaintext is returned; with it, the download streams through a
   * temporary file of ciphertext and the plaintext is written to `path` atomically, never
   * unverified, in constant memory.
   */
  async downloadAttachment(conversationId: string, attachment: AttachmentPointer): Promise<Uint8Array>;
  async downloadAttachment(
    conversationId: string,
    attachment: AttachmentPointer,
    options: { path: string },
  ): Promise<undefined>;
  async downloadAttachment(
    conversationId: string,
    attachment: AttachmentPointer,
    options?: { path: string },
  ): Promise<Uint8Array | undefined> {
    return this.parts.attachments.download(conversationId, attachment, options);
  }

  // ---------------------------------------------------------------------------------------------
  // Identity of contacts

  /**
   * The safety numbers of this user and another, one per device of theirs (each device has its own
   * identity key), as people compare them out of band. A device never contacted is fetched from the
   * key directory first (which opens a session with it).
   */
  async safetyNumbers(peerUserId: string): Promise<ContactSafetyNumber[]> {
    return this.ctx.requireE2ee().safetyNumbers(peerUserId);
  }

  /**
   * Marks a contact device's identity key as verified, the one its safety number shows (its
   * changes are then refused). After such a refused change (`identityChanged` true in
   * safetyNumbers) this is the one way to accept the new key: call it once the user compared the
   * new number with the contact's; the device's old session goes and messages resume.
   */
  async verifyContact(peerUserId: string, peerDeviceId: string): Promise<void> {
    await this.ctx.requireE2ee().verify({ userId: peerUserId, deviceId: peerDeviceId });
  }

  // ---------------------------------------------------------------------------------------------
  // Unary APIs

  /** The raw generated clients, for calls this class does not wrap. */
  get api(): Pick<ServerConnection, "accounts" | "conversations" | "gateway" | "keys"> {
    return {
      accounts: this.ctx.conn.accounts,
      conversations: this.ctx.conn.conversations,
      gateway: this.ctx.conn.gateway,
      keys: this.ctx.conn.keys,
    };
  }

  /** Looks users up by id and/or username; unknown ones are left out. */
  lookupUsers(query: { userIds?: readonly string[]; usernames?: readonly string[] }): Promise<User[]> {
    return this.parts.accounts.lookupUsers(query);
  }

  /** One user by username; NOT_FOUND if there is none. */
  userByUsername(username: string): Promise<User> {
    return this.parts.accounts.userByUsername(username);
  }

  /** Issues a one-time code with which another device joins this user. */
  createLinkCode(): Promise<{ code: string; expiresAtMs: bigint }> {
    return this.parts.accounts.createLinkCode();
  }

  /**
   * Registers where this device gets push wake-ups while offline (replacing any earlier target):
   * `{ case: "webPush", value: { endpoint, p256dh, auth } }` from a PushSubscription,
   * `{ case: "fcm", value: { token } }`, or `{ case: "apns", value: { token, topic, environment } }`.
   */
  setPushTarget(target: MessageInitShape<typeof SetPushTargetRequestSchema>["target"]): Promise<void> {
    return this.parts.accounts.setPushTarget(target);
  }

  /** Stops push wake-ups to this device. */
  removePushTarget(): Promise<void> {
    return this.parts.accounts.removePushTarget();
  }

  /**
   * Blocking and reporting: `block(userId)`, `unblock(userId)`, `blocked()` (from any of this
   * user's devices) and `report(userId, { reason, conversationId, targetSeq, disclose })`.
   */
  get safety(): Safety {
    return this.parts.safety;
  }

  /**
   * Pinned messages: `pin(conversationId, seq)` and `unpin(...)` (log entries, through the outbox;
   * group admins, or either member of a direct conversation), `list(conversationId)` (what is
   * pinned now, from the server).
   */
  get pins(): Pins {
    this.pinsPart ??= new Pins(
      this.parts.queue,
      (id, body, clientMsgId) => this.parts.sends.bodyUnary(id, body, clientMsgId),
      (id) => this.parts.conversations.getConversation(id),
    );
    return this.pinsPart;
  }

  /**
   * Feature flags: this user's variant of each flag the server is configured with, the same on
   * every device (`variant(flag)`, `all()`); cached for the time the server says.
   */
  get flags(): FeatureFlags {
    this.flagsPart ??= new FeatureFlags(this.ctx.conn);
    return this.flagsPart;
  }

  /**
   * Profile avatars: `set(picture)`, `remove()`, `of(userId)`. Encrypted on this device; who may
   * download one is the owner's `profile` privacy setting (docs/encryption.md, "Avatars").
   */
  get avatars(): Avatars {
    this.avatarsPart ??= new Avatars(this.ctx);
    return this.avatarsPart;
  }

  /** This user's privacy settings as in force (the server's defaults where never set). */
  getPrivacy(): Promise<PrivacyChoices> {
    return this.parts.accounts.getPrivacy();
  }

  /**
   * Changes some of this user's privacy settings (who may add them to groups, who may start a
   * direct conversation with them, who sees their last seen, whether read receipts are on);
   * settings not given keep their value. Returns all of them.
   */
  setPrivacy(changes: Partial<PrivacyChoices>): Promise<PrivacyChoices> {
    return this.parts.accounts.setPrivacy(changes);
  }

  /**
   * Changes this user's display name (1 to 64 characters). Others see it as the `profile`
   * privacy setting allows; to anyone else the display name is the username, as if never set.
   */
  setDisplayName(displayName: string): Promise<User> {
    return this.parts.accounts.setDisplayName(displayName);
  }

  /** This user's devices. */
  listDevices(includeRevoked = false): Promise<Device[]> {
    return this.parts.accounts.listDevices(includeRevoked);
  }

  /** Revokes one of this user's devices. */
  revokeDevice(deviceId: string): Promise<Device | undefined> {
    return this.parts.accounts.revokeDevice(deviceId);
  }

  /** The direct conversation with another user (created on first use). */
  openDirect(peerUserId: string): Promise<Conversation> {
    return this.parts.conversations.openDirect(peerUserId);
  }

  /** Creates a group with this user as admin. */
  createGroup(title: string, memberUserIds: readonly string[] = []): Promise<Conversation> {
    return this.parts.conversations.createGroup(title, memberUserIds);
  }

  /** Adds members to a group (admins only); returns the membership entry, if any was written. */
  addMembers(conversationId: string, userIds: readonly string[]): Promise<Entry | undefined> {
    return this.parts.conversations.addMembers(conversationId, userIds);
  }

  /** Removes members from a group (admins only). */
  removeMembers(conversationId: string, userIds: readonly string[]): Promise<Entry | undefined> {
    return this.parts.conversations.removeMembers(conversationId, userIds);
  }

  /** Leaves a group. */
  leaveGroup(conversationId: string): Promise<Entry | undefined> {
    return this.parts.conversations.leaveGroup(conversationId);
  }

  /** Changes members' roles (admins only). */
  setRole(conversationId: string, userIds: readonly string[], role: MemberRole): Promise<Entry | undefined> {
    return this.parts.conversations.setRole(conversationId, userIds, role);
  }

  /** Renames a group (admins only). */
  renameGroup(conversationId: string, title: string): Promise<Entry | undefined> {
    return this.parts.conversations.renameGroup(conversationId, title);
  }

  /** This user's conversations, most recently active first. */
  listConversations(): Promise<Conversation[]> {
    return this.parts.conversations.listConversations();
  }

  /** One conversation with its members. */
  getConversation(conversationId: string): Promise<{ conversation: Conversation; members: Member[] }> {
    return this.parts.conversations.getConversation(conversationId);
  }

  /** Mutes a conversation's push wake-ups until a time (ms since the epoch); 0 unmutes. */
  setMute(conversationId: string, mutedUntilMs: bigint | number): Promise<void> {
    return this.parts.conversations.setMute(conversationId, mutedUntilMs);
  }

  /**
   * Sets a conversation's disappearing-message timer: DISAPPEARING.off (0), .day, .week or
   * .ninetyDays, in seconds. Messages sent after it disappear that long after they were sent,
   * from the server and from every device. adminsOnly (groups, admins only): only admins may
   * change it from now on. Returns the timer entry, or undefined when it was already so.
   */
  setDisappearingTimer(
    conversationId: string,
    durationSeconds: number,
    options: { adminsOnly?: boolean } = {},
  ): Promise<Entry | undefined> {
    return this.parts.conversations.setDisappearingTimer(
      conversationId,
      durationSeconds,
      options.adminsOnly ?? false,
    );
  }

  /** A page of a conversation's log, decoded. */
  getHistory(
    conversationId: string,
    options: { afterSeq?: bigint | number; limit?: number } = {},
  ): Promise<{ entries: IncomingEntry[]; lastSeq: bigint; hasMore: boolean }> {
    return this.parts.conversations.getHistory(conversationId, options);
  }
}
