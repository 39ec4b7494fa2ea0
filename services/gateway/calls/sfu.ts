/**
 * Admissions for the SFU (docs/calls.md, "Group calls"): the host's gateway gives a device it lets
 * into a group call a short-lived token, signed with the secret the SFU shares, so the SFU lets
 * in exactly the devices the server let in (and the cap of 32 holds there too). The SFU checks
 * it with verifySfuToken's rules: HMAC-SHA256 over the payload, and the expiry.
 */
import { createHmac, timingSafeEqual } from "node:crypto";

/** How long an admission is good for connecting to the SFU, in seconds (a re-JOIN gets a new one). */
export const SFU_TOKEN_TTL_SECONDS = 600;

/** What an admission says. */
export interface SfuAdmission {
  /** The call id. */
  c: string;
  /** The group conversation. */
  g: string;
  /** The user. */
  u: string;
  /** The device. */
  d: string;
  /** When it stops being good, in Unix seconds. */
  exp: number;
}

/** "<payload>.<signature>", both base64url; the payload is the admission's JSON. */
export function issueSfuToken(
  secret: string,
  who: { callId: string; conversationId: string; userId: string; deviceId: string },
  nowMs: number,
): string {
  const admission: SfuAdmission = {
    c: who.callId,
    g: who.conversationId,
    u: who.userId,
    d: who.deviceId,
    exp: Math.floor(nowMs / 1000) + SFU_TOKEN_TTL_SECONDS,
  };
  const payload = Buffer.from(JSON.stringify(admission)).toString("base64url");
  return `${payload}.${sign(secret, payload)}`;
}

/** The admission a token carries, if its signature holds and it has not expired; undefined otherwise. */
export function verifySfuToken(secret: string, token: string, nowMs: number): SfuAdmission | undefined {
  const [payload, signature, extra] = token.split(".");
  if (payload === undefined || signature === undefined || extra !== undefined) return undefined;
  const want = Buffer.from(sign(secret, payload));
  const got = Buffer.from(signature);
  if (want.length !== got.length || !timingSafeEqual(want, got)) return undefined;
  let admission: SfuAdmission;
  try {
    admission = JSON.parse(Buffer.from(payload, "base64url").toString()) as SfuAdmission;
  } catch {
    return undefined;
  }
  return typeof admission.exp === "number" && admission.exp * 1000 > nowMs ? admission : undefined;
}

function sign(secret: string, payload: string): string {
  return createHmac("sha256", secret).update(payload).digest("base64url");
}
