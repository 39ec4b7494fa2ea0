import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Code } from "@connectrpc/connect";
import { wireCodeOf } from "./boundary.js";
import { loadConfig } from "./config.js";
import { directConversationId, newId } from "./ids.js";
import { shardOf } from "./shard.js";
import { requireClientMsgId, requireId, requireText, requireUsername } from "./validate.js";

describe("ids", () => {
  it("direct conversation ids are the same for both orders and differ per pair", () => {
    const a = newId("u");
    const b = newId("u");
    const c = newId("u");
    assert.equal(directConversationId(a, b), directConversationId(b, a));
    assert.notEqual(directConversationId(a, b), directConversationId(a, c));
    assert.match(directConversationId(a, b), /^d_[0-9a-z]{26}$/);
    assert.match(newId("g"), /^g_[0-9a-z]{26}$/);
  });

  it("random ids do not repeat across refills of the random pool", () => {
    // 256 ids per refill: 10,000 ids cross dozens of refills, and no bytes are used twice.
    const ids = new Set(Array.from({ length: 10_000 }, () => newId("s")));
    assert.equal(ids.size, 10_000);
    for (const id of ids) assert.match(id, /^s_[0-9a-z]{26}$/);
  });

  it("shards spread ids and are stable", () => {
    const counts = new Array<number>(16).fill(0);
    for (let i = 0; i < 16_000; i++) counts[shardOf(newId("g"), 16)]!++;
    for (const n of counts) assert.ok(n > 700 && n < 1300, `uneven shard load: ${counts.join(",")}`);
    assert.equal(shardOf("g_abc", 16), shardOf("g_abc", 16));
  });
});

describe("validation", () => {
  const invalid = (fn: () => unknown) =>
    assert.throws(fn, (e: unknown) => wireCodeOf(e) === Code.InvalidArgument);
  it("accepts good values and refuses bad ones with INVALID_ARGUMENT", () => {
    assert.equal(requireClientMsgId("abc-_09"), "abc-_09");
    invalid(() => requireClientMsgId(""));
    invalid(() => requireClientMsgId("x".repeat(65)));
    invalid(() => requireClientMsgId("has space"));
    assert.equal(requireUsername("alice.b_1"), "alice.b_1");
    invalid(() => requireUsername("Al"));
    invalid(() => requireUsername("UPPER"));
    const id = newId("u");
    assert.equal(requireId("user_id", id, "u"), id);
    invalid(() => requireId("user_id", id, "dv"));
    invalid(() => requireId("conversation_id", id, "conversation"));
    invalid(() => requireText("title", "", 1, 10));
    invalid(() => requireText("title", "a\u0000b", 1, 10));
    assert.equal(requireText("title", "héllo 👋", 1, 7), "héllo 👋");
  });
});

describe("loadConfig", () => {
  it("reads the environment under explicit input and refuses bad values naming them", () => {
    const config = loadConfig({ port: 1234 }, { SWITCHBOARD_PORT: "999", SWITCHBOARD_SENDS_PER_SECOND: "7" });
    assert.equal(config.port, 1234);
    assert.equal(config.limits.sendsPerSecond, 7);
    assert.throws(() => loadConfig({}, { SWITCHBOARD_SEND_BURST: "lots" }), /SWITCHBOARD_SEND_BURST/);
    assert.throws(() => loadConfig({}, { SWITCHBOARD_TOKEN_KEY: "c2hvcnQ" }), /at least 32 bytes/);
    assert.throws(() => loadConfig({ shardCount: 0 }, {}), /shardCount/);
  });
});
