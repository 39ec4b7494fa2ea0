import type { RetryRequest } from "../gen/switchboard/v1/content_pb.js";
import type { DeviceCiphertext, Entry } from "../gen/switchboard/v1/entry_pb.js";
import type { DeviceMismatch } from "../gen/switchboard/v1/gateway_pb.js";
import { GroupCipher } from "./crypto/groups.js";
import type { RemainingPrekeys } from "./crypto/keys.js";
import { PairwiseCipher } from "./crypto/pairwise.js";
import { type DeviceRef, type IdentityChangeEvent, SignalStores } from "./crypto/stores.js";
import { bundleFetcher, DeviceDirectory } from "./e2ee/devices.js";
import { Decryptor } from "./e2ee/incoming.js";
import { KeyUpkeep } from "./e2ee/key-upkeep.js";
import { type SealedPart, Sealer } from "./e2ee/outgoing.js";
import { type ConversationInfo, Recipients } from "./e2ee/recipients.js";
import { RetryRequests } from "./e2ee/retries.js";
import type { ContactSafetyNumber, DevicesChangedEvent } from "./e2ee/types.js";
import { Verification } from "./e2ee/verification.js";
import { storageAt } from "./storage/file.js";
import type { ProfileStorage } from "./storage/port.js";
import type { ServerConnection } from "./transport.js";

export {
  checkContext,
  contentKindOf,
  KEYS_ONLY_PAYLOAD_TYPE,
  PAIRWISE_PAYLOAD_TYPE,
  parseSealed,
  SENDER_KEY_PAYLOAD_TYPE,
} from "./e2ee/content.js";
export { MAX_MISMATCH_RETRIES, type SealedPart } from "./e2ee/outgoing.js";
export { RETRY_INTERVAL_MS } from "./e2ee/retries.js";
export type { ContactSafetyNumber, DevicesChangedEvent } from "./e2ee/types.js";

/**
 * The client's end-to-end encryption: keys in the key directory; direct conversations encrypted
 * per device over pairwise Signal sessions; groups encrypted once with this device's sender key,
 * handed to the members' devices over those sessions and rotated when the membership changes;
 * and the plaintexts of decrypted entries kept in the profile (`e2ee/plaintexts/`),
 * since a ciphertext can be decrypted only once. Every plaintext is a SealedContent.
 *
 * A facade over parts with one job each, in ./e2ee/: key-upkeep.ts (this device's keys in the
 * directory), devices.ts (the devices encrypted for, per user), recipients.ts (who a
 * conversation's content is for; membership rotations), outgoing.ts (sealing and fan-out per
 * device), incoming.ts (decryption and the kept plaintexts), retries.ts (retry requests for sender
 * keys), verification.ts (safety numbers), content.ts (payload types and content binding).
 */
export class E2ee {
  /** Told when the devices encrypted for of a user change. */
  onDevicesChanged: (event: DevicesChangedEvent) => void = () => {};
  private readonly keyUpkeep: KeyUpkeep;
  private readonly recipients: Recipients;
  private readonly sealer: Sealer;
  private readonly decryptor: Decryptor;
  private readonly retries: RetryRequests;
  private readonly verification: Verification;

  private constructor(
    readonly stores: SignalStores,
    readonly cipher: PairwiseCipher,
    readonly groups: GroupCipher,
    self: DeviceRef,
    conn: ServerConnection,
    private readonly devices: DeviceDirectory,
    decryptor: Decryptor,
  ) {
    this.keyUpkeep = new KeyUpkeep(stores, conn.keys);
    this.recipients = new Recipients(self, conn, devices, groups);
    this.sealer = new Sealer(cipher, groups, this.keyUpkeep, devices, this.recipients);
    this.decryptor = decryptor;
    this.retries = new RetryRequests(self, this.recipients, groups);
    this.verification = new Verification(stores, cipher, groups, self, devices);
  }

  /** Opens the encryption state of a profile (a directory, or the storage engine it lives in). */
  static async open(
    profile: string | ProfileStorage,
    self: DeviceRef,
    conn: ServerConnection,
    onIdentityChange: (event: IdentityChangeEvent) => void,
    signedPrekeyMaxAgeMs?: number,
  ): Promise<E2ee> {
    const storage = storageAt(profile);
    const stores = await SignalStores.open(storage, { onIdentityChange });
    const cipher = new PairwiseCipher(stores, self, bundleFetcher(conn.keys));
    let e2ee: E2ee | undefined;
    // The app sets onDevicesChanged after open: the directory tells whatever is set at the time.
    const devices = await DeviceDirectory.open(storage, stores, cipher, self, conn.keys, (event) =>
      e2ee?.onDevicesChanged(event),
    );
    const groups = await GroupCipher.open(stores, self);
    const decryptor = await Decryptor.open(storage, cipher, groups, self, devices);
    e2ee = new E2ee(stores, cipher, groups, self, conn, devices, decryptor);
    if (signedPrekeyMaxAgeMs !== undefined) e2ee.signedPrekeyMaxAgeMs = signedPrekeyMaxAgeMs;
    return e2ee;
  }

  // -------------------------------------------------------------------------------------------
  // Keys in the directory (./e2ee/key-upkeep.ts)

  /** See OpenOptions.signedPrekeyMaxAgeMs (milliseconds). */
  get signedPrekeyMaxAgeMs(): number {
    return this.keyUpkeep.signedPrekeyMaxAgeMs;
  }

  set signedPrekeyMaxAgeMs(ms: number) {
    this.keyUpkeep.signedPrekeyMaxAgeMs = ms;
  }

  /**
   * Uploads the device's first keys if it has none on the server, or tops up one-time prekeys
   * when they run low. Called when a stream opens; concurrent calls share one run.
   */
  ensureKeys(): Promise<void> {
    return this.keyUpkeep.ensureKeys();
  }

  /**
   * ensureKeys for calls without a stream (sendUnary, getHistory): a device that never streams
   * must top up its one-time prekeys too. At most once a minute per process.
   */
  ensureKeysSoon(): Promise<void> {
    return this.keyUpkeep.ensureKeysSoon();
  }

  /** Uploads one-time prekeys up to the targets (on a prekeys_low frame or low counts). */
  replenish(remaining: RemainingPrekeys): Promise<void> {
    return this.keyUpkeep.replenish(remaining);
  }

  // -------------------------------------------------------------------------------------------
  // Conversations and devices (./e2ee/recipients.ts, ./e2ee/devices.ts)

  /** Whether a conversation is direct (pairwise encrypted), and its peer; cached for good. */
  conversation(conversationId: string): Promise<ConversationInfo> {
    return this.recipients.conversation(conversationId);
  }

  /**
   * A group's membership changed (an entry of the log): the member list is read again, and our
   * sender key is rotated when someone left or was removed, or joined. Done once per entry, durably.
   */
  membershipChanged(entry: Entry): Promise<void> {
    return this.recipients.membershipChanged(entry);
  }

  /**
   * True when this device has encrypted with the user before (it knows devices of theirs with
   * keys, or has exchanged pairwise messages with one): plaintext from them is suspicious.
   */
  encryptsWith(userId: string): boolean {
    return this.devices.encryptsWith(userId);
  }

  // -------------------------------------------------------------------------------------------
  // Sending (./e2ee/outgoing.ts)

  /**
   * Encrypts a SealedContent for a conversation: one part in a direct conversation (a ciphertext
   * per device); in a group, the content encrypted once with our sender key plus our sender key
   * for every recipient device that lacks it, split into keys-only parts first when the
   * distribution does not fit in `maxBytes` with the content.
   */
  seal(
    conversationId: string,
    content: Uint8Array,
    maxBytes: number,
    options: { freshMembers?: boolean } = {},
  ): Promise<SealedPart[]> {
    return this.sealer.seal(conversationId, content, maxBytes, options);
  }

  /**
   * Keys-only parts handing our current sender key of a group to the member devices that lack it
   * (after a retry request), or none when every device holds it.
   */
  sealKeysOnly(groupId: string, maxBytes: number): Promise<SealedPart[]> {
    return this.sealer.sealKeysOnly(groupId, maxBytes);
  }

  /** Our sender key reached these devices (their send was acknowledged). */
  keyDistributed(distributed: SealedPart["distributed"]): Promise<void> {
    return this.sealer.keyDistributed(distributed);
  }

  /**
   * Encrypts a plaintext for every device of the peer and every other device of this user, as
   * far as this device knows them (a user seen for the first time is fetched in full).
   */
  encrypt(peerUserId: string, plaintext: Uint8Array): Promise<DeviceCiphertext[]> {
    return this.sealer.encrypt(peerUserId, plaintext);
  }

  /**
   * Applies a DeviceMismatch: missing devices are added (their sessions open on the next
   * encrypt), extra ones forgotten with their sessions, stale ones re-keyed from a new bundle.
   */
  applyMismatch(mismatch: DeviceMismatch, conversationId?: string): Promise<void> {
    return this.sealer.applyMismatch(mismatch, conversationId);
  }

  // -------------------------------------------------------------------------------------------
  // Receiving, and the kept plaintexts (./e2ee/incoming.ts)

  /**
   * The plaintext of a message, edit or reaction entry with device payloads. Durable in the
   * profile before this resolves, so a crash before the ack only means a redelivery that is
   * answered from the profile.
   */
  decode(entry: Entry): Promise<Uint8Array> {
    return this.decryptor.decode(entry);
  }

  /** Keeps the plaintext of a send of this device, for its own entry when it comes back. */
  rememberSent(clientMsgId: string, plaintext: Uint8Array): Promise<void> {
    return this.decryptor.rememberSent(clientMsgId, plaintext);
  }

  /** True when the entry was decrypted before (its plaintext is kept). */
  hasDecoded(entry: Entry): boolean {
    return this.decryptor.hasDecoded(entry);
  }

  /** True when this device kept the plaintext of an encrypted send with this client_msg_id. */
  hasSent(clientMsgId: string): boolean {
    return this.decryptor.hasSent(clientMsgId);
  }

  /** Deletes the kept plaintexts of entries that disappeared by nowMs; returns how many. */
  forgetExpired(nowMs: number): Promise<number> {
    return this.decryptor.forgetExpired(nowMs);
  }

  private expirySweep: ReturnType<typeof setInterval> | undefined;

  /**
   * Deletes kept plaintexts as their entries disappear: now, then every intervalMs while the
   * client is open (an entry also goes as soon as the server serves it as expired).
   */
  async startExpirySweep(onError: (err: unknown) => void, intervalMs = 60_000): Promise<void> {
    await this.forgetExpired(Date.now());
    this.expirySweep ??= setInterval(() => {
      this.forgetExpired(Date.now()).catch(onError);
    }, intervalMs);
    // A sweep alone never keeps a process alive (Node; browsers have no unref).
    (this.expirySweep as { unref?: () => void }).unref?.();
  }

  /** Stops the sweep (the client is closing). */
  stopExpirySweep(): void {
    clearInterval(this.expirySweep);
    this.expirySweep = undefined;
  }

  /** Deletes what this device kept of an entry the server served as expired. */
  forgetEntry(conversationId: string, seq: bigint): Promise<void> {
    return this.decryptor.forgetEntry(conversationId, seq);
  }

  // -------------------------------------------------------------------------------------------
  // Retry requests (./e2ee/retries.ts)

  /**
   * After a group entry failed to decrypt: the retry request to send to its sending device (over
   * the direct conversation with its user), or undefined when none is due (at most once per
   * sending device and group every RETRY_INTERVAL_MS).
   */
  retryFor(entry: Entry, err: Error): RetryRequest | undefined {
    return this.retries.retryFor(entry, err);
  }

  /**
   * A retry request from another device (authenticated by the pairwise session it came in): true
   * when honoured, and the next group send (or sealKeysOnly) hands our sender key over again.
   */
  retryRequested(requester: DeviceRef, request: RetryRequest): Promise<boolean> {
    return this.retries.retryRequested(requester, request);
  }

  // -------------------------------------------------------------------------------------------
  // Identity (./e2ee/verification.ts)

  /** Safety numbers with each device of a contact (fetched from the directory on first contact). */
  safetyNumbers(peerUserId: string): Promise<ContactSafetyNumber[]> {
    return this.verification.safetyNumbers(peerUserId);
  }

  /**
   * Marks a contact device's identity key as verified: the one its safety number shows. After a
   * refused change that is the new key, which is accepted.
   */
  verify(device: DeviceRef): Promise<void> {
    return this.verification.verify(device);
  }
}
