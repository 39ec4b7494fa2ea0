import type { GroupCipher } from "../crypto/groups.js";
import type { PairwiseCipher } from "../crypto/pairwise.js";
import { safetyNumber } from "../crypto/safety.js";
import type { DeviceRef, SignalStores } from "../crypto/stores.js";
import type { DeviceDirectory } from "./devices.js";
import type { ContactSafetyNumber } from "./types.js";

/**
 * Verification of contacts' identity keys: the safety numbers to compare, and marking a key
 * verified, which is also how a key that changed after verification (pending) is accepted.
 */
export class Verification {
  constructor(
    private readonly stores: SignalStores,
    private readonly cipher: PairwiseCipher,
    private readonly groups: GroupCipher,
    private readonly self: DeviceRef,
    private readonly devices: DeviceDirectory,
  ) {}

  /** Safety numbers with each device of a contact (fetched from the directory on first contact). */
  async safetyNumbers(peerUserId: string): Promise<ContactSafetyNumber[]> {
    const own = this.stores.identity.keyPair().publicKey;
    const out: ContactSafetyNumber[] = [];
    for (const deviceId of await this.devices.devicesOf(peerUserId)) {
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
}
