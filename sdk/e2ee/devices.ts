import type { Client } from "@connectrpc/connect";
import type { DeviceMismatch } from "../../gen/switchboard/v1/gateway_pb.js";
import type { KeyService } from "../../gen/switchboard/v1/keys_pb.js";
import type { BundleFetcher, PairwiseCipher } from "../crypto/pairwise.js";
import type { DeviceRef, SignalStores } from "../crypto/stores.js";
import type { ProfileStorage } from "../storage/port.js";
import { JsonDoc } from "../storage/records.js";
import type { DevicesChangedEvent } from "./types.js";

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

/** Fetches prekey bundles from the key directory, for the pairwise cipher's new sessions. */
export function bundleFetcher(keys: Client<typeof KeyService>): BundleFetcher {
  return async (userId, deviceIds) => {
    const res = await keys.getBundles({ userId, deviceIds });
    return { bundles: res.bundles, devicesWithoutKeys: res.devicesWithoutKeys };
  };
}

/**
 * Which devices of each user this device encrypts for, kept in the profile: fetched in full from
 * the key directory on first contact, then corrected by what the server says (mismatched devices,
 * devices without keys) and by who writes to us. Tells the app of every change.
 */
export class DeviceDirectory {
  private constructor(
    private readonly stores: SignalStores,
    private readonly cipher: PairwiseCipher,
    private readonly self: DeviceRef,
    private readonly keys: Client<typeof KeyService>,
    private readonly known: JsonDoc<KnownDevicesFile>,
    private readonly onChanged: (event: DevicesChangedEvent) => void,
  ) {}

  /** Opens `e2ee/devices.json` in the profile's storage. */
  static async open(
    storage: ProfileStorage,
    stores: SignalStores,
    cipher: PairwiseCipher,
    self: DeviceRef,
    keys: Client<typeof KeyService>,
    onChanged: (event: DevicesChangedEvent) => void,
  ): Promise<DeviceDirectory> {
    const known = await JsonDoc.open<KnownDevicesFile>(storage, "e2ee/devices.json", () => ({
      version: 1,
      users: {},
    }));
    return new DeviceDirectory(stores, cipher, self, keys, known, onChanged);
  }

  /** A user's devices with keys, as far as known; a user seen for the first time is fetched in full. */
  async devicesOf(userId: string): Promise<string[]> {
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
   * The devices side of a DeviceMismatch: missing devices are added (their sessions open on the
   * next encrypt), extra ones forgotten with their sessions, stale ones re-keyed from a new bundle.
   */
  async applyMismatch(mismatch: DeviceMismatch): Promise<void> {
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

  /** Devices the server no longer hands keys for: left out from now on (the server says so if that is wrong). */
  async forgetDevicesWithoutKeys(devices: readonly DeviceRef[]): Promise<void> {
    for (const d of devices) this.forgetDevice(d.userId, d.deviceId);
    await this.known.save();
    for (const d of devices) this.devicesChanged(d.userId, [], [d.deviceId]);
  }

  /**
   * True when this device has encrypted with the user before (it knows devices of theirs with
   * keys, or has exchanged pairwise messages with one): plaintext from them is suspicious.
   */
  encryptsWith(userId: string): boolean {
    if ((this.known.value.users[userId] ?? []).length > 0) return true;
    return this.stores.identity.knowsUser(userId);
  }

  /** A device wrote to us over a pairwise session: it is one to encrypt for. */
  async learnDevice(userId: string, deviceId: string): Promise<void> {
    const list = this.known.value.users[userId];
    // Users never fetched in full are fetched on the first send; nothing to learn yet.
    if (list === undefined || list.includes(deviceId)) return;
    list.push(deviceId);
    await this.known.save();
    this.devicesChanged(userId, [deviceId], []);
  }

  /** The seq of the group's last membership entry whose key rotation is done (0 for none). */
  membershipSeq(groupId: string): bigint {
    return BigInt(this.known.value.membershipSeqs?.[groupId] ?? "0");
  }

  /** Records, durably, that the key rotation of the group's membership entry `seq` is done. */
  async membershipDone(groupId: string, seq: bigint): Promise<void> {
    const seqs = this.known.value.membershipSeqs ?? {};
    seqs[groupId] = seq.toString();
    this.known.value.membershipSeqs = seqs;
    await this.known.save();
  }

  private forgetDevice(userId: string, deviceId: string): void {
    const list = this.known.value.users[userId];
    if (list !== undefined) this.known.value.users[userId] = list.filter((id) => id !== deviceId);
  }

  /** Tells the app that the devices encrypted for of a user changed. */
  private devicesChanged(userId: string, added: string[], removed: string[]): void {
    if (added.length === 0 && removed.length === 0) return;
    const verifiedContact = userId !== this.self.userId && this.stores.identity.verifiedUser(userId);
    try {
      this.onChanged({ userId, added, removed, verifiedContact });
    } catch {
      // A listener's failure must not break a send.
    }
  }
}
