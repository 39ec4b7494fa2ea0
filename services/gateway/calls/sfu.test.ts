import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { issueSfuToken, SFU_TOKEN_TTL_SECONDS, verifySfuToken } from "./sfu.js";

const SECRET = "a-secret-shared-with-the-sfu";
const who = { callId: "c1", conversationId: "g_1", userId: "u_1", deviceId: "dv_1" };

describe("SFU admissions", () => {
  it("verifies with the secret until it expires", () => {
    const now = 1_700_000_000_000;
    const token = issueSfuToken(SECRET, who, now);
    assert.deepEqual(verifySfuToken(SECRET, token, now), {
      c: "c1",
      g: "g_1",
      u: "u_1",
      d: "dv_1",
      exp: now / 1000 + SFU_TOKEN_TTL_SECONDS,
    });
    assert.equal(verifySfuToken(SECRET, token, now + SFU_TOKEN_TTL_SECONDS * 1000), undefined, "expired");
    assert.equal(verifySfuToken("another-secret-of-some-length", token, now), undefined);
  });

  it("refuses a payload changed under its signature, and malformed tokens", () => {
    const now = 1_700_000_000_000;
    const [, signature] = issueSfuToken(SECRET, who, now).split(".");
    const forged = Buffer.from(JSON.stringify({ c: "c1", g: "g_1", u: "u_2", d: "dv_2", exp: 2e9 })).toString(
      "base64url",
    );
    assert.equal(verifySfuToken(SECRET, `${forged}.${signature}`, now), undefined);
    for (const bad of ["", "a", "a.b.c", "."]) assert.equal(verifySfuToken(SECRET, bad, now), undefined);
  });
});
