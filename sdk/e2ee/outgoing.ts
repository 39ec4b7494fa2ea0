import { create, toBinary } from "@bufbuild/protobuf";
import { ContentKind, SealedContentSchema } from "../../gen/switchboard/v1/content_pb.js";
import { type DeviceCiphertext, DeviceCiphertextSchema } from "../../gen/switchboard/v1/entry_pb.js";
import type { DeviceMismatch } from "../../gen/switchboard/v1/gateway_pb.js";
import type { GroupCipher } from "../crypto/groups.js";
import { DevicesWithoutKeysError, type PairwiseCipher } from "../crypto/pairwise.js";
import type { DeviceRef } from "../crypto/stores.js";
import {
  KEYS_ONLY_MARKER,
  KEYS_ONLY_PAYLOAD_TYPE,
  PAIRWISE_PAYLOAD_TYPE,
  SENDER_KEY_PAYLOAD_TYPE,
} from "./content.js";
import type { DeviceDirectory } from "./devices.js";
import type { KeyUpkeep } from "./key-upkeep.js";
import type { Recipients } from "./recipients.js";

/** How many times a send refused for mismatched devices is re-encrypted before it fails. */
export const MAX_MISMATCH_RETRIES = 3;

/** Room left for a keys-only part's marker payload when splitting a key distribution. */
const KEYS_ONLY_PAYLOAD_ROOM = 16;

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

/**
 * Outgoing encryption: a content sealed for every recipient device, pairwise in a direct
 * conversation, under our sender key in a group (with the key handed to the devices that lack
 * it), and the recipients corrected when the server refuses a send for mismatched devices.
 */
export class Sealer {
  constructor(
    private readonly cipher: PairwiseCipher,
    private readonly groups: GroupCipher,
    private readonly keys: KeyUpkeep,
    private readonly devices: DeviceDirectory,
    private readonly recipients: Recipients,
  ) {}

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
    await this.keys.ensurePublished();
    const info = await this.recipients.conversation(conversationId);
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
    if (options.freshMembers === true) this.recipients.forgetMembers(conversationId);
    return this.sealGroup(conversationId, content, maxBytes);
  }

  /**
   * Keys-only parts handing our current sender key of a group to the member devices that lack it
   * (after a retry request), or none when every device holds it.
   */
  async sealKeysOnly(groupId: string, maxBytes: number): Promise<SealedPart[]> {
    this.recipients.forgetMembers(groupId);
    return this.sealGroup(groupId, undefined, maxBytes);
  }

  private async sealGroup(
    groupId: string,
    content: Uint8Array | undefined,
    maxBytes: number,
  ): Promise<SealedPart[]> {
    await this.groups.rotateIfWorn(groupId);
    for (let attempt = 0; ; attempt++) {
      const recipients = await this.recipients.groupRecipients(groupId);
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

  /**
   * Encrypts a plaintext for every device of the peer and every other device of this user, as
   * far as this device knows them (a user seen for the first time is fetched in full).
   */
  async encrypt(peerUserId: string, plaintext: Uint8Array): Promise<DeviceCiphertext[]> {
    for (let attempt = 0; ; attempt++) {
      const recipients = await this.recipients.directRecipients(peerUserId);
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
      await this.devices.forgetDevicesWithoutKeys(err.devices);
      return undefined;
    }
  }

  /**
   * Applies a DeviceMismatch: missing devices are added (their sessions open on the next
   * encrypt), extra ones forgotten with their sessions, stale ones re-keyed from a new bundle.
   */
  async applyMismatch(mismatch: DeviceMismatch, conversationId?: string): Promise<void> {
    if (conversationId !== undefined && !(await this.recipients.conversation(conversationId)).direct) {
      this.recipients.forgetMembers(conversationId);
      // A device we handed our key to is no longer a recipient (revoked, or its user left):
      // everything after this must be under a key it never saw.
      if (mismatch.extra.length > 0) await this.groups.rotate(conversationId);
    }
    // A stale device was re-installed: its new session needs our keys again.
    if (mismatch.stale.length > 0) await this.groups.forgetDevices(mismatch.stale);
    await this.devices.applyMismatch(mismatch);
  }
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
