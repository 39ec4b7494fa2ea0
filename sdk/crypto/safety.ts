import { timingSafeEqual } from "node:crypto";
import { Fingerprint, PublicKey, ScannableFingerprint } from "@signalapp/libsignal-client";
import { toBytes } from "../storage/records.js";

/** Signal's parameters: 5200 SHA-512 iterations, fingerprint version 2. */
export const SAFETY_NUMBER_ITERATIONS = 5200;
export const SAFETY_NUMBER_VERSION = 2;

/** One side of a safety number: a user's stable id and an identity key. */
export interface SafetyParty {
  /** The user's stable id ("u_..."), not the changeable username. */
  userId: string;
  /** The identity public key (libsignal's serialized 33 bytes, or the key itself). */
  identityKey: PublicKey | Uint8Array;
}

/** A safety number as people compare it. */
export interface SafetyNumber {
  /** 60 digits; the same on both sides (each side's half is ordered canonically). */
  digits: string;
  /** The same digits in 12 groups of 5, for display. */
  display: string;
  /** The scannable form (libsignal's protobuf, for a QR code); differs per side, compare with compareScannable. */
  scannable: Uint8Array;
}

/** Computes the safety number of our side and theirs. */
export function safetyNumber(local: SafetyParty, remote: SafetyParty): SafetyNumber {
  const fingerprint = Fingerprint.new(
    SAFETY_NUMBER_ITERATIONS,
    SAFETY_NUMBER_VERSION,
    toBytes(Buffer.from(local.userId, "utf8")),
    asKey(local.identityKey),
    toBytes(Buffer.from(remote.userId, "utf8")),
    asKey(remote.identityKey),
  );
  const digits = fingerprint.displayableFingerprint().toString();
  return {
    digits,
    display: (digits.match(/.{5}/g) ?? []).join(" "),
    scannable: fingerprint.scannableFingerprint().toBuffer(),
  };
}

/** Compares two displayed safety numbers, ignoring spaces, in constant time. */
export function safetyNumbersMatch(a: string, b: string): boolean {
  const x = Buffer.from(a.replace(/\s+/g, ""), "utf8");
  const y = Buffer.from(b.replace(/\s+/g, ""), "utf8");
  return x.length === y.length && timingSafeEqual(x, y);
}

/**
 * Compares our scannable safety number with one scanned from the other device. True when they
 * match; false when the keys differ. Throws when the scanned code is not a safety number, or is of
 * another version, or was made for other users.
 */
export function compareScannable(ours: Uint8Array, scanned: Uint8Array): boolean {
  try {
    return ScannableFingerprint._fromBuffer(toBytes(ours)).compare(
      ScannableFingerprint._fromBuffer(toBytes(scanned)),
    );
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new Error(`the scanned code is not a comparable safety number: ${reason}`, { cause: err });
  }
}

function asKey(key: PublicKey | Uint8Array): PublicKey {
  return key instanceof PublicKey ? key : PublicKey.deserialize(toBytes(key));
}
