import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { isNetworkFailure } from "./transport.js";

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
