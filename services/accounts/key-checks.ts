import { KEMPublicKey, PublicKey } from "@signalapp/libsignal-client";
import { InvalidInputError } from "../common/errors.js";

/**
 * The checks of uploaded keys that need no state: sizes, that a key parses, that a signature
 * verifies against the identity key, that ids are distinct. Keys (keys.ts) runs them before it
 * stores anything; each failure names the field.
 */

/** A serialized EC (Curve25519) public key: type byte 0x05 and 32 bytes. */
const EC_KEY_BYTES = 33;
/** An XEdDSA signature. */
const SIGNATURE_BYTES = 64;
/** Larger than any Kyber public key libsignal knows (Kyber1024: 1569 bytes). */
const MAX_KEM_KEY_BYTES = 2048;

/** A signed prekey as uploaded (the wire's SignedEcPrekey and KyberPrekey have this shape). */
export interface SignedPrekeyInput {
  /** The id the client chose, unique per kind on its device. */
  keyId: number;
  /** The serialized public key (EC: 33 bytes; Kyber: up to 2,048). */
  publicKey: Uint8Array;
  /** The identity key's XEdDSA signature of publicKey (64 bytes). */
  signature: Uint8Array;
}

/** A one-time EC prekey as uploaded. */
export interface EcPrekeyInput {
  /** The id the client chose, unique per kind on its device. */
  keyId: number;
  /** The serialized EC public key (33 bytes). */
  publicKey: Uint8Array;
}

/** True when a and b hold the same bytes. */
export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.compare(a, b) === 0;
}

// libsignal's native calls take Uint8Arrays backed by an ArrayBuffer (not a SharedArrayBuffer).
export function own(value: Uint8Array): Uint8Array<ArrayBuffer> {
  return new Uint8Array(value);
}

/** The EC public key in value; INVALID_ARGUMENT naming field when it is not one. */
export function ecKey(field: string, value: Uint8Array): PublicKey {
  if (value.length !== EC_KEY_BYTES) {
    throw new InvalidInputError(
      `${field}: a serialized EC public key is ${EC_KEY_BYTES} bytes, got ${value.length}`,
    );
  }
  try {
    return PublicKey.deserialize(own(value));
  } catch {
    throw new InvalidInputError(`${field}: not a serialized EC public key`);
  }
}

/** Checks that value is a Kyber public key; INVALID_ARGUMENT naming field when not. */
export function kemKey(field: string, value: Uint8Array): void {
  if (value.length === 0 || value.length > MAX_KEM_KEY_BYTES) {
    throw new InvalidInputError(
      `${field}: a serialized Kyber public key is 1 to ${MAX_KEM_KEY_BYTES} bytes, got ${value.length}`,
    );
  }
  try {
    KEMPublicKey.deserialize(own(value));
  } catch {
    throw new InvalidInputError(`${field}: not a serialized Kyber public key`);
  }
}

/** Checks key's signature against the identity key; INVALID_ARGUMENT naming field when it fails. */
export function verifySignature(identity: PublicKey, field: string, key: SignedPrekeyInput): void {
  if (key.signature.length !== SIGNATURE_BYTES) {
    throw new InvalidInputError(
      `${field} (id ${key.keyId}): a signature is ${SIGNATURE_BYTES} bytes, got ${key.signature.length}`,
    );
  }
  if (!identity.verify(own(key.publicKey), own(key.signature))) {
    throw new InvalidInputError(
      `${field} (id ${key.keyId}): the signature does not verify against the identity key`,
    );
  }
}

/** Checks that no key id appears twice in keys; INVALID_ARGUMENT naming field when one does. */
export function distinctIds(field: string, keys: readonly { keyId: number }[]): void {
  const seen = new Set<number>();
  for (const k of keys) {
    if (seen.has(k.keyId)) throw new InvalidInputError(`${field}: key id ${k.keyId} appears twice`);
    seen.add(k.keyId);
  }
}
