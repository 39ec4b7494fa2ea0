import { webcrypto } from "node:crypto";
import { errors, jwtVerify, SignJWT } from "jose";
import { UnauthenticatedError } from "./errors.js";

const ISSUER = "switchboard";
const AUDIENCE = "switchboard-device";

/** Who a request acts for, established from its access token. */
export interface Principal {
  /** The user. */
  userId: string;
  /** The device. */
  deviceId: string;
  /** When the token expires, in milliseconds since the Unix epoch. */
  expiresAtMs: number;
}

/**
 * Signs and verifies access tokens: HS256 JWTs with the user as subject and the device in `did`.
 * Every role that authenticates holds the same key, so no call to accounts is needed to check a
 * signature; revocation is checked separately (a token outlives nothing but its expiry).
 */
export class Tokens {
  /**
   * The key as a WebCrypto key, imported once: given the raw bytes, jose imports them again for
   * every token it signs or checks, which was about 4 % of the main thread while 10,000 devices
   * connected (docs/benchmarks.md).
   */
  private readonly cryptoKey: Promise<webcrypto.CryptoKey>;

  constructor(
    key: Uint8Array,
    private readonly ttlSeconds: number,
  ) {
    this.cryptoKey = webcrypto.subtle.importKey("raw", key, { name: "HMAC", hash: "SHA-256" }, false, [
      "sign",
      "verify",
    ]);
    // Nothing awaits it before the first token; a bad key is reported there, not as unhandled.
    this.cryptoKey.catch(() => {});
  }

  /** Issues a token for a device. */
  async issue(
    userId: string,
    deviceId: string,
    nowMs: number,
  ): Promise<{ token: string; expiresAtMs: number }> {
    const issuedAt = Math.floor(nowMs / 1000);
    const expiresAt = issuedAt + this.ttlSeconds;
    const token = await new SignJWT({ did: deviceId })
      .setProtectedHeader({ alg: "HS256", typ: "JWT" })
      .setIssuer(ISSUER)
      .setAudience(AUDIENCE)
      .setSubject(userId)
      .setIssuedAt(issuedAt)
      .setExpirationTime(expiresAt)
      .sign(await this.cryptoKey);
    return { token, expiresAtMs: expiresAt * 1000 };
  }

  /** Verifies an `authorization` header value; throws UnauthenticatedError with the reason. */
  async verifyHeader(header: string | null): Promise<Principal> {
    if (header === null || header === "") throw new UnauthenticatedError("missing authorization header");
    const match = /^Bearer ([A-Za-z0-9_\-.]+)$/.exec(header);
    if (match === null) throw new UnauthenticatedError("authorization header must be 'Bearer <token>'");
    try {
      const { payload } = await jwtVerify(match[1]!, await this.cryptoKey, {
        issuer: ISSUER,
        audience: AUDIENCE,
        algorithms: ["HS256"],
      });
      if (
        typeof payload.sub !== "string" ||
        typeof payload.did !== "string" ||
        typeof payload.exp !== "number"
      ) {
        throw new UnauthenticatedError("access token is missing its claims");
      }
      return { userId: payload.sub, deviceId: payload.did, expiresAtMs: payload.exp * 1000 };
    } catch (err) {
      if (err instanceof UnauthenticatedError) throw err;
      if (err instanceof errors.JWTExpired) throw new UnauthenticatedError("access token expired");
      // The verifier's own words (which check failed) stay out of the answer.
      throw new UnauthenticatedError("access token is invalid");
    }
  }
}
