import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { SignJWT } from "jose";
import { Tokens } from "./auth.js";
import { UnauthenticatedError } from "./errors.js";

const key = randomBytes(32);

/** A token signed by jose with the raw key bytes, as every release before the imported key did. */
function signedRaw(claims: { sub: string; did: string; exp: number }, signingKey = key): Promise<string> {
  return new SignJWT({ did: claims.did })
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setIssuer("switchboard")
    .setAudience("switchboard-device")
    .setSubject(claims.sub)
    .setIssuedAt()
    .setExpirationTime(claims.exp)
    .sign(signingKey);
}

async function refusal(tokens: Tokens, header: string): Promise<string> {
  try {
    await tokens.verifyHeader(header);
  } catch (err) {
    assert.ok(err instanceof UnauthenticatedError, String(err));
    return err.message;
  }
  assert.fail(`accepted: ${header}`);
}

describe("Tokens: device access tokens (HS256)", () => {
  it("verifies what it issued, on every role that holds the key", async () => {
    const now = Date.now();
    const { token, expiresAtMs } = await new Tokens(key, 3600).issue("u_1", "dv_1", now);
    const principal = await new Tokens(key, 3600).verifyHeader(`Bearer ${token}`);
    assert.deepEqual(principal, { userId: "u_1", deviceId: "dv_1", expiresAtMs });
  });

  it("accepts tokens signed with the raw key bytes, as earlier releases issued them (a rolling upgrade)", async () => {
    const exp = Math.floor(Date.now() / 1000) + 600;
    const token = await signedRaw({ sub: "u_2", did: "dv_2", exp });
    const principal = await new Tokens(key, 3600).verifyHeader(`Bearer ${token}`);
    assert.deepEqual(principal, { userId: "u_2", deviceId: "dv_2", expiresAtMs: exp * 1000 });
  });

  it("refuses another key's token, a tampered one, an expired one and one without a signature", async () => {
    const tokens = new Tokens(key, 3600);
    const exp = Math.floor(Date.now() / 1000) + 600;
    const foreign = await signedRaw({ sub: "u_3", did: "dv_3", exp }, randomBytes(32));
    assert.equal(await refusal(tokens, `Bearer ${foreign}`), "access token is invalid");

    const { token } = await tokens.issue("u_3", "dv_3", Date.now());
    const [header, , signature] = token.split(".");
    const body = Buffer.from(
      JSON.stringify({ did: "dv_9", sub: "u_9", exp, iss: "switchboard", aud: "switchboard-device" }),
    ).toString("base64url");
    assert.equal(await refusal(tokens, `Bearer ${header}.${body}.${signature}`), "access token is invalid");

    const unsigned = `${Buffer.from(JSON.stringify({ alg: "none", typ: "JWT" })).toString("base64url")}.${body}.`;
    assert.equal(await refusal(tokens, `Bearer ${unsigned}`), "access token is invalid");

    const { token: old } = await new Tokens(key, 1).issue("u_3", "dv_3", Date.now() - 10_000);
    assert.equal(await refusal(tokens, `Bearer ${old}`), "access token expired");
    assert.equal(await refusal(tokens, ""), "missing authorization header");
  });
});
