// http_ece (Encrypted Content-Encoding for HTTP, RFC 8188) ships no types; this covers the part
// the Web Push fake service uses. Binary values are Buffers or base64url strings.
declare module "http_ece" {
  import type { ECDH } from "node:crypto";

  interface EceParams {
    /** "aes128gcm" (RFC 8188, the Web Push standard) unless given. */
    version?: "aes128gcm" | "aesgcm";
    /** The receiver's key pair when decrypting (Web Push: the subscription's p256dh). */
    privateKey?: ECDH;
    /** The subscription's authentication secret (16 bytes). */
    authSecret?: Buffer | string;
    /** The other party's public key (encrypting, or decrypting "aesgcm"). */
    dh?: Buffer | string;
    salt?: Buffer | string;
    key?: Buffer | string;
    keyid?: Buffer | string;
    rs?: number;
  }

  interface Ece {
    /** Throws when the content cannot be authenticated or decrypted. */
    decrypt(content: Buffer, params: EceParams): Buffer;
    encrypt(content: Buffer, params: EceParams): Buffer;
  }

  const ece: Ece;
  export = ece;
}
