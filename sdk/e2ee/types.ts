/**
 * The end-to-end encryption's events and answers as the app sees them. No imports: sdk/types.ts
 * names DevicesChangedEvent, and this file must not pull the encryption's code into its graph.
 */

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
