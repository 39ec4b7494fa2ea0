import type { PublicKey } from "@signalapp/libsignal-client";

// The shapes the Signal stores share with the rest of the SDK (and with apps, through events).
// Imports nothing of the SDK: sdk/types.ts takes IdentityChangeEvent from here without a loop.

/** One device of one user, by the server's ids. */
export interface DeviceRef {
  /** The user ("u_..."). */
  userId: string;
  /** The device ("dv_..."). */
  deviceId: string;
}

/** Why an IdentityChangeEvent fired. */
export type IdentityChangeOutcome =
  /** A contact that was not verified presented a new key; it replaced the old one. */
  | "accepted"
  /** A verified contact presented a new key; it was refused, nothing was sent or decrypted. */
  | "refused";

/** A device of a contact presented an identity key different from the one we remembered. */
export interface IdentityChangeEvent {
  /** The device whose identity changed. */
  device: DeviceRef;
  /** The key we remembered. */
  previousKey: PublicKey;
  /** The key now presented. */
  newKey: PublicKey;
  /** Whether the contact's device was verified (safety number compared) with the previous key. */
  wasVerified: boolean;
  /** What the store did about it. */
  outcome: IdentityChangeOutcome;
}

/** What we remember about another device's identity. */
export interface RememberedIdentity {
  /** Its identity public key. */
  key: PublicKey;
  /** True once the user compared safety numbers for this key. */
  verified: boolean;
  /** When we first saw this key, in milliseconds since the Unix epoch. */
  firstSeenMs: number;
  /**
   * A different key the device presented after the user verified `key`, refused. While it is set
   * the old verification no longer holds and nothing is sent to or decrypted from the device, under
   * either key, until the user compares the new safety number and accepts it (acceptPending).
   */
  pendingKey?: PublicKey;
}
