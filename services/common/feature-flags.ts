/**
 * Which variant of each feature flag a user gets. The hash of (flag, user id) places the user at
 * a point of [0, total weight); the variants, sorted by name, cover consecutive stretches of it
 * as long as their weights. Nothing is stored: every server computes the same answer, a user keeps
 * their variant while the flag's variants and weights stay as they are, and the users of one flag
 * are spread independently of those of another (the flag's name is hashed with the id).
 */
import { createHash } from "node:crypto";
import type { FeatureFlag } from "./config/flags.js";

/** The point of [0, total) where a user falls for a flag: the first 8 bytes of a SHA-256. */
export function bucketOf(flag: string, userId: string, total: number): number {
  // NUL cannot occur in a flag name, so ("a", "bc") and ("ab", "c") never hash alike.
  const digest = createHash("sha256").update(`${flag}\0${userId}`).digest();
  // 2^64 against a total of at most 10^6: the modulo's bias is below 10^-13.
  return Number(digest.readBigUInt64BE(0) % BigInt(total));
}

/** The user's variant of one flag. */
export function assignVariant(flag: FeatureFlag, userId: string): string {
  const total = flag.variants.reduce((sum, v) => sum + v.weight, 0);
  let point = bucketOf(flag.name, userId, total);
  for (const v of flag.variants) {
    if (point < v.weight) return v.name;
    point -= v.weight;
  }
  // Unreachable with a checked configuration (total >= 1); the last variant keeps it total.
  return flag.variants[flag.variants.length - 1]!.name;
}

/** The user's variant of every flag, in the flags' order. */
export function assignFlags(
  flags: readonly FeatureFlag[],
  userId: string,
): { flag: string; variant: string }[] {
  return flags.map((f) => ({ flag: f.name, variant: assignVariant(f, userId) }));
}
