import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { loadWeb } from "./web.js";

describe("SWITCHBOARD_CORS_ORIGINS", () => {
  it("is empty by default and takes serialized http(s) origins or * alone", () => {
    assert.deepEqual(loadWeb(undefined, {}).corsOrigins, []);
    assert.deepEqual(
      loadWeb(undefined, { SWITCHBOARD_CORS_ORIGINS: "https://chat.example.com, http://127.0.0.1:8080" })
        .corsOrigins,
      ["https://chat.example.com", "http://127.0.0.1:8080"],
    );
    assert.deepEqual(loadWeb(undefined, { SWITCHBOARD_CORS_ORIGINS: "*" }).corsOrigins, ["*"]);
    assert.deepEqual(
      loadWeb({ corsOrigins: ["https://a.example"] }, { SWITCHBOARD_CORS_ORIGINS: "*" }).corsOrigins,
      ["https://a.example"],
    );
  });

  it("refuses what no browser sends as an origin, naming the variable and the fix", () => {
    const refused = (value: string, pattern: RegExp) =>
      assert.throws(() => loadWeb(undefined, { SWITCHBOARD_CORS_ORIGINS: value }), pattern);
    refused(
      "https://chat.example.com/",
      /not an http\(s\) origin: "https:\/\/chat\.example\.com\/" \(write "https:\/\/chat\.example\.com"\)/,
    );
    refused("https://Chat.example.com", /write "https:\/\/chat\.example\.com"/);
    refused("chat.example.com", /SWITCHBOARD_CORS_ORIGINS: not an http\(s\) origin: "chat\.example\.com"/);
    refused("ftp://files.example", /not an http\(s\) origin/);
    refused("*, https://a.example", /"\*" allows every origin and stands alone/);
  });
});
