import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { loadCalls } from "./calls.js";

const SECRET = "a-secret-of-sixteen-or-more";

describe("calls settings (TURN)", () => {
  it("has no relays by default, and a day of credential lifetime", () => {
    assert.deepEqual(loadCalls({}), {
      turn: { urls: [], secret: undefined, ttlSeconds: 86_400 },
      sfuUrl: undefined,
      sfuSecret: undefined,
    });
  });

  it("takes an SFU URL for group calls, and refuses one devices could not use", () => {
    assert.equal(
      loadCalls({ SWITCHBOARD_CALL_SFU_URL: "wss://sfu.example.com/rooms" }).sfuUrl,
      "wss://sfu.example.com/rooms",
    );
    assert.throws(() => loadCalls({ SWITCHBOARD_CALL_SFU_URL: "sfu.example.com" }), /is not a URL/);
    assert.throws(
      () => loadCalls({ SWITCHBOARD_CALL_SFU_URL: "turn:sfu.example.com:3478" }),
      /must be a wss:, https:, ws: or http: URL/,
    );
    assert.throws(
      () => loadCalls({ SWITCHBOARD_CALL_SFU_URL: `https://sfu.example.com/${"x".repeat(600)}` }),
      /at most 512 bytes/,
    );
    assert.equal(
      loadCalls({ SWITCHBOARD_CALL_SFU_URL: "wss://sfu.example.com", SWITCHBOARD_CALL_SFU_SECRET: SECRET })
        .sfuSecret,
      SECRET,
    );
    assert.throws(
      () => loadCalls({ SWITCHBOARD_CALL_SFU_SECRET: SECRET }),
      /set SWITCHBOARD_CALL_SFU_URL too/,
    );
    assert.throws(
      () =>
        loadCalls({
          SWITCHBOARD_CALL_SFU_URL: "wss://sfu.example.com",
          SWITCHBOARD_CALL_SFU_SECRET: "short",
        }),
      /SWITCHBOARD_CALL_SFU_SECRET must be at least 16 bytes/,
    );
  });

  it("takes TURN and STUN URIs with the secret and a lifetime", () => {
    const calls = loadCalls({
      SWITCHBOARD_TURN_URLS:
        "turn:127.0.0.1:3478?transport=udp, turns:relay.example.com:5349, stun:relay.example.com",
      SWITCHBOARD_TURN_SECRET: SECRET,
      SWITCHBOARD_TURN_TTL_SECONDS: "600",
    });
    assert.deepEqual(calls.turn, {
      urls: ["turn:127.0.0.1:3478?transport=udp", "turns:relay.example.com:5349", "stun:relay.example.com"],
      secret: SECRET,
      ttlSeconds: 600,
    });
  });

  it("refuses what relays would not take, naming the variable", () => {
    const refused = (env: Record<string, string>, pattern: RegExp) =>
      assert.throws(() => loadCalls(env), pattern);
    refused(
      { SWITCHBOARD_TURN_URLS: "https://relay.example.com" },
      /SWITCHBOARD_TURN_URLS: not a TURN or STUN URI/,
    );
    refused({ SWITCHBOARD_TURN_URLS: "turn:relay.example.com" }, /SWITCHBOARD_TURN_SECRET is required/);
    refused(
      { SWITCHBOARD_TURN_URLS: "turn:relay.example.com", SWITCHBOARD_TURN_SECRET: "short" },
      /at least 16 bytes/,
    );
    refused(
      { SWITCHBOARD_TURN_TTL_SECONDS: "10" },
      /SWITCHBOARD_TURN_TTL_SECONDS must be between 60 and 604800/,
    );
    refused(
      { SWITCHBOARD_TURN_TTL_SECONDS: "soon" },
      /SWITCHBOARD_TURN_TTL_SECONDS must be a non-negative integer/,
    );
    // STUN needs no secret.
    assert.deepEqual(loadCalls({ SWITCHBOARD_TURN_URLS: "stun:relay.example.com:3478" }).turn.urls, [
      "stun:relay.example.com:3478",
    ]);
  });
});
