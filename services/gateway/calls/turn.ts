/**
 * TURN credentials in the coturn REST API scheme (draft-uberti-behave-turn-rest, coturn's
 * use-auth-secret): the relay recomputes the password from the username with the secret it
 * shares with this server and refuses a username whose expiry has passed, so no user list is
 * ever synchronised and a leaked credential dies on its own.
 */
import { createHmac } from "node:crypto";
import type { TurnConfig } from "../../common/config.js";

/** One relay list entry as RTCIceServer takes it. */
export interface IssuedIceServer {
  /** turn:, turns: or stun: URIs. */
  urls: string[];
  /** The TURN username ("<expiry in Unix seconds>:<user id>"); empty for STUN. */
  username: string;
  /** base64(HMAC-SHA1(secret, username)); empty for STUN. */
  credential: string;
}

/** What a device is handed for its next call. */
export interface IssuedTurnCredentials {
  iceServers: IssuedIceServer[];
  /** When the relays stop accepting them, in milliseconds since the Unix epoch (0: no relays). */
  expiresAtMs: number;
}

/** The password coturn expects for username with this secret. */
export function turnPassword(secret: string, username: string): string {
  return createHmac("sha1", secret).update(username).digest("base64");
}

/**
 * Credentials for userId valid until nowMs + the configured lifetime. TURN URIs share one
 * credential; STUN URIs need none and come as an entry of their own.
 */
export function issueTurnCredentials(
  config: TurnConfig,
  userId: string,
  nowMs: number,
): IssuedTurnCredentials {
  const turn = config.urls.filter((u) => u.startsWith("turn"));
  const stun = config.urls.filter((u) => u.startsWith("stun"));
  const iceServers: IssuedIceServer[] = [];
  let expiresAtMs = 0;
  if (turn.length > 0 && config.secret !== undefined) {
    const expiry = Math.floor(nowMs / 1000) + config.ttlSeconds;
    const username = `${expiry}:${userId}`;
    iceServers.push({ urls: turn, username, credential: turnPassword(config.secret, username) });
    expiresAtMs = expiry * 1000;
  }
  if (stun.length > 0) iceServers.push({ urls: stun, username: "", credential: "" });
  return { iceServers, expiresAtMs };
}
