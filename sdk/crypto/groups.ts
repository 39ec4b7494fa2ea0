import { randomUUID } from "node:crypto";
import {
  ErrorCode,
  groupDecrypt,
  groupEncrypt,
  LibSignalErrorBase,
  type ProtocolAddress,
  processSenderKeyDistributionMessage,
  SenderKeyDistributionMessage,
  SenderKeyMessage,
} from "@signalapp/libsignal-client";
import { JsonDoc, toBytes } from "../storage/records.js";
import { addressOf, type DeviceRef, deviceOf, SIGNAL_PREFIX, type SignalStores } from "./stores.js";

/** Our sender key in one group. */
export interface OwnSenderKey {
  /** The group (conversation id). */
  groupId: string;
  /** libsignal's distribution id (a UUID), new on every rotation. */
  distributionId: string;
  /** Counts rotations, from 1. */
  epoch: number;
}

/** A group message could not be decrypted. */
export class GroupDecryptError extends Error {
  constructor(
    /** The group. */
    readonly groupId: string,
    /** The sending device. */
    readonly sender: DeviceRef,
    /** "no-key": we hold no sender key of that sender for that distribution (for example we were
     * removed and the group rotated); "duplicate": already decrypted; "invalid": tampered or
     * malformed. */
    readonly reason: "no-key" | "duplicate" | "invalid",
    message: string,
    options?: { cause: unknown },
  ) {
    super(
      `cannot decrypt a message in group ${groupId} from device ${sender.deviceId} of user ${sender.userId}: ${message}`,
      options,
    );
    this.name = "GroupDecryptError";
  }
}

interface OwnRecord {
  distributionId: string;
  epoch: number;
  distributedTo: string[];
  /**
   * The distribution message of this key as first created (base64): every device gets the same
   * one, from the chain's first iteration, so it can decrypt every message of this key in any order
   * (a send repaired after a device mismatch may land after a later one).
   */
  distribution?: string;
  /** Messages encrypted with this key; it is rotated before libsignal's forward-jump limit. */
  messages?: number;
  /** The members (user ids) this key was first handed out among; a newcomer gets a new key. */
  users?: string[];
}

/**
 * Messages after which our sender key is rotated: a device handed the key's first iteration must
 * still reach the newest message within libsignal's 25,000 forward jumps.
 */
export const SENDER_KEY_MAX_MESSAGES = 10_000;

interface GroupsFile {
  version: 1;
  /** Our current sender key per group, with the devices that received its distribution message. */
  own: Record<string, OwnRecord>;
  /**
   * Sender keys we received, by distribution id: the group and sending device they were
   * distributed for. A group message is only decrypted for the group its key was handed to us for,
   * so a server cannot replay a message of one group into another.
   */
  received: Record<string, { groupId: string; sender: string }>;
}

/**
 * Group encryption with sender keys. Each member device has its own sender key per group, sent to
 * the other members' devices as a SenderKeyDistributionMessage over pairwise sessions; a group
 * message is then encrypted once for everyone. When a member leaves or is removed, every remaining
 * member rotates (rotate(): a new distribution id, hence a new key, distributed only to the
 * remaining devices), so the removed member cannot decrypt anything sent afterwards.
 */
export class GroupCipher {
  private readonly local: ProtocolAddress;
  private tail: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly stores: SignalStores,
    /** This device. */
    readonly localDevice: DeviceRef,
    private readonly doc: JsonDoc<GroupsFile>,
  ) {
    this.local = addressOf(localDevice);
  }

  /** Opens the group state kept beside the stores (`<profile>/signal/groups.json`). */
  static async open(stores: SignalStores, localDevice: DeviceRef): Promise<GroupCipher> {
    const doc = await JsonDoc.open<GroupsFile>(stores.storage, `${SIGNAL_PREFIX}groups.json`, () => ({
      version: 1,
      own: {},
      received: {},
    }));
    return new GroupCipher(stores, localDevice, doc);
  }

  /** Our current sender key in a group, created on first use. */
  async currentKey(groupId: string): Promise<OwnSenderKey> {
    return this.serial(() => this.ensureOwn(groupId));
  }

  /**
   * Replaces our sender key in a group (a member left or was removed, or as a precaution): a new
   * distribution id, epoch + 1, and nobody has the new key until distributionMessage is sent to them.
   */
  async rotate(groupId: string): Promise<OwnSenderKey> {
    return this.serial(() => this.rotateNow(groupId));
  }

  /**
   * Rotates our key of a group once it encrypted SENDER_KEY_MAX_MESSAGES messages. Called before a
   * send works out who needs the key, never in the middle of one.
   */
  async rotateIfWorn(groupId: string): Promise<void> {
    await this.serial(async () => {
      const own = this.doc.value.own[groupId];
      if (own !== undefined && (own.messages ?? 0) >= SENDER_KEY_MAX_MESSAGES) await this.rotateNow(groupId);
    });
  }

  /**
   * Rotates our key of a group when its recipients are no longer the ones it was made for: a
   * device holding it is not a recipient any more (its user left or was removed, or it was
   * revoked), or a user who was not a member when the key was first used is one now. Called with
   * the current recipients before every send, so it holds in a process that never saw the
   * membership entries (one that only sends). Records the members for a key used the first time.
   */
  async rotateIfRecipientsChanged(groupId: string, recipients: DeviceRef[]): Promise<void> {
    await this.serial(async () => {
      let own = this.doc.value.own[groupId];
      const names = new Set(recipients.map((d) => addressOf(d).name()));
      const users = new Set([this.localDevice.userId, ...recipients.map((d) => d.userId)]);
      if (own !== undefined) {
        const known = own.users;
        const gone = own.distributedTo.some((n) => !names.has(n));
        const joined = known !== undefined && [...users].some((u) => !known.includes(u));
        if (gone || joined) await this.rotateNow(groupId);
      }
      await this.ensureOwn(groupId);
      own = this.doc.value.own[groupId] as OwnRecord;
      if (own.users === undefined) {
        own.users = [...users];
        await this.doc.save();
      }
    });
  }

  private async rotateNow(groupId: string): Promise<OwnSenderKey> {
    const previous = this.doc.value.own[groupId];
    const next = { distributionId: randomUUID(), epoch: (previous?.epoch ?? 0) + 1, distributedTo: [] };
    this.doc.value.own[groupId] = next;
    await this.doc.save();
    if (previous !== undefined) {
      await this.stores.senderKeys.deleteSenderKeys([
        { sender: this.local, distributionId: previous.distributionId },
      ]);
    }
    return { groupId, distributionId: next.distributionId, epoch: next.epoch };
  }

  /**
   * A member left or was removed: forgets the sender keys we received from that user's devices in
   * the group (their later messages are not accepted) and rotates ours.
   */
  async removeMember(groupId: string, userId: string): Promise<OwnSenderKey> {
    await this.serial(async () => {
      const drop: Array<{ sender: ProtocolAddress; distributionId: string }> = [];
      for (const [distributionId, entry] of Object.entries(this.doc.value.received)) {
        if (entry.groupId !== groupId) continue;
        const sender = addressFromName(entry.sender);
        if (deviceOf(sender).userId !== userId) continue;
        drop.push({ sender, distributionId });
        delete this.doc.value.received[distributionId];
      }
      await this.doc.save();
      await this.stores.senderKeys.deleteSenderKeys(drop);
    });
    return this.rotate(groupId);
  }

  /**
   * The SenderKeyDistributionMessage of our current key in a group, to send pairwise (encrypted)
   * to member devices that do not have it yet (see devicesWithoutKey).
   */
  async distributionMessage(groupId: string): Promise<{ key: OwnSenderKey; message: Uint8Array }> {
    return this.serial(async () => {
      const key = await this.ensureOwn(groupId);
      const distribution = await this.firstIterationDistribution(key);
      return { key, message: new Uint8Array(Buffer.from(distribution, "base64")) };
    });
  }

  /**
   * The distribution message of a key is taken before its first encryption and kept, so every
   * holder of the key can read the whole epoch whatever order the keys and messages arrive in
   * (a key handed over in a later send still opens a message encrypted before it). The price: a
   * device handed the key mid-epoch can read the epoch's earlier messages, which is why a member
   * joining rotates the key.
   */
  private async firstIterationDistribution(key: OwnSenderKey): Promise<string> {
    const own = this.doc.value.own[key.groupId] as OwnRecord;
    if (own.distribution === undefined) {
      const skdm = await SenderKeyDistributionMessage.create(
        this.local,
        key.distributionId,
        this.stores.senderKeys,
      );
      own.distribution = Buffer.from(skdm.serialize()).toString("base64");
      await this.doc.save();
    }
    return own.distribution;
  }

  /** The member devices that have not been sent our current key of the group. */
  devicesWithoutKey(groupId: string, members: DeviceRef[]): DeviceRef[] {
    const sent = new Set(this.doc.value.own[groupId]?.distributedTo ?? []);
    return members.filter((d) => !sent.has(addressOf(d).name()) && addressOf(d).name() !== this.local.name());
  }

  /**
   * Forgets that devices hold any of our keys (they were re-installed: reported stale, so their
   * new sessions need the keys again).
   */
  async forgetDevices(devices: DeviceRef[]): Promise<void> {
    const names = new Set(devices.map((d) => addressOf(d).name()));
    await this.serial(async () => {
      for (const own of Object.values(this.doc.value.own))
        own.distributedTo = own.distributedTo.filter((n) => !names.has(n));
      await this.doc.save();
    });
  }

  /**
   * Forgets that devices hold our key of one group (one asked for it again: its copy was
   * corrupted or never arrived), so the next send hands it over.
   */
  async forgetDevicesIn(groupId: string, devices: DeviceRef[]): Promise<void> {
    const names = new Set(devices.map((d) => addressOf(d).name()));
    await this.serial(async () => {
      const own = this.doc.value.own[groupId];
      if (own === undefined) return;
      own.distributedTo = own.distributedTo.filter((n) => !names.has(n));
      await this.doc.save();
    });
  }

  /** Records that the devices received our current key (once the pairwise send is durable). */
  async markDistributed(groupId: string, devices: DeviceRef[], epoch: number): Promise<void> {
    await this.serial(async () => {
      const own = this.doc.value.own[groupId];
      if (own === undefined || own.epoch !== epoch) return; // rotated meanwhile: they need the new key
      const set = new Set(own.distributedTo);
      for (const d of devices) set.add(addressOf(d).name());
      own.distributedTo = [...set];
      await this.doc.save();
    });
  }

  /**
   * Takes in a member device's sender key, received over a pairwise session (so authenticated as
   * that device), for one group.
   */
  async processDistribution(groupId: string, sender: DeviceRef, message: Uint8Array): Promise<void> {
    await this.serial(async () => {
      let skdm: SenderKeyDistributionMessage;
      try {
        skdm = SenderKeyDistributionMessage.deserialize(toBytes(message));
      } catch (err) {
        throw new GroupDecryptError(groupId, sender, "invalid", "malformed sender key distribution message", {
          cause: err,
        });
      }
      const distributionId = skdm.distributionId().toLowerCase();
      const address = addressOf(sender);
      const bound = this.doc.value.received[distributionId];
      if (bound !== undefined && (bound.groupId !== groupId || bound.sender !== address.name())) {
        throw new GroupDecryptError(
          groupId,
          sender,
          "invalid",
          "this sender key was already distributed for another group or sender",
        );
      }
      await processSenderKeyDistributionMessage(address, skdm, this.stores.senderKeys);
      if (bound === undefined) {
        this.doc.value.received[distributionId] = { groupId, sender: address.name() };
        await this.doc.save();
      }
    });
  }

  /** Encrypts one message for the group with our current sender key. */
  async encrypt(
    groupId: string,
    plaintext: Uint8Array,
  ): Promise<{ key: OwnSenderKey; ciphertext: Uint8Array }> {
    return this.serial(async () => {
      const key = await this.ensureOwn(groupId);
      await this.firstIterationDistribution(key);
      const own = this.doc.value.own[groupId] as OwnRecord;
      own.messages = (own.messages ?? 0) + 1;
      // The count only decides when the key is worn out; losing up to 99 of it in a crash is
      // harmless, while a whole-file write per message grows with the group.
      if (own.messages % 100 === 0) await this.doc.save();
      const message = await groupEncrypt(
        this.local,
        key.distributionId,
        this.stores.senderKeys,
        toBytes(plaintext),
      );
      return { key, ciphertext: message.serialize() };
    });
  }

  /** Decrypts a group message from a member device; the sender key state is durable when this resolves. */
  async decrypt(groupId: string, sender: DeviceRef, ciphertext: Uint8Array): Promise<Uint8Array> {
    return this.serial(async () => {
      const bytes = toBytes(ciphertext);
      let distributionId: string;
      try {
        distributionId = SenderKeyMessage.deserialize(bytes).distributionId().toLowerCase();
      } catch (err) {
        throw new GroupDecryptError(groupId, sender, "invalid", "malformed group message", { cause: err });
      }
      const bound = this.doc.value.received[distributionId];
      const address = addressOf(sender);
      if (bound === undefined || bound.groupId !== groupId || bound.sender !== address.name()) {
        throw new GroupDecryptError(
          groupId,
          sender,
          "no-key",
          "no sender key of this device for this group (not distributed to us, or rotated after we left)",
        );
      }
      try {
        return await groupDecrypt(address, this.stores.senderKeys, bytes);
      } catch (err) {
        if (err instanceof LibSignalErrorBase && err.code === ErrorCode.DuplicatedMessage) {
          throw new GroupDecryptError(groupId, sender, "duplicate", "the message was already received", {
            cause: err,
          });
        }
        if (err instanceof LibSignalErrorBase && err.code === ErrorCode.InvalidSenderKeySession) {
          throw new GroupDecryptError(groupId, sender, "no-key", "no sender key state for this message", {
            cause: err,
          });
        }
        const reason = err instanceof Error ? err.message : String(err);
        throw new GroupDecryptError(groupId, sender, "invalid", reason, { cause: err });
      }
    });
  }

  private async ensureOwn(groupId: string): Promise<OwnSenderKey> {
    let own = this.doc.value.own[groupId];
    if (own === undefined) {
      own = { distributionId: randomUUID(), epoch: 1, distributedTo: [] };
      this.doc.value.own[groupId] = own;
      await this.doc.save();
    }
    return { groupId, distributionId: own.distributionId, epoch: own.epoch };
  }

  /** Group state changes run one at a time (they share one file and libsignal's sender key records). */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.tail.then(fn, fn);
    this.tail = run.catch(() => {});
    return run;
  }
}

function addressFromName(name: string): ProtocolAddress {
  const dot = name.indexOf(".");
  return addressOf({ userId: name.slice(0, dot), deviceId: name.slice(dot + 1) });
}
