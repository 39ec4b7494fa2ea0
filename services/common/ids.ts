import { createHash, randomBytes, randomFillSync } from "node:crypto";

// Crockford's base32: case-insensitive, no ambiguous letters, and sorts like the bytes it encodes.
const ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz";

function base32(bytes: Uint8Array, length: number): string {
  let out = "";
  let buffer = 0;
  let bits = 0;
  for (const byte of bytes) {
    buffer = (buffer << 8) | byte;
    bits += 8;
    while (bits >= 5 && out.length < length) {
      out += ALPHABET[(buffer >>> (bits - 5)) & 31];
      bits -= 5;
    }
    buffer &= (1 << bits) - 1;
  }
  return out;
}

/** Random bytes drawn ahead, so an id costs a slice and not a call into the system's RNG. */
const POOL_BYTES = 17 * 256;
const pool = Buffer.alloc(POOL_BYTES);
let poolOffset = POOL_BYTES;

function random17(): Uint8Array {
  if (poolOffset + 17 > POOL_BYTES) {
    randomFillSync(pool);
    poolOffset = 0;
  }
  const bytes = pool.subarray(poolOffset, poolOffset + 17);
  poolOffset += 17;
  return bytes;
}

/**
 * A random id with a type prefix: 26 base32 characters carry 130 bits. Each id's bytes are used
 * once and only inside this call (every stream and session takes one, so a call into the RNG
 * apiece showed in the connect path's profile).
 */
export function newId(prefix: "u" | "dv" | "g" | "s" | "iv"): string {
  return `${prefix}_${base32(random17(), 26)}`;
}

/**
 * The direct conversation of two users. Deterministic so that both users (and concurrent first
 * sends) arrive at the same conversation without a lookup table.
 */
export function directConversationId(userA: string, userB: string): string {
  const [first, second] = userA < userB ? [userA, userB] : [userB, userA];
  return `d_${base32(createHash("sha256").update(`${first}\n${second}`).digest(), 26)}`;
}

/** A random secret for people to copy: base64url of 32 bytes. */
export function newSecret(bytes = 32): string {
  return randomBytes(bytes).toString("base64url");
}

/** SHA-256, hex. Secrets here are 256-bit random values, so a fast hash is the right one. */
export function sha256Hex(value: string): string {
  return createHash("sha256").update(value).digest("hex");
}
