// The two JSON documents of the Signal stores (`identities.json`, `local.json`); the record
// directories hold libsignal's serialized records as they are.

export interface IdentityFile {
  version: 1;
  /** By libsignal address name: base64 key, verified flag, first seen. */
  identities: Record<string, { key: string; verified: boolean; firstSeenMs: number; pendingKey?: string }>;
}

export interface LocalFile {
  version: 1;
  /** Our identity key pair, libsignal's serialized form, base64. */
  identityKeyPair: string;
  /** Our registration id, 1 to 16383. */
  registrationId: number;
  /** Next id to hand out per prekey kind (one counter for all Kyber keys: one id space). */
  nextIds: { ec: number; signed: number; kyber: number };
  /** Ids of Kyber prekeys that are last-resort keys (kept after use). */
  lastResortKyberIds: number[];
  /** When the identity was created, in milliseconds since the Unix epoch. */
  createdAtMs: number;
}

/** Prekey ids stay below 2^24, as in Signal's clients; counters wrap and skip ids still stored. */
export const MAX_PREKEY_ID = 0xffffff;
