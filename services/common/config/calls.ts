/**
 * Calls: the TURN relays devices are sent to, and the shared secret their short-lived credentials
 * are signed with (the coturn REST API scheme; docs/calls.md). Media never passes through
 * Switchboard, so this is all the server needs to know about relays.
 */
import { z } from "zod";
import { fail } from "./error.js";
import { check, type Env, intVariable, listOf, nonEmptyText } from "./schema.js";

/** The TURN relays and how their credentials are made. */
export interface TurnConfig {
  /**
   * ICE server URIs handed to devices (`turn:relay.example.com:3478?transport=udp`,
   * `turns:relay.example.com:5349`, `stun:relay.example.com:3478`); empty: no relays.
   */
  urls: string[];
  /** The secret shared with the TURN servers (coturn's static-auth-secret); undefined without relays. */
  secret: string | undefined;
  /** How long issued credentials are accepted by the relays, in seconds. */
  ttlSeconds: number;
}

/** The calls section. */
export interface CallsConfig {
  turn: TurnConfig;
  /**
   * The SFU group calls send media to (`wss://sfu.example.com/`), handed to devices on a group
   * call's ring; undefined: group calls are a mesh of peer connections. Signalling is the same.
   */
  sfuUrl: string | undefined;
  /**
   * The secret shared with the SFU: devices let into a group call get an admission for the SFU
   * signed with it; undefined: no admissions (the SFU decides on its own who comes in).
   */
  sfuSecret: string | undefined;
}

/** Shortest and longest credential lifetimes accepted, in seconds (a minute; a week). */
export const TURN_TTL_BOUNDS = { min: 60, max: 7 * 24 * 3600 } as const;

/** The calls settings' variables. */
export const callVariables = z.object({
  SWITCHBOARD_TURN_URLS: listOf(),
  SWITCHBOARD_TURN_SECRET: nonEmptyText(),
  // A day, as the TURN REST API draft suggests: long enough for any call on one allocation.
  SWITCHBOARD_TURN_TTL_SECONDS: intVariable("SWITCHBOARD_TURN_TTL_SECONDS", 86_400, true),
  SWITCHBOARD_CALL_SFU_URL: nonEmptyText(),
  SWITCHBOARD_CALL_SFU_SECRET: nonEmptyText(),
});

/** Longest SFU URL accepted, in bytes: it rides on every group call's ring. */
export const SFU_URL_MAX_BYTES = 512;

const ICE_URI = /^(turns?|stuns?):[^\s/?#]+(\?transport=(udp|tcp))?$/;

/** The calls settings from the environment, each checked. */
export function loadCalls(env: Env): CallsConfig {
  const vars = check(callVariables, env);
  const urls = vars.SWITCHBOARD_TURN_URLS;
  for (const url of urls) {
    if (!ICE_URI.test(url))
      fail(
        `SWITCHBOARD_TURN_URLS: not a TURN or STUN URI: "${url}" (write turn:host:port, turns:host:port or stun:host:port, optionally ?transport=udp|tcp)`,
      );
  }
  const ttlSeconds = vars.SWITCHBOARD_TURN_TTL_SECONDS;
  if (ttlSeconds < TURN_TTL_BOUNDS.min || ttlSeconds > TURN_TTL_BOUNDS.max)
    fail(
      `SWITCHBOARD_TURN_TTL_SECONDS must be between ${TURN_TTL_BOUNDS.min} and ${TURN_TTL_BOUNDS.max}, got ${ttlSeconds}`,
    );
  const secret = vars.SWITCHBOARD_TURN_SECRET;
  const relays = urls.some((u) => u.startsWith("turn"));
  if (relays && secret === undefined)
    fail("SWITCHBOARD_TURN_SECRET is required with turn: or turns: URLs in SWITCHBOARD_TURN_URLS");
  // Anything shorter is guessable offline from one issued credential.
  if (secret !== undefined && Buffer.byteLength(secret) < 16)
    fail("SWITCHBOARD_TURN_SECRET must be at least 16 bytes");
  const sfuSecret = vars.SWITCHBOARD_CALL_SFU_SECRET;
  if (sfuSecret !== undefined && vars.SWITCHBOARD_CALL_SFU_URL === undefined)
    fail("SWITCHBOARD_CALL_SFU_SECRET is for an SFU: set SWITCHBOARD_CALL_SFU_URL too");
  if (sfuSecret !== undefined && Buffer.byteLength(sfuSecret) < 16)
    fail("SWITCHBOARD_CALL_SFU_SECRET must be at least 16 bytes");
  return {
    turn: { urls, secret, ttlSeconds },
    sfuUrl: sfuUrl(vars.SWITCHBOARD_CALL_SFU_URL),
    sfuSecret,
  };
}

/** The SFU URL, checked: wss:, https:, ws: or http:, at most SFU_URL_MAX_BYTES. */
function sfuUrl(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return fail(`SWITCHBOARD_CALL_SFU_URL is not a URL: "${value}"`);
  }
  if (!["wss:", "https:", "ws:", "http:"].includes(url.protocol))
    fail(`SWITCHBOARD_CALL_SFU_URL must be a wss:, https:, ws: or http: URL, got "${value}"`);
  if (Buffer.byteLength(value) > SFU_URL_MAX_BYTES)
    fail(`SWITCHBOARD_CALL_SFU_URL must be at most ${SFU_URL_MAX_BYTES} bytes`);
  return value;
}
