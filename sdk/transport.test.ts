import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { connectToServer, isNetworkFailure, sameHostStreamUrl } from "./transport.js";

describe("isNetworkFailure", () => {
  it("tells a reset connection from a server's ABORTED status", () => {
    // What connect-node makes of a socket reset when a gateway process dies.
    const reset = Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET", syscall: "read" });
    const local = new ConnectError("read ECONNRESET", Code.Aborted, undefined, undefined, reset);
    assert.equal(isNetworkFailure(local), true);
    // What a gateway sends when a newer stream of the device replaced this one.
    const replaced = new ConnectError("replaced by a newer stream of this device", Code.Aborted);
    assert.equal(isNetworkFailure(replaced), false);
    assert.equal(isNetworkFailure(new Error("plain")), false);
  });
});

describe("a stream port named by a gateway", () => {
  it("is taken on a host of the server URLs or a name under it, never giving up their TLS", () => {
    const servers = ["https://chat.example.com", "https://eu.example.org:8443"];
    const cases: Array<[string, boolean]> = [
      ["https://chat.example.com:7431", true],
      ["https://CHAT.example.com:7431/", true],
      ["https://stream.chat.example.com", true],
      ["https://eu.example.org:7431", true],
      // Anyone else's host would get the device's bearer token.
      ["https://evil.example.net:7431", false],
      ["https://example.com:7431", false],
      ["https://evilchat.example.com", false],
      ["https://chat.example.com.evil.net", false],
      // The token would cross the network in the clear.
      ["http://chat.example.com:7431", false],
      ["https://user:pw@chat.example.com:7431", false],
      ["ftp://chat.example.com:7431", false],
      ["not a url", false],
    ];
    for (const [url, taken] of cases) assert.equal(sameHostStreamUrl(url, servers), taken, url);
    // Over h2c, an https stream port is no weaker.
    for (const url of ["http://127.0.0.1:7431", "https://127.0.0.1:7431"])
      assert.equal(sameHostStreamUrl(url, ["http://127.0.0.1:7420"]), true, url);
  });

  it("is not taken when the app gave a stream port, turned learning off, or it is the one in use; none forgets it", () => {
    const named = "http://127.0.0.1:7431";
    const given = connectToServer({ serverUrl: "http://127.0.0.1:7420", streamUrl: "http://127.0.0.1:7430" });
    const off = connectToServer({ serverUrl: "http://127.0.0.1:7420", learnStreamUrl: false });
    const learning = connectToServer({ serverUrl: "http://127.0.0.1:7420" });
    try {
      assert.equal(given.adoptStreamUrl(named), false);
      assert.equal(off.adoptStreamUrl(named), false);
      assert.equal(learning.adoptStreamUrl("http://192.0.2.1:7431"), false);
      assert.equal(learning.adoptStreamUrl(named), true);
      assert.equal(learning.adoptStreamUrl(named), false);
      // The deployment moved it: the next stream goes to the new port.
      assert.equal(learning.adoptStreamUrl("http://127.0.0.1:7432"), true);
      // It took it away: the next stream stays on the server URL.
      assert.equal(learning.adoptStreamUrl(""), true);
      assert.equal(learning.adoptStreamUrl(""), false);
      assert.equal(given.adoptStreamUrl(""), false);
      learning.close();
      assert.equal(learning.adoptStreamUrl(named), false, "adopted after close");
    } finally {
      for (const c of [given, off, learning]) c.close();
    }
  });

  it("starts from one an earlier connection learned, under the same rules", () => {
    const serverUrl = "http://127.0.0.1:7420";
    const learned = "http://127.0.0.1:7431";
    const restarted = connectToServer({ serverUrl, learnedStreamUrl: learned });
    // The profile was opened against another server: its token must not go to the old one.
    const moved = connectToServer({ serverUrl: "https://chat.example.com", learnedStreamUrl: learned });
    const off = connectToServer({ serverUrl, learnStreamUrl: false, learnedStreamUrl: learned });
    const given = connectToServer({
      serverUrl,
      streamUrl: "http://127.0.0.1:7430",
      learnedStreamUrl: learned,
    });
    try {
      assert.equal(restarted.learnedStreamUrl, learned);
      assert.equal(restarted.adoptStreamUrl(learned), false, "the port in use was taken again");
      assert.equal(moved.learnedStreamUrl, undefined);
      assert.equal(off.learnedStreamUrl, undefined);
      assert.equal(given.learnedStreamUrl, undefined);
      // The deployment took it away since: forgotten at the first ready frame.
      assert.equal(restarted.adoptStreamUrl(""), true);
      assert.equal(restarted.learnedStreamUrl, undefined);
    } finally {
      for (const c of [restarted, moved, off, given]) c.close();
    }
  });
});
