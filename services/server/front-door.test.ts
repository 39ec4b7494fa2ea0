import assert from "node:assert/strict";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import * as net from "node:net";
import { after, before, describe, it } from "node:test";
import { h2Frame } from "../../test/helpers/raw-grpc.js";
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

/** An HTTP/2 frame: 24-bit length, type, flags, 31-bit stream id, payload. */

/** A HEADERS block for POST http://localhost<path>, in HPACK without Huffman or indexing. */
function postHeaders(path: string): Buffer {
  const literal = (nameIndex: number, value: string) =>
    Buffer.concat([Buffer.from([nameIndex, value.length]), Buffer.from(value, "latin1")]);
  // 0x83: :method POST and 0x86: :scheme http (static table); :path (4) and :authority (1) literal.
  return Buffer.concat([Buffer.from([0x83, 0x86]), literal(4, path), literal(1, "localhost")]);
}

/**
 * Streams a DirectStream accepts are served on node:http2's stream itself, after the edge's
 * deferral; every other stream reaches the handler as node:http2's request handler would.
 */
describe("front door: streams served directly, and the rest through node:http2's compatibility layer", () => {
  let door: ReturnType<typeof frontDoor>;
  let url = "";
  const seen: string[] = [];
  let direct = 0;

  before(async () => {
    const edge = new EdgeGuard(
      defaultEdgeLimits,
      new Refusals(createLogger({ level: "silent" })),
      new Set(),
      undefined,
    );
    door = frontDoor(
      (req, res) => {
        const compat = req instanceof http2.Http2ServerRequest && res instanceof http2.Http2ServerResponse;
        seen.push(`${req.method} ${req.url}${compat ? "" : " (not node:http2's request and response)"}`);
        res.writeHead(200, { "content-type": "text/plain" });
        res.end("handler");
      },
      edge,
      defaultEdgeLimits,
      {
        accepts: (headers) => headers[":path"] === "/direct",
        serve: (stream) => {
          direct++;
          stream.respond({ ":status": 200 });
          stream.end("direct");
        },
      },
    );
    await new Promise<void>((resolve) => door.server.listen(0, "127.0.0.1", resolve));
    url = `http://127.0.0.1:${(door.server.address() as AddressInfo).port}`;
  });
  after(async () => {
    door.h1.close();
    await new Promise<void>((resolve) => door.server.close(() => resolve()));
  });

  /** One request on its own connection: the status and the body. */
  async function request(headers: http2.OutgoingHttpHeaders): Promise<{ status: number; body: string }> {
    const client = http2.connect(url);
    try {
      return await new Promise((resolve, reject) => {
        const stream = client.request(headers);
        let status = 0;
        let body = "";
        stream.on("response", (h) => {
          status = Number(h[":status"]);
        });
        stream.setEncoding("utf8");
        stream.on("data", (chunk: string) => {
          body += chunk;
        });
        stream.on("end", () => resolve({ status, body }));
        stream.on("error", reject);
        stream.end();
      });
    } finally {
      client.close();
    }
  }

  it("serves an accepted stream itself and hands the others to the handler as request and response", async () => {
    seen.length = 0;
    const before = direct;
    assert.deepEqual(await request({ ":method": "POST", ":path": "/direct" }), {
      status: 200,
      body: "direct",
    });
    assert.equal(direct, before + 1);
    assert.deepEqual(await request({ ":method": "POST", ":path": "/other" }), {
      status: 200,
      body: "handler",
    });
    assert.deepEqual(seen, ["POST /other"]);
  });

  it("answers CONNECT with 405 and an unknown expectation with 417, and continues a 100-continue", async () => {
    seen.length = 0;
    assert.equal((await request({ ":method": "CONNECT", ":authority": "example.com:443" })).status, 405);
    assert.equal((await request({ ":method": "POST", ":path": "/x", expect: "sandwiches" })).status, 417);
    const continued = await request({ ":method": "POST", ":path": "/y", expect: "100-continue" });
    assert.deepEqual(continued, { status: 200, body: "handler" });
    assert.deepEqual(seen, ["POST /y"]);
  });

  it("never serves a stream its client reset in the read that opened it, and its error is handled", async () => {
    const before = direct;
    const socket = net.connect(Number(new URL(url).port), "127.0.0.1");
    socket.on("error", () => {});
    // Stream 1 is opened and reset with PROTOCOL_ERROR in one write (node:http2 makes that an
    // error on the server's stream, which nobody may leave unhandled); stream 3 stays open.
    const rst = Buffer.alloc(4);
    rst.writeUInt32BE(1);
    socket.write(
      Buffer.concat([
        Buffer.from(PREFACE, "latin1"),
        SETTINGS,
        h2Frame(1, 0x4, 1, postHeaders("/direct")),
        h2Frame(3, 0, 1, rst),
        h2Frame(1, 0x4, 3, postHeaders("/direct")),
      ]),
    );
    const deadline = Date.now() + 5000;
    while (direct === before && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 200));
    socket.destroy();
    assert.equal(direct, before + 1, "only the stream that stayed open was served");
  });
});
