import assert from "node:assert/strict";
import type { AddressInfo } from "node:net";
import * as net from "node:net";
import { after, before, describe, it } from "node:test";
import { defaultEdgeLimits } from "../common/config.js";
import { createLogger } from "../common/log.js";
import { Refusals } from "../common/refusals.js";
import { EdgeGuard } from "./edge.js";
import { frontDoor } from "./front-door.js";

const PREFACE = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/** An empty SETTINGS frame: length 0, type 4, no flags, stream 0. */
const SETTINGS = Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]);

/**
 * The front door tells HTTP/2 from HTTP/1.1 by a connection's first bytes, however they are
 * split across reads, over real sockets.
 */
describe("front door: one port, HTTP/2 and HTTP/1.1", () => {
  let door: ReturnType<typeof frontDoor>;
  let port = 0;

  before(async () => {
    const edge = new EdgeGuard(
      { ...defaultEdgeLimits, handshakeTimeoutMs: 2000 },
      new Refusals(createLogger({ level: "silent" })),
      new Set(),
      undefined,
    );
    door = frontDoor(
      (req, res) => {
        res.writeHead(200, { "content-type": "text/plain" });
        res.end(`HTTP/${req.httpVersion} ${req.method} ${req.url}`);
      },
      edge,
      defaultEdgeLimits,
    );
    await new Promise<void>((resolve) => door.server.listen(0, "127.0.0.1", resolve));
    port = (door.server.address() as AddressInfo).port;
  });
  after(async () => {
    door.h1.close();
    door.h1.closeAllConnections();
    await new Promise<void>((resolve) => door.server.close(() => resolve()));
  });

  /** Writes the pieces one by one (each its own read on the server), then reads until `until`. */
  function exchange(pieces: Array<string | Buffer>, until: (answer: Buffer) => boolean): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(port, "127.0.0.1");
      let answer = Buffer.alloc(0);
      socket.on("data", (chunk: Buffer) => {
        answer = Buffer.concat([answer, chunk]);
        if (until(answer)) {
          socket.destroy();
          resolve(answer);
        }
      });
      socket.on("error", reject);
      socket.on("close", () =>
        reject(new Error(`closed; answer so far: ${JSON.stringify(answer.toString("latin1"))}`)),
      );
      void (async () => {
        for (const piece of pieces) {
          socket.write(piece);
          await new Promise((r) => setTimeout(r, 20));
        }
      })();
    });
  }

  it("hands a connection that opens with the HTTP/2 preface, even a byte at a time, to HTTP/2", async () => {
    const answer = await exchange([...PREFACE.split(""), SETTINGS], (a) => a.length >= 9);
    // The server's own SETTINGS frame comes first.
    assert.equal(answer[3], 4, `an HTTP/2 SETTINGS frame, got ${JSON.stringify(answer.toString("latin1"))}`);
  });

  it("hands anything else to HTTP/1.1, including a request that starts like the preface", async () => {
    for (const pieces of [
      ["GET /a HTTP/1.1\r\nHost: x\r\n\r\n"],
      ["P", "OST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"],
    ]) {
      const answer = await exchange(pieces, (a) => a.toString("latin1").includes("HTTP/1.1 "));
      assert.match(answer.toString("latin1"), /^HTTP\/1\.1 200 OK/);
      const body = await exchange(pieces, (a) => /HTTP\/1\.1 (GET|POST) \//.test(a.toString("latin1")));
      assert.match(body.toString("latin1"), /HTTP\/1\.1 (GET \/a|POST \/b)/);
    }
  });

  it("closes a connection that sends nothing within the handshake timeout", async () => {
    const socket = net.connect(port, "127.0.0.1");
    socket.on("error", () => {});
    const closed = await new Promise<boolean>((resolve) => socket.once("close", () => resolve(true)));
    assert.ok(closed);
  });
});
