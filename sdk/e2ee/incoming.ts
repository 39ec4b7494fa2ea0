import { ContentKind } from "../../gen/switchboard/v1/content_pb.js";
import type { Entry } from "../../gen/switchboard/v1/entry_pb.js";
import type { GroupCipher } from "../crypto/groups.js";
import { DecryptError, type PairwiseCipher } from "../crypto/pairwise.js";
import type { DeviceRef } from "../crypto/stores.js";
import type { ProfileStorage } from "../storage/port.js";
import { RecordSet } from "../storage/records.js";
import { KEYS_ONLY_MARKER, KEYS_ONLY_PAYLOAD_TYPE, parseSealed, SENDER_KEY_PAYLOAD_TYPE } from "./content.js";
import type { DeviceDirectory } from "./devices.js";

/**
 * Incoming decryption, and the plaintexts it leaves in the profile (`<profile>/e2ee/plaintexts`):
 * a ciphertext can be decrypted only once (the session moves on), so what was decrypted is kept,
 * and so is what this device sent, for its own entries when they come back.
 */
export class Decryptor {
  private readonly decoding = new Map<string, Promise<Uint8Array>>();
  /**
   * The `x/` index keys by `<conversationId>/<seq>`: the entries that disappear, found without
   * walking every plaintext (a device back from a long absence may be served many expired entries).
   */
  private readonly expiring = new Map<string, string>();

  private constructor(
    private readonly cipher: PairwiseCipher,
    private readonly groups: GroupCipher,
    private readonly self: DeviceRef,
    private readonly devices: DeviceDirectory,
    /**
     * Plaintexts by `r/<conversationId>/<seq>` (received) and `s/<clientMsgId>` (sent here); and
     * for entries that disappear, `x/<expiresAtMs>/<conversationId>/<seq>` holding the
     * client_msg_id of this device's own send (empty otherwise): what forgetExpired deletes.
     */
    private readonly plaintexts: RecordSet,
  ) {
    for (const key of plaintexts.keys()) {
      if (key.startsWith("x/")) this.expiring.set(key.slice(key.indexOf("/", 2) + 1), key);
    }
  }

  /** Opens `e2ee/plaintexts/` in the profile's storage. */
  static async open(
    storage: ProfileStorage,
    cipher: PairwiseCipher,
    groups: GroupCipher,
    self: DeviceRef,
    devices: DeviceDirectory,
  ): Promise<Decryptor> {
    const plaintexts = await RecordSet.open(storage, "e2ee/plaintexts/");
    return new Decryptor(cipher, groups, self, devices, plaintexts);
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
          await this.devices.learnDevice(sender.userId, sender.deviceId);
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
      await this.devices.learnDevice(sender.userId, sender.deviceId);
    }
    const records: Array<[string, Uint8Array]> = [[key, plaintext]];
    if (entry.expiresAtMs > 0n) {
      const own = entry.senderDeviceId === this.self.deviceId ? entry.clientMsgId : "";
      const index = `x/${entry.expiresAtMs}/${entry.conversationId}/${entry.seq}`;
      records.push([index, new TextEncoder().encode(own)]);
      this.expiring.set(`${entry.conversationId}/${entry.seq}`, index);
    }
    await this.plaintexts.put(records);
    return plaintext;
  }

  /**
   * Deletes the plaintexts of entries that disappeared by nowMs (in milliseconds since the Unix
   * epoch), received and sent; returns how many entries it forgot.
   */
  async forgetExpired(nowMs: number): Promise<number> {
    const due = [...this.expiring.values()].filter((k) => Number(k.split("/")[1]) <= nowMs);
    await this.forgetKeys(due);
    return due.length;
  }

  /**
   * Deletes what this device kept of a disappearing entry the server served as expired. An entry
   * the server dropped for its retention (no expiry of its own) stays: the device's history is
   * its own.
   */
  async forgetEntry(conversationId: string, seq: bigint): Promise<void> {
    const index = this.expiring.get(`${conversationId}/${seq}`);
    if (index !== undefined) await this.forgetKeys([index]);
  }

  private async forgetKeys(indexKeys: string[]): Promise<void> {
    if (indexKeys.length === 0) return;
    const names = new Set<string>();
    for (const x of indexKeys) {
      const [, , ...rest] = x.split("/");
      names.add(`r/${rest.join("/")}`);
      this.expiring.delete(rest.join("/"));
      const own = new TextDecoder().decode(this.plaintexts.get(x) ?? new Uint8Array());
      if (own !== "") names.add(`s/${own}`);
      names.add(x);
    }
    await this.plaintexts.delete([...names].filter((n) => this.plaintexts.has(n)));
  }
}
