/** The key directory port: devices' signed and one-time prekeys (see ../types.ts). */

/** The two kinds of one-time prekeys: elliptic-curve (X25519) and Kyber (ML-KEM). */
export type PrekeyKind = "ec" | "kyber";

/** A prekey signed with the device's identity key (the signed EC prekey, the Kyber last resort). */
export interface SignedPrekeyRecord {
  /** The device's id for the key. */
  keyId: number;
  /** The public key, libsignal's serialized form. */
  publicKey: Uint8Array;
  /** The identity key's signature of publicKey. */
  signature: Uint8Array;
  /** When it was uploaded, in milliseconds since the Unix epoch. */
  uploadedAtMs: number;
}

/** A one-time prekey: handed out once, then gone. */
export interface OneTimePrekeyRecord {
  /** The device's id for the key, unique per device and kind. */
  keyId: number;
  /** The public key, libsignal's serialized form. */
  publicKey: Uint8Array;
  /** The identity key's signature of publicKey; Kyber prekeys only. */
  signature?: Uint8Array;
}

/** A device's published keys other than its one-time prekeys. */
export interface DeviceKeysRecord {
  /** The device. */
  deviceId: string;
  /** Its user. */
  userId: string;
  /** libsignal's registration id; never changes for a device. */
  registrationId: number;
  /** The identity public key; never changes for a device. */
  identityKey: Uint8Array;
  /** The current signed EC prekey. */
  signedPrekey: SignedPrekeyRecord;
  /** The current Kyber last-resort prekey (handed out when no one-time Kyber prekey is left). */
  kyberLastResort: SignedPrekeyRecord;
}

/** One-time prekeys a device has left. */
export interface PrekeyCountsRecord {
  /** One-time EC prekeys. */
  ec: number;
  /** One-time Kyber prekeys. */
  kyber: number;
}

/** What one KeyStore.putKeys call writes for one device. */
export interface DeviceKeysWrite {
  /** The device. */
  deviceId: string;
  /** Its user. */
  userId: string;
  /**
   * The identity key the device's record must have. When the device has no record yet, the write
   * creates one with it (and then registrationId, signedPrekey and kyberLastResort are required);
   * when the stored identity key differs, the whole write is refused (StoreError "conflict").
   */
  identityKey: Uint8Array;
  /** The registration id, required with the first write; must equal the stored one afterwards. */
  registrationId: number;
  /** Replaces the signed EC prekey. */
  signedPrekey?: SignedPrekeyRecord;
  /** Replaces the Kyber last-resort prekey. */
  kyberLastResort?: SignedPrekeyRecord;
  /** One-time EC prekeys to add; ids already stored for the device are skipped. */
  oneTimeEc?: OneTimePrekeyRecord[];
  /** One-time Kyber prekeys to add; ids already stored for the device are skipped. */
  oneTimeKyber?: OneTimePrekeyRecord[];
}

/** What one take from a device's one-time prekeys returned. */
export interface PrekeyTake {
  /** The EC prekey handed out, if the device had one left; it is deleted. */
  ec?: OneTimePrekeyRecord;
  /** The Kyber prekey handed out, if the device had one left; it is deleted. */
  kyber?: OneTimePrekeyRecord;
  /** What is left after the take. */
  remaining: PrekeyCountsRecord;
}

/** The end-to-end encryption key directory: public keys only, per device. */
export interface KeyStore {
  /**
   * Writes a device's keys. Refuses, writing nothing, with StoreError "conflict" when the device's
   * stored identity key or registration id differs from the write's (checked atomically with the
   * write, so of two concurrent first uploads with different identities one wins), and with
   * "limit" when the device would then hold more than maxOneTimePerKind one-time prekeys of a
   * kind (ids already stored are skipped, not counted twice). Throws a RangeError for a first
   * write without both signed prekeys. Returns the counts after the write.
   *
   * LMDB applies the whole write atomically. ScyllaDB writes the signed prekeys first and the
   * one-time prekeys after them, and checks the limit before writing, so concurrent uploads of
   * one device may pass it by one batch; a failure in between is completed by a retry.
   */
  putKeys(write: DeviceKeysWrite, maxOneTimePerKind: number): Promise<PrekeyCountsRecord>;
  /** A device's keys, undefined when it never uploaded any (or they were deleted). */
  getKeys(deviceId: string): Promise<DeviceKeysRecord | undefined>;
  /** One-time prekeys the device has left (0 and 0 for an unknown device). */
  countPrekeys(deviceId: string): Promise<PrekeyCountsRecord>;
  /**
   * Hands out and deletes one one-time prekey of each kind of the device, atomically per key:
   * of any number of concurrent takes, each stored key goes to at most one of them. A kind with
   * no key left is absent from the result.
   */
  takePrekeys(deviceId: string): Promise<PrekeyTake>;
  /** Deletes everything stored for the device (its revocation). Idempotent. */
  deleteKeys(deviceId: string): Promise<void>;
}
