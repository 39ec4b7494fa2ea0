import { join } from "node:path";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { type Client, Code, ConnectError } from "@connectrpc/connect";
import {
  ContentKind,
  type RetryRequest,
  RetryRequestSchema,
  type SealedContent,
  SealedContentSchema,
} from "../gen/switchboard/v1/content_pb.js";
import { ConversationKind } from "../gen/switchboard/v1/conversations_pb.js";
import {
  type DeviceCiphertext,
  DeviceCiphertextSchema,
  type Entry,
  MembershipAction,
} from "../gen/switchboard/v1/entry_pb.js";
import type { DeviceMismatch } from "../gen/switchboard/v1/gateway_pb.js";
import type { KeyService } from "../gen/switchboard/v1/keys_pb.js";
import { JsonDoc, RecordDir } from "./crypto/files.js";
import { GroupCipher, GroupDecryptError } from "./crypto/groups.js";
import {
  generateInitialKeys,
  type RemainingPrekeys,
  replenishPrekeys,
  rotateSignedPrekeys,
  SIGNED_PREKEY_MAX_AGE_MS,
  signedPrekeyNeedsRotation,
} from "./crypto/keys.js";
import { DecryptError, DevicesWithoutKeysError, PairwiseCipher } from "./crypto/pairwise.js";
import { safetyNumber } from "./crypto/safety.js";
import { type DeviceRef, type IdentityChangeEvent, SignalStores } from "./crypto/stores.js";
import type { ServerConnection } from "./transport.js";

/** How many times a send refused for mismatched devices is re-encrypted before it fails. */
export const MAX_MISMATCH_RETRIES = 3;

/** libsignal's CiphertextMessageType of a sender-key message: MessageBody.payload_type of groups. */
export const SENDER_KEY_PAYLOAD_TYPE = 7;

/** MessageBody.payload_type of a direct message whose content is only in device_payloads. */
export const PAIRWISE_PAYLOAD_TYPE = 2;

/**
 * MessageBody.payload_type of a group send that only hands out our sender key (device_payloads)
 * ahead of the message, when the keys do not fit beside it. Its payload is the plain marker
 * below, not a sender-key ciphertext: a device whose key comes in a later part could not decrypt
 * one, and the marker says nothing the device payloads do not.
 */
export const KEYS_ONLY_PAYLOAD_TYPE = 1;

const KEYS_ONLY_MARKER = toBinary(SealedContentSchema, create(SealedContentSchema, { keysOnly: true }));

/**
 * How often this device asks one sending device, per group, to hand its sender key over again
 * after a failure, and how often it answers one requesting device per group: a corrupted or
 * withheld key distribution heals at the cost of at most one pairwise message per minute and pair.
 */
export const RETRY_INTERVAL_MS = 60_000;
/** Pairs (device, group) remembered for RETRY_INTERVAL_MS; the oldest are forgotten beyond. */
const RETRY_MEMORY = 10_000;
/** A stream-less call (sendUnary, getHistory) checks the device's prekeys at most this often. */
const KEYS_CHECK_INTERVAL_MS = 60_000;

/** A contact's devices as this device encrypts for them changed. */
export interface DevicesChangedEvent {
  /** The contact (or this user, for its other devices). */
  userId: string;
  /** Devices added to the ones this device encrypts for. */
  added: string[];
  /** Devices no longer encrypted for (revoked, or reinstalled and reported stale). */
  removed: string[];
  /**
   * True when the user verified one of this contact's devices: a device they did not verify now
   * receives what is sent to them, and they should compare its safety number.
   */
  verifiedContact: boolean;
}

/** The devices this device encrypts for, per user, as last learned (`<profile>/e2ee/devices.json`). */
interface KnownDevicesFile {
  version: 1;
  /** A user is listed once its devices were fetched in full at least once. */
  users: Record<string, string[]>;
  /**
   * Per group, the seq of the last membership entry whose key rotation is done: entries are seen
   * again (redelivery, history) and must not rotate twice.
   */
  membershipSeqs?: Record<string, string>;
}

/** A direct conversation is encrypted pairwise for its peer's devices; a group with sender keys. */
type ConversationInfo = { direct: true; peerUserId: string } | { direct: false };

/** One send of an encrypted message: its body's fields, and what to remember about it. */
export interface SealedPart {
  /** The SealedContent this part carries, kept so this device can read its own entry back. */
  content: Uint8Array;
  /** MessageBody.payload: the sender-key ciphertext in a group, empty in a direct conversation. */
  payload: Uint8Array;
  /** MessageBody.payload_type. */
  payloadType: number;
  /** One entry per recipient device (an empty ciphertext for a group device holding our key). */
  devicePayloads: DeviceCiphertext[];
  /** A part that only hands out sender keys (sent before the content when they do not fit in one). */
  keysOnly: boolean;
  /** The devices this part hands our sender key to, marked as holding it once it is acknowledged. */
  distributed?: { groupId: string; devices: DeviceRef[]; epoch: number };
}

/** The safety number of this user and one device of a contact. */
export interface ContactSafetyNumber {
  /** The contact's device. */
  deviceId: string;
  /** 60 digits, the same on both sides. */
  digits: string;
  /** The digits in 12 groups of 5. */
  display: string;
  /** True once marked verified for the key these digits were computed from. */
  verified: boolean;
  /**
   * True when the device presented a new identity key after it was verified: the digits are
   * those of the new key, the old verification no longer holds, and nothing is sent to or
   * decrypted from the device until the user compares them and accepts with verifyContact.
   */
  identityChanged: boolean;
}

/** Room left for a keys-only part's marker payload when splitting a key distribution. */
const KEYS_ONLY_PAYLOAD_ROOM = 16;

/** The ContentKind of an entry's body. */
export function contentKindOf(bodyCase: string | undefined): ContentKind {
  switch (bodyCase) {
    case "message":
      return ContentKind.MESSAGE;
    case "edit":
      return ContentKind.EDIT;
    case "reaction":
      return ContentKind.REACTION;
    default:
      return ContentKind.UNSPECIFIED;
  }
}

/**
 * Refuses content encrypted for another conversation, kind of entry or target than the entry
 * carrying it (a server copying a direct message's ciphertext into a group entry, an edit into a
 * message, one group's message into another): DecryptError "wrong-context".
 */
export function checkContext(content: SealedContent, entry: Entry): void {
  const sender = { userId: entry.senderUserId, deviceId: entry.senderDeviceId };
  const body = entry.body;
  const direct = entry.conversationId.startsWith("d_");
  if (content.conversationId !== entry.conversationId) {
    throw new DecryptError(
      sender,
      "wrong-context",
      `the content was encrypted for conversation ${content.conversationId || "(none)"}, not ${entry.conversationId}; ` +
        "the server moved it (refused)",
    );
  }
  if (content.kind === ContentKind.CONTROL && direct && body.case === "message") return;
  const kind = contentKindOf(body.case);
  if (content.kind !== kind) {
    throw new DecryptError(
      sender,
      "wrong-context",
      `the content was encrypted for ${ContentKind[content.kind] ?? content.kind} entries, not a ${body.case} (refused)`,
    );
  }
  const target = body.case === "edit" || body.case === "reaction" ? body.value.targetSeq : 0n;
  if (content.targetSeq !== target) {
    throw new DecryptError(
      sender,
      "wrong-context",
      `the content targets #${content.targetSeq}, not #${target} (refused)`,
    );
  }
}

/** Parses the plaintext of an encrypted entry. */
export function parseSealed(plaintext: Uint8Array): SealedContent {
  try {
    return fromBinary(SealedContentSchema, plaintext);
  } catch (err) {
    throw new Error("the decrypted content is not a SealedContent message", { cause: err });
  }
}

/**
 * The client's end-to-end encryption: keys in the key directory; direct conversations encrypted
 * per device over pairwise Signal sessions; groups encrypted once with this device's sender key,
 * handed to the members' devices over those sessions and rotated when the membership changes;
 * and the plaintexts of decrypted entries kept in the profile (`<profile>/e2ee/plaintexts`),
 * since a ciphertext can be decrypted only once. Every plaintext is a SealedContent.
 */
export class E2ee {
  private readonly conversations = new Map<string, Promise<ConversationInfo>>();
  private readonly members = new Map<string, Promise<string[]>>();
  private readonly decoding = new Map<string, Promise<Uint8Array>>();
  private keysChecked: Promise<void> | undefined;
  /** A new identity was made for this profile and is not in the key directory yet. */
  private identityUnpublished: boolean;
  /** See OpenOptions.signedPrekeyMaxAgeMs. */
  signedPrekeyMaxAgeMs = SIGNED_PREKEY_MAX_AGE_MS;
  private replenishing: Promise<void> | undefined;
  private keysCheckedAtMs = 0;
  /** `<sender device>|<group>` => when this device last asked that device to resend its key. */
  private readonly retriesAsked = new Map<string, number>();
  /** `<requesting device>|<group>` => when this device last answered such a request. */
  private readonly retriesAnswered = new Map<string, number>();
  /** Told when the devices encrypted for of a user change. */
  onDevicesChanged: (event: DevicesChangedEvent) => void = () => {};

  private constructor(
    readonly stores: SignalStores,
    readonly cipher: PairwiseCipher,
    readonly groups: GroupCipher,
    private readonly self: DeviceRef,
    private readonly keys: Client<typeof KeyService>,
    private readonly conn: ServerConnection,
    private readonly known: JsonDoc<KnownDevicesFile>,
    /** Plaintexts by `r/<conversationId>/<seq>` (received) and `s/<clientMsgId>` (sent here). */
    private readonly plaintexts: RecordDir,
  ) {
    this.identityUnpublished = stores.identityCreated;
  }

  static async open(
    profileDir: string,
    self: DeviceRef,
    conn: ServerConnection,
    onIdentityChange: (event: IdentityChangeEvent) => void,
    signedPrekeyMaxAgeMs?: number,
  ): Promise<E2ee> {
    const stores = await SignalStores.open(profileDir, { onIdentityChange });
    const dir = join(profileDir, "e2ee");
    const plaintexts = await RecordDir.open(join(dir, "plaintexts"));
    const known = await JsonDoc.open<KnownDevicesFile>(join(dir, "devices.json"), () => ({
      version: 1,
      users: {},
    }));
    let e2ee: E2ee | undefined;
    const cipher = new PairwiseCipher(stores, self, (userId, deviceIds) => {
      if (e2ee === undefined) throw new Error("not ready");
      return e2ee.fetchBundles(userId, deviceIds);
    });
    const groups = await GroupCipher.open(stores, self);
    e2ee = new E2ee(stores, cipher, groups, self, conn.keys, conn, known, plaintexts);
    if (signedPrekeyMaxAgeMs !== undefined) e2ee.signedPrekeyMaxAgeMs = signedPrekeyMaxAgeMs;
    return e2ee;
  }

  private async fetchBundles(userId: string, deviceIds: string[]) {
    const res = await this.keys.getBundles({ userId, deviceIds });
    return { bundles: res.bundles, devicesWithoutKeys: res.devicesWithoutKeys };
  }

  // -------------------------------------------------------------------------------------------
  // Keys in the directory

  /**
   * Uploads the device's first keys if it has none on the server, or tops up one-time prekeys
   * when they run low. Called when a stream opens; concurrent calls share one run.
   */
  ensureKeys(): Promise<void> {
    this.keysChecked ??= this.checkKeys().finally(() => {
      this.keysChecked = undefined;
    });
    return this.keysChecked;
  }

  /**
   * ensureKeys for calls without a stream (sendUnary, getHistory): a device that never streams
   * must top up its one-time prekeys too. At most once a minute per process.
   */
  async ensureKeysSoon(): Promise<void> {
    if (Date.now() - this.keysCheckedAtMs < KEYS_CHECK_INTERVAL_MS) return;
    await this.ensureKeys();
    this.keysCheckedAtMs = Date.now();
  }

  private async checkKeys(): Promise<void> {
    const counts = await this.keys.getPrekeyCounts({});
    if (!counts.keysUploaded) {
      await this.keys.uploadKeys(await generateInitialKeys(this.stores));
      this.identityUnpublished = false;
      return;
    }
    if (this.identityUnpublished) {
      // The directory's identity for this device never changes, and its private key is gone.
      throw new ConnectError(
        `this device's Signal keys are missing from its profile (${this.stores.dir} was lost or ` +
          "replaced) while the key directory keeps the identity they belonged to, which never " +
          "changes: nobody can encrypt to this device any more. Link a new device for this user " +
          "and revoke this one.",
        Code.FailedPrecondition,
      );
    }
    // Weekly, as Signal does: a signed prekey's private half leaking opens only the sessions
    // started against it while it was current.
    const oldest = Math.min(
      Number(counts.signedPrekeyUploadedAtMs),
      Number(counts.kyberLastResortPrekeyUploadedAtMs),
    );
    if (signedPrekeyNeedsRotation(oldest, Date.now(), this.signedPrekeyMaxAgeMs))
      await this.keys.uploadKeys(await rotateSignedPrekeys(this.stores));
    await this.replenish({
      oneTimeEcPrekeys: counts.counts?.oneTimeEcPrekeys ?? 0,
      oneTimeKyberPrekeys: counts.counts?.oneTimeKyberPrekeys ?? 0,
    });
  }

  /** Uploads one-time prekeys up to the targets (on a prekeys_low frame or low counts). */
  replenish(remaining: RemainingPrekeys): Promise<void> {
    const run = async () => {
      for (const request of await replenishPrekeys(this.stores, remaining))
        await this.keys.uploadKeys(request);
    };
    const next = (this.replenishing ?? Promise.resolve()).catch(() => {}).then(run);
    this.replenishing = next;
    return next;
  }

  // -------------------------------------------------------------------------------------------
  // Conversations

  /** Whether a conversation is direct (pairwise encrypted), and its peer; cached for good. */
  conversation(conversationId: string): Promise<ConversationInfo> {
    let info = this.conversations.get(conversationId);
    if (info === undefined) {
      info = this.conn.conversations.getConversation({ conversationId }).then((res) => {
        if (res.conversation?.kind !== ConversationKind.DIRECT) return { direct: false } as const;
        const peer = res.members.find((m) => m.userId !== this.self.userId)?.userId ?? this.self.userId;
        return { direct: true, peerUserId: peer } as const;
      });
      info.catch(() => this.conversations.delete(conversationId));
      this.conversations.set(conversationId, info);
    }
    return info;
  }

  /** A group's member user ids, cached until a membership entry or a refusal says otherwise. */
  private groupMembers(groupId: string): Promise<string[]> {
    let members = this.members.get(groupId);
    if (members === undefined) {
      members = this.conn.conversations
        .getConversation({ conversationId: groupId })
        .then((res) => res.members.map((m) => m.userId));
      members.catch(() => this.members.delete(groupId));
      this.members.set(groupId, members);
    }
    return members;
  }

  /** Every device of the group's members with keys, as far as known, except this one. */
  private async groupRecipients(groupId: string): Promise<DeviceRef[]> {
    const out: DeviceRef[] = [];
    for (const userId of await this.groupMembers(groupId)) {
      for (const deviceId of await this.devicesOf(userId)) {
        if (userId === this.self.userId && deviceId === this.self.deviceId) continue;
        out.push({ userId, deviceId });
      }
    }
    return out;
  }

  /**
   * A group's membership changed (an entry of the log): the member list is read again, and our
   * sender key is rotated when someone left or was removed (they must not read what follows) or
   * joined (they must not read what came before). Done once per entry, durably.
   */
  async membershipChanged(entry: Entry): Promise<void> {
    if (entry.body.case !== "membership") return;
    const groupId = entry.conversationId;
    const seqs = this.known.value.membershipSeqs ?? {};
    if (entry.seq <= BigInt(seqs[groupId] ?? "0")) return;
    this.members.delete(groupId);
    const { action, userIds } = entry.body.value;
    const others = userIds.filter((u) => u !== this.self.userId);
    if (action === MembershipAction.REMOVED || action === MembershipAction.LEFT) {
      if (others.length > 0) {
        for (const userId of others) await this.groups.removeMember(groupId, userId);
      }
    } else if (action === MembershipAction.ADDED && others.length > 0) {
      await this.groups.rotate(groupId);
    }
    seqs[groupId] = entry.seq.toString();
    this.known.value.membershipSeqs = seqs;
    await this.known.save();
  }

  // -------------------------------------------------------------------------------------------
  // Sending

  /**
   * Encrypts a SealedContent for a conversation: one part in a direct conversation (a ciphertext
   * per device); in a group, the content encrypted once with our sender key plus our sender key
   * for every recipient device that lacks it, split into keys-only parts first when the
   * distribution does not fit in `maxBytes` with the content.
   */
  async seal(
    conversationId: string,
    content: Uint8Array,
    maxBytes: number,
    options: { freshMembers?: boolean } = {},
  ): Promise<SealedPart[]> {
    // A profile whose Signal keys were lost must not encrypt under a new identity nobody knows.
    if (this.identityUnpublished) await this.ensureKeys();
    const info = await this.conversation(conversationId);
    if (info.direct) {
      const devicePayloads = await this.encrypt(info.peerUserId, content);
      return [
        {
          content,
          payload: new Uint8Array(),
          payloadType: PAIRWISE_PAYLOAD_TYPE,
          devicePayloads,
          keysOnly: false,
        },
      ];
    }
    // Without a stream no membership entry arrives to say who left: the member list is read
    // again, and the key rotates if a holder is no longer a member.
    if (options.freshMembers === true) this.members.delete(conversationId);
    return this.sealGroup(conversationId, content, maxBytes);
  }

  /**
   * Keys-only parts handing our current sender key of a group to the member devices that lack it
   * (after a retry request), or none when every device holds it.
   */
  async sealKeysOnly(groupId: string, maxBytes: number): Promise<SealedPart[]> {
    this.members.delete(groupId);
    return this.sealGroup(groupId, undefined, maxBytes);
  }

  private async sealGroup(
    groupId: string,
    content: Uint8Array | undefined,
    maxBytes: number,
  ): Promise<SealedPart[]> {
    await this.groups.rotateIfWorn(groupId);
    for (let attempt = 0; ; attempt++) {
      const recipients = await this.groupRecipients(groupId);
      await this.groups.rotateIfRecipientsChanged(groupId, recipients);
      const { key, message } = await this.groups.distributionMessage(groupId);
      const need = this.groups.devicesWithoutKey(groupId, recipients);
      const holders = new Map<string, number>();
      for (const d of recipients) {
        if (need.includes(d)) continue;
        const registrationId = await this.cipher.registrationIdOf(d);
        // Holding our key without a session cannot happen; if it does, hand the key over again.
        if (registrationId === 0) need.push(d);
        else holders.set(d.deviceId, registrationId);
      }
      let keyed: DeviceCiphertext[] = [];
      if (need.length > 0) {
        const skdm = toBinary(
          SealedContentSchema,
          create(SealedContentSchema, {
            senderKeyDistribution: message,
            conversationId: groupId,
            kind: ContentKind.SENDER_KEY,
          }),
        );
        const out = await this.encryptEach(skdm, need, attempt >= 2);
        if (out === undefined) continue;
        keyed = out;
      }
      const userOf = new Map(recipients.map((d) => [d.deviceId, d.userId]));
      const everyone = (chunk: DeviceCiphertext[]): DeviceCiphertext[] => {
        const inChunk = new Set(chunk.map((c) => c.deviceId));
        const rest = [
          ...[...holders].map(([deviceId, registrationId]) => ({ deviceId, registrationId })),
          ...keyed.map((c) => ({ deviceId: c.deviceId, registrationId: c.registrationId })),
        ].filter((d) => !inChunk.has(d.deviceId));
        return [...chunk, ...rest.map((d) => create(DeviceCiphertextSchema, d))];
      };
      const handed = (chunk: DeviceCiphertext[]) => ({
        groupId,
        epoch: key.epoch,
        devices: chunk.map((c) => ({ userId: userOf.get(c.deviceId) ?? "", deviceId: c.deviceId })),
      });
      /** A part that carries only key distributions (sender keys for these devices). */
      const keysOnly = (chunk: DeviceCiphertext[]): SealedPart => ({
        content: KEYS_ONLY_MARKER,
        payload: KEYS_ONLY_MARKER,
        payloadType: KEYS_ONLY_PAYLOAD_TYPE,
        devicePayloads: everyone(chunk),
        keysOnly: true,
        distributed: handed(chunk),
      });
      if (content === undefined) {
        if (keyed.length === 0) return [];
        const rest = maxBytes - KEYS_ONLY_PAYLOAD_ROOM;
        return split(keyed, rest, rest).map(keysOnly);
      }
      const final = await this.groups.encrypt(groupId, content);
      // The content's part takes what fits beside it; the rest go first in keys-only parts.
      const chunks = split(keyed, maxBytes - final.ciphertext.length, maxBytes - KEYS_ONLY_PAYLOAD_ROOM);
      const parts: SealedPart[] = [];
      for (const chunk of chunks.slice(1)) parts.push(keysOnly(chunk));
      const first = chunks[0] ?? [];
      parts.push({
        content,
        payload: final.ciphertext,
        payloadType: SENDER_KEY_PAYLOAD_TYPE,
        devicePayloads: everyone(first),
        keysOnly: false,
        distributed: handed(first),
      });
      return parts;
    }
  }

  /** Our sender key reached these devices (their send was acknowledged). */
  async keyDistributed(distributed: SealedPart["distributed"]): Promise<void> {
    if (distributed === undefined || distributed.devices.length === 0) return;
    await this.groups.markDistributed(distributed.groupId, distributed.devices, distributed.epoch);
  }

  /** Keeps the plaintext of a send of this device, for its own entry when it comes back. */
  async rememberSent(clientMsgId: string, plaintext: Uint8Array): Promise<void> {
    await this.plaintexts.put([[`s/${clientMsgId}`, plaintext]]);
  }

  /** True when the entry was decrypted before (its plaintext is kept). */
  hasDecoded(entry: Entry): boolean {
    return this.plaintexts.has(`r/${entry.conversationId}/${entry.seq}`);
  }

  /** True when this device kept the plaintext of an encrypted send with this client_msg_id. */
  hasSent(clientMsgId: string): boolean {
    return this.plaintexts.has(`s/${clientMsgId}`);
  }

  /**
   * Encrypts a plaintext for every device of the peer and every other device of this user, as
   * far as this device knows them (a user seen for the first time is fetched in full).
   */
  async encrypt(peerUserId: string, plaintext: Uint8Array): Promise<DeviceCiphertext[]> {
    const users = [...new Set([peerUserId, this.self.userId])];
    for (let attempt = 0; ; attempt++) {
      const recipients: DeviceRef[] = [];
      for (const userId of users) {
        for (const deviceId of await this.devicesOf(userId)) {
          if (userId === this.self.userId && deviceId === this.self.deviceId) continue;
          recipients.push({ userId, deviceId });
        }
      }
      const out = await this.encryptEach(plaintext, recipients, attempt >= 2);
      if (out !== undefined) return out;
    }
  }

  /**
   * One DeviceCiphertext per recipient. A device the server no longer hands keys for is left
   * out from then on (the server says so if that is wrong) and undefined returned, for the
   * caller to work out its recipients again; on the last attempt it is an error.
   */
  private async encryptEach(
    plaintext: Uint8Array,
    recipients: DeviceRef[],
    lastAttempt: boolean,
  ): Promise<DeviceCiphertext[] | undefined> {
    try {
      return (await this.cipher.encrypt(plaintext, recipients)).map((c) =>
        create(DeviceCiphertextSchema, {
          deviceId: c.deviceId,
          registrationId: c.registrationId,
          ciphertext: c.ciphertext,
          type: c.type,
        }),
      );
    } catch (err) {
      if (!(err instanceof DevicesWithoutKeysError) || lastAttempt) throw err;
      for (const d of err.devices) this.forgetDevice(d.userId, d.deviceId);
      await this.known.save();
      for (const d of err.devices) this.devicesChanged(d.userId, [], [d.deviceId]);
      return undefined;
    }
  }

  private async devicesOf(userId: string): Promise<string[]> {
    const listed = this.known.value.users[userId];
    // An empty list is asked again: the user may have uploaded keys since.
    if (listed !== undefined && listed.length > 0) return listed;
    // First contact: every device with keys (sessions that exist already are kept).
    const res = await this.keys.getBundles({ userId, deviceIds: [] });
    const ids: string[] = [];
    for (const bundle of res.bundles) {
      const device = { userId, deviceId: bundle.deviceId };
      if (!(await this.cipher.hasSession(device))) await this.cipher.openSession(device, bundle);
      ids.push(bundle.deviceId);
    }
    this.known.value.users[userId] = ids;
    await this.known.save();
    return ids;
  }

  /**
   * Applies a DeviceMismatch: missing devices are added (their sessions open on the next
   * encrypt), extra ones forgotten with their sessions, stale ones re-keyed from a new bundle.
   */
  async applyMismatch(mismatch: DeviceMismatch, conversationId?: string): Promise<void> {
    if (conversationId !== undefined && !(await this.conversation(conversationId)).direct) {
      this.members.delete(conversationId);
      // A device we handed our key to is no longer a recipient (revoked, or its user left):
      // everything after this must be under a key it never saw.
      if (mismatch.extra.length > 0) await this.groups.rotate(conversationId);
    }
    // A stale device was re-installed: its new session needs our keys again.
    if (mismatch.stale.length > 0) await this.groups.forgetDevices(mismatch.stale);
    const changes = new Map<string, { added: string[]; removed: string[] }>();
    const changeOf = (userId: string) => {
      let c = changes.get(userId);
      if (c === undefined) {
        c = { added: [], removed: [] };
        changes.set(userId, c);
      }
      return c;
    };
    for (const d of mismatch.missing) {
      const list = this.known.value.users[d.userId] ?? [];
      if (!list.includes(d.deviceId)) {
        list.push(d.deviceId);
        changeOf(d.userId).added.push(d.deviceId);
      }
      this.known.value.users[d.userId] = list;
    }
    for (const d of mismatch.extra) {
      for (const userId of d.userId !== "" ? [d.userId] : Object.keys(this.known.value.users)) {
        if ((this.known.value.users[userId] ?? []).includes(d.deviceId)) {
          this.forgetDevice(userId, d.deviceId);
          await this.cipher.dropSession({ userId, deviceId: d.deviceId });
          changeOf(userId).removed.push(d.deviceId);
        }
      }
    }
    for (const d of mismatch.stale) {
      await this.cipher.dropSession({ userId: d.userId, deviceId: d.deviceId });
      const list = this.known.value.users[d.userId] ?? [];
      if (!list.includes(d.deviceId)) list.push(d.deviceId);
      this.known.value.users[d.userId] = list;
    }
    await this.known.save();
    for (const [userId, c] of changes) this.devicesChanged(userId, c.added, c.removed);
  }

  /** Tells the app that the devices encrypted for of a user changed. */
  private devicesChanged(userId: string, added: string[], removed: string[]): void {
    if (added.length === 0 && removed.length === 0) return;
    const verifiedContact = userId !== this.self.userId && this.stores.identity.verifiedUser(userId);
    try {
      this.onDevicesChanged({ userId, added, removed, verifiedContact });
    } catch {
      // A listener's failure must not break a send.
    }
  }

  /**
   * True when this device has encrypted with the user before (it knows devices of theirs with
   * keys, or has exchanged pairwise messages with one): plaintext from them is suspicious.
   */
  encryptsWith(userId: string): boolean {
    if ((this.known.value.users[userId] ?? []).length > 0) return true;
    return this.stores.identity.knowsUser(userId);
  }

  private forgetDevice(userId: string, deviceId: string): void {
    const list = this.known.value.users[userId];
    if (list !== undefined) this.known.value.users[userId] = list.filter((id) => id !== deviceId);
  }

  private async learnDevice(userId: string, deviceId: string): Promise<void> {
    const list = this.known.value.users[userId];
    // Users never fetched in full are fetched on the first send; nothing to learn yet.
    if (list === undefined || list.includes(deviceId)) return;
    list.push(deviceId);
    await this.known.save();
    this.devicesChanged(userId, [deviceId], []);
  }

  // -------------------------------------------------------------------------------------------
  // Identity

  /** Safety numbers with each device of a contact (fetched from the directory on first contact). */
  async safetyNumbers(peerUserId: string): Promise<ContactSafetyNumber[]> {
    const own = this.stores.identity.keyPair().publicKey;
    const out: ContactSafetyNumber[] = [];
    for (const deviceId of await this.devicesOf(peerUserId)) {
      if (peerUserId === this.self.userId && deviceId === this.self.deviceId) continue;
      const known = this.stores.identity.identityOf({ userId: peerUserId, deviceId });
      if (known === undefined) continue;
      // After a refused change, the number of the key the device presents now: the one to compare.
      const key = known.pendingKey ?? known.key;
      const n = safetyNumber(
        { userId: this.self.userId, identityKey: own },
        { userId: peerUserId, identityKey: key },
      );
      out.push({
        deviceId,
        digits: n.digits,
        display: n.display,
        verified: known.verified,
        identityChanged: known.pendingKey !== undefined,
      });
    }
    return out;
  }

  /**
   * Marks a contact device's identity key as verified: the one its safety number shows. After a
   * refused change that is the new key, which is accepted: the old session goes (the next message
   * opens one with the new key) and the device gets our group keys again.
   */
  async verify(device: DeviceRef): Promise<void> {
    const known = this.stores.identity.identityOf(device);
    if (known === undefined) throw new Error(`no identity key is known for device ${device.deviceId}`);
    if (known.pendingKey !== undefined) {
      await this.stores.identity.acceptPending(device);
      await this.cipher.dropSession(device);
      await this.groups.forgetDevices([device]);
      return;
    }
    await this.stores.identity.setVerified(device, known.key, true);
  }

  // -------------------------------------------------------------------------------------------
  // Retry requests: a sender key that did not arrive is asked for again

  /**
   * After a group entry failed to decrypt: the retry request to send to its sending device (over
   * the direct conversation with its user), or undefined when none is due. Asked when our copy
   * of the sender's key was corrupted or never came (no key for the message); at most once per
   * sending device and group every RETRY_INTERVAL_MS. Not for this user's own devices (there is
   * no direct conversation with oneself).
   */
  retryFor(entry: Entry, err: Error): RetryRequest | undefined {
    const body = entry.body;
    if (body.case !== "message" && body.case !== "edit" && body.case !== "reaction") return undefined;
    if (
      body.value.payloadType !== SENDER_KEY_PAYLOAD_TYPE &&
      body.value.payloadType !== KEYS_ONLY_PAYLOAD_TYPE
    )
      return undefined;
    if (entry.senderUserId === this.self.userId || entry.senderDeviceId === "") return undefined;
    const keyMissing = err instanceof GroupDecryptError && err.reason === "no-key";
    const keyBroken =
      err instanceof DecryptError && (err.reason === "invalid" || err.reason === "no-session");
    if (!keyMissing && !keyBroken) return undefined;
    if (!rateLimited(this.retriesAsked, `${entry.senderDeviceId}|${entry.conversationId}`)) return undefined;
    return create(RetryRequestSchema, {
      conversationId: entry.conversationId,
      seq: entry.seq,
      deviceId: entry.senderDeviceId,
    });
  }

  /**
   * A retry request from another device (authenticated by the pairwise session it came in):
   * when it names this device and the requester is a recipient of the group, the requester is
   * marked as lacking our current sender key, so the next group send (or sealKeysOnly) hands it
   * over again. True when honoured; at most once per requesting device and group every
   * RETRY_INTERVAL_MS.
   */
  async retryRequested(requester: DeviceRef, request: RetryRequest): Promise<boolean> {
    if (request.deviceId !== this.self.deviceId || !request.conversationId.startsWith("g_")) return false;
    const key = `${requester.deviceId}|${request.conversationId}`;
    if (!rateLimited(this.retriesAnswered, key)) return false;
    this.members.delete(request.conversationId);
    const recipients = await this.groupRecipients(request.conversationId);
    const device = recipients.find((d) => d.userId === requester.userId && d.deviceId === requester.deviceId);
    if (device === undefined) return false;
    await this.groups.forgetDevicesIn(request.conversationId, [device]);
    return true;
  }

  // -------------------------------------------------------------------------------------------
  // Receiving

  /**
   * The plaintext of a message, edit or reaction entry with device payloads. Durable in the
   * profile before this resolves (the session has moved on; the ciphertext cannot be decrypted
   * again), so a crash before the ack only means a redelivery that is answered from the profile.
   */
  decode(entry: Entry): Promise<Uint8Array> {
    const key = `r/${entry.conversationId}/${entry.seq}`;
    const stored = this.plaintexts.get(key);
    if (stored !== undefined) return Promise.resolve(stored);
    let running = this.decoding.get(key);
    if (running === undefined) {
      running = this.decodeOnce(key, entry).finally(() => this.decoding.delete(key));
      this.decoding.set(key, running);
    }
    return running;
  }

  private async decodeOnce(key: string, entry: Entry): Promise<Uint8Array> {
    const body = entry.body;
    if (body.case !== "message" && body.case !== "edit" && body.case !== "reaction")
      throw new Error(`a ${body.case} entry carries no content`);
    const devicePayloads = body.value.devicePayloads;
    let plaintext: Uint8Array;
    if (entry.senderDeviceId === this.self.deviceId) {
      const sent = this.plaintexts.get(`s/${entry.clientMsgId}`);
      if (sent === undefined) throw new Error("this device sent the entry but no longer has its plaintext");
      plaintext = sent;
    } else if (
      body.value.payloadType === SENDER_KEY_PAYLOAD_TYPE ||
      body.value.payloadType === KEYS_ONLY_PAYLOAD_TYPE
    ) {
      const sender = { userId: entry.senderUserId, deviceId: entry.senderDeviceId };
      const mine = devicePayloads.find((c) => c.deviceId === this.self.deviceId);
      let keyError: Error | undefined;
      if (mine !== undefined) {
        try {
          // Our copy of the sender's key, over the pairwise session (which authenticates it).
          const inner = parseSealed(
            await this.cipher.decrypt(sender, { type: mine.type, ciphertext: mine.ciphertext }),
          );
          await this.learnDevice(sender.userId, sender.deviceId);
          if (inner.conversationId !== entry.conversationId || inner.kind !== ContentKind.SENDER_KEY) {
            throw new DecryptError(
              sender,
              "wrong-context",
              `a sender key distributed for conversation ${inner.conversationId || "(none)"} arrived in ${entry.conversationId} (refused)`,
            );
          }
          if (inner.senderKeyDistribution.length > 0)
            await this.groups.processDistribution(entry.conversationId, sender, inner.senderKeyDistribution);
        } catch (err) {
          // The key did not arrive (corrupted on the way, say): the message may still open
          // with a key we hold; if not, this error says why, and a retry is asked for.
          keyError = err instanceof Error ? err : new Error(String(err));
        }
      }
      // A keys-only part holds nothing else, and nothing at all for a device whose key is in
      // another part.
      if (body.value.payloadType === KEYS_ONLY_PAYLOAD_TYPE) {
        if (keyError !== undefined) throw keyError;
        plaintext = KEYS_ONLY_MARKER;
      } else {
        try {
          plaintext = await this.groups.decrypt(entry.conversationId, sender, body.value.payload);
        } catch (err) {
          throw keyError ?? err;
        }
      }
    } else {
      const mine = devicePayloads.find((c) => c.deviceId === this.self.deviceId);
      if (mine === undefined) {
        throw new DecryptError(
          { userId: entry.senderUserId, deviceId: entry.senderDeviceId },
          "not-addressed",
          "the entry was encrypted for other devices only (sent before this device was linked or had keys)",
        );
      }
      const sender = { userId: entry.senderUserId, deviceId: entry.senderDeviceId };
      plaintext = await this.cipher.decrypt(sender, { type: mine.type, ciphertext: mine.ciphertext });
      await this.learnDevice(sender.userId, sender.deviceId);
    }
    await this.plaintexts.put([[key, plaintext]]);
    return plaintext;
  }
}

/** Remembers a (device, group) pair for RETRY_INTERVAL_MS; false when it was already there. */
function rateLimited(memory: Map<string, number>, key: string): boolean {
  const now = Date.now();
  const last = memory.get(key);
  if (last !== undefined && now - last < RETRY_INTERVAL_MS) return false;
  memory.delete(key);
  memory.set(key, now);
  while (memory.size > RETRY_MEMORY) {
    const oldest = memory.keys().next().value;
    if (oldest === undefined) break;
    memory.delete(oldest);
  }
  return true;
}

/**
 * Splits key distribution ciphertexts into sends: the first takes up to `firstBytes`, each next
 * one up to `restBytes`. Always at least one (possibly empty) chunk.
 */
function split(keyed: DeviceCiphertext[], firstBytes: number, restBytes: number): DeviceCiphertext[][] {
  const chunks: DeviceCiphertext[][] = [[]];
  let room = firstBytes;
  for (const c of keyed) {
    const size = c.ciphertext.length;
    if (size > restBytes) throw new Error(`a key distribution of ${size} bytes exceeds the payload limit`);
    let chunk = chunks[chunks.length - 1] as DeviceCiphertext[];
    if (size > room) {
      chunk = [];
      chunks.push(chunk);
      room = restBytes;
    }
    chunk.push(c);
    room -= size;
  }
  return chunks;
}
