import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import type { Client } from "@connectrpc/connect";
import { ConversationKind } from "../gen/switchboard/v1/conversations_pb.js";
import { type DeviceCiphertext, DeviceCiphertextSchema, type Entry } from "../gen/switchboard/v1/entry_pb.js";
import type { DeviceMismatch } from "../gen/switchboard/v1/gateway_pb.js";
import type { KeyService } from "../gen/switchboard/v1/keys_pb.js";
import { JsonDoc, RecordDir } from "./crypto/files.js";
import { generateInitialKeys, type RemainingPrekeys, replenishPrekeys } from "./crypto/keys.js";
import { DecryptError, DevicesWithoutKeysError, PairwiseCipher } from "./crypto/pairwise.js";
import { type DeviceRef, type IdentityChangeEvent, SignalStores } from "./crypto/stores.js";
import type { ServerConnection } from "./transport.js";

/** How many times a send refused for mismatched devices is re-encrypted before it fails. */
export const MAX_MISMATCH_RETRIES = 3;

/** The devices this device encrypts for, per user, as last learned (`<profile>/e2ee/devices.json`). */
interface KnownDevicesFile {
  version: 1;
  /** A user is listed once its devices were fetched in full at least once. */
  users: Record<string, string[]>;
}

/** What a direct conversation needs: the peer. Groups are not encrypted pairwise (yet). */
type ConversationInfo = { direct: true; peerUserId: string } | { direct: false };

/**
 * The client's end-to-end encryption for direct conversations: keys in the key directory,
 * per-device encryption from pairwise Signal sessions, decryption of this device's ciphertext,
 * and the plaintexts of decrypted entries kept in the profile (`<profile>/e2ee/plaintexts`), since
 * a ciphertext can be decrypted only once.
 */
export class E2ee {
  private readonly conversations = new Map<string, Promise<ConversationInfo>>();
  private readonly decoding = new Map<string, Promise<Uint8Array>>();
  private keysChecked: Promise<void> | undefined;
  private replenishing: Promise<void> | undefined;

  private constructor(
    readonly stores: SignalStores,
    readonly cipher: PairwiseCipher,
    private readonly self: DeviceRef,
    private readonly keys: Client<typeof KeyService>,
    private readonly conn: ServerConnection,
    private readonly known: JsonDoc<KnownDevicesFile>,
    /** Plaintexts by `r/<conversationId>/<seq>` (received) and `s/<clientMsgId>` (sent here). */
    private readonly plaintexts: RecordDir,
  ) {}

  static async open(
    profileDir: string,
    self: DeviceRef,
    conn: ServerConnection,
    onIdentityChange: (event: IdentityChangeEvent) => void,
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
    e2ee = new E2ee(stores, cipher, self, conn.keys, conn, known, plaintexts);
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

  private async checkKeys(): Promise<void> {
    const counts = await this.keys.getPrekeyCounts({});
    if (!counts.keysUploaded) {
      await this.keys.uploadKeys(await generateInitialKeys(this.stores));
      return;
    }
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

  // -------------------------------------------------------------------------------------------
  // Sending

  /** Keeps the plaintext of a send of this device, for its own entry when it comes back. */
  async rememberSent(clientMsgId: string, plaintext: Uint8Array): Promise<void> {
    await this.plaintexts.put([[`s/${clientMsgId}`, plaintext]]);
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
      try {
        const out = await this.cipher.encrypt(plaintext, recipients);
        return out.map((c) =>
          create(DeviceCiphertextSchema, {
            deviceId: c.deviceId,
            registrationId: c.registrationId,
            ciphertext: c.ciphertext,
            type: c.type,
          }),
        );
      } catch (err) {
        // A device the server no longer hands keys for: leave it out (the server will say if not).
        if (!(err instanceof DevicesWithoutKeysError) || attempt >= 2) throw err;
        for (const d of err.devices) this.forgetDevice(d.userId, d.deviceId);
        await this.known.save();
      }
    }
  }

  private async devicesOf(userId: string): Promise<string[]> {
    const listed = this.known.value.users[userId];
    if (listed !== undefined) return listed;
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
  async applyMismatch(mismatch: DeviceMismatch): Promise<void> {
    for (const d of mismatch.missing) {
      const list = this.known.value.users[d.userId] ?? [];
      if (!list.includes(d.deviceId)) list.push(d.deviceId);
      this.known.value.users[d.userId] = list;
    }
    for (const d of mismatch.extra) {
      for (const userId of d.userId !== "" ? [d.userId] : Object.keys(this.known.value.users)) {
        if ((this.known.value.users[userId] ?? []).includes(d.deviceId)) {
          this.forgetDevice(userId, d.deviceId);
          await this.cipher.dropSession({ userId, deviceId: d.deviceId });
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
  }

  // -------------------------------------------------------------------------------------------
  // Receiving

  /**
   * The plaintext of a message, edit or reaction entry with device payloads. Durable in the
   * profile before this resolves (the session has moved on; the ciphertext cannot be decrypted
   * again), so a crash before the ack only means a redelivery that is answered from the profile.
   */
  decode(entry: Entry, devicePayloads: DeviceCiphertext[]): Promise<Uint8Array> {
    const key = `r/${entry.conversationId}/${entry.seq}`;
    const stored = this.plaintexts.get(key);
    if (stored !== undefined) return Promise.resolve(stored);
    let running = this.decoding.get(key);
    if (running === undefined) {
      running = this.decodeOnce(key, entry, devicePayloads).finally(() => this.decoding.delete(key));
      this.decoding.set(key, running);
    }
    return running;
  }

  private async decodeOnce(
    key: string,
    entry: Entry,
    devicePayloads: DeviceCiphertext[],
  ): Promise<Uint8Array> {
    let plaintext: Uint8Array;
    if (entry.senderDeviceId === this.self.deviceId) {
      const sent = this.plaintexts.get(`s/${entry.clientMsgId}`);
      if (sent === undefined) throw new Error("this device sent the entry but no longer has its plaintext");
      plaintext = sent;
    } else {
      const mine = devicePayloads.find((c) => c.deviceId === this.self.deviceId);
      if (mine === undefined) {
        throw new DecryptError(
          { userId: entry.senderUserId, deviceId: entry.senderDeviceId },
          "no-session",
          "the entry carries no ciphertext for this device (sent before it had keys?)",
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
