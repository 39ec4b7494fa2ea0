import { createHmac } from "node:crypto";

/** The media settings are read with the rest of the configuration (services/common/config/media.ts). */
export { loadMediaConfig, type MediaConfig } from "../common/config.js";

/**
 * The local engine's URL key when none is configured: derived from the access-token key, so
 * every media process of a deployment signs alike and the token key itself is never reused.
 */
export function deriveMediaUrlKey(tokenKey: Uint8Array): Uint8Array {
  return createHmac("sha256", tokenKey).update("switchboard media url key v1").digest();
}
