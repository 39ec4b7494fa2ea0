import assert from "node:assert/strict";
import * as http2 from "node:http2";
import { type AddressInfo, connect, createServer, type Server, type Socket } from "node:net";
import { after, describe, it } from "node:test";
import { h2Frame } from "../../../test/helpers/raw-grpc.js";
import {
  H2_ERROR,
  H2Connection,
  type H2ServerOptions,
  type H2Stream,
  type RequestHeaders,
} from "./connection.js";
import { encodeHeaders } from "./hpack.js";

/**
 * The stream port's HTTP/2 (connection.ts) seen from the wire: a raw peer for what stock clients
 * never send (the attacker's frames, each bound), and node:http2's client for flow control and
 * trailers as stock gRPC clients use them (test/e2e/device-stream-wire.test.ts runs @grpc/grpc-js
 * and connect-es against the stream port too).
 */

const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");
const T = {
  DATA: 0,
  HEADERS: 1,
  RST_STREAM: 3,
  SETTINGS: 4,
  PING: 6,
  GOAWAY: 7,
  WINDOW_UPDATE: 8,
  CONTINUATION: 9,
};

const u32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n, 0);
  return b;
};

const REQUEST = encodeHeaders([
  [":method", "POST"],
  [":scheme", "http"],
  [":path", "/switchboard.v1.GatewayService/Connect"],
  [":authority", "localhost"],
  ["content-type", "application/grpc"],
  ["te", "trailers"],
]);

interface Received {
  type: number;
  flags: number;
  stream: number;
  payload: Buffer;
}

/** A peer that speaks raw frames and records the server's. */
class RawPeer {
  readonly frames: Received[] = [];
  closed = false;
  private buffer = Buffer.alloc(0);

  constructor(readonly socket: Socket) {
    socket.on("data", (chunk: Buffer) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      while (this.buffer.length >= 9) {
        const length = this.buffer.readUIntBE(0, 3);
        if (this.buffer.length < 9 + length) break;
        this.frames.push({
          type: this.buffer[3]!,
          flags: this.buffer[4]!,
          stream: this.buffer.readUInt32BE(5),
          payload: this.buffer.subarray(9, 9 + length),
        });
        this.buffer = this.buffer.subarray(9 + length);
      }
    });
    socket.on("close", () => {
      this.closed = true;
    });
    socket.on("error", () => {});
  }

  send(...frames: Buffer[]): void {
    this.socket.write(Buffer.concat(frames));
  }

  async until(what: string, predicate: () => boolean, timeoutMs = 5_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!predicate()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  /** The GOAWAY's error code once it came. */
  async goAway(): Promise<number> {
    await this.until("GOAWAY", () => this.frames.some((f) => f.type === T.GOAWAY));
    return this.frames.find((f) => f.type === T.GOAWAY)!.payload.readUInt32BE(4);
  }

  /** The RST_STREAM's error code for `stream` once it came. */
  async reset(stream: number): Promise<number> {
    await this.until(`RST_STREAM on ${stream}`, () =>
      this.frames.some((f) => f.type === T.RST_STREAM && f.stream === stream),
    );
    return this.frames.find((f) => f.type === T.RST_STREAM && f.stream === stream)!.payload.readUInt32BE(0);
  }
}

describe("the stream port's HTTP/2", () => {
  const servers: Server[] = [];
  const sockets: Socket[] = [];
  after(() => {
    for (const s of sockets) s.destroy();
    for (const s of servers) s.close();
  });

  /** A server of H2Connections; what it refused and the streams it was given are recorded. */
  async function serve(
    options: Partial<H2ServerOptions> = {},
    onStream?: (s: H2Stream, h: RequestHeaders) => void,
  ) {
    const refused: string[] = [];
    const streams: Array<{ stream: H2Stream; headers: RequestHeaders }> = [];
    const server = createServer((socket) => {
      sockets.push(socket);
      new H2Connection(socket, {
        maxConcurrentStreams: 100,
        maxHeaderListBytes: 16 * 1024,
        maxHeaderPairs: 128,
        handshakeTimeoutMs: 5_000,
        idleTimeoutMs: 60_000,
        onStream: (stream, headers) => {
          streams.push({ stream, headers });
          onStream?.(stream, headers);
        },
        refuse: (reason) => refused.push(reason),
        ...options,
      });
    });
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as AddressInfo).port;
    const peer = async (settings = true): Promise<RawPeer> => {
      const socket = connect(port, "127.0.0.1");
      sockets.push(socket);
      await new Promise((resolve) => socket.once("connect", resolve));
      const p = new RawPeer(socket);
      p.send(PREFACE, ...(settings ? [h2Frame(T.SETTINGS, 0, 0)] : []));
      return p;
    };
    return { port, refused, streams, peer };
  }

  it("opens with its SETTINGS (no push, its bounds, no HPACK table) and acknowledges the peer's", async () => {
    const { peer } = await serve({ maxConcurrentStreams: 7 });
    const p = await peer();
    await p.until("SETTINGS and their ACK", () => p.frames.filter((f) => f.type === T.SETTINGS).length === 2);
    const [ours, ack] = p.frames.filter((f) => f.type === T.SETTINGS);
    const settings = new Map<number, number>();
    for (let at = 0; at < ours!.payload.length; at += 6)
      settings.set(ours!.payload.readUInt16BE(at), ours!.payload.readUInt32BE(at + 2));
    assert.deepEqual(Object.fromEntries(settings), { 1: 0, 2: 0, 3: 7, 6: 16 * 1024 });
    assert.equal(ack!.flags, 1);
    assert.equal(ack!.payload.length, 0);
  });

  it("answers PING with its payload, and closes on a frame before the peer's SETTINGS", async () => {
    const { peer, refused } = await serve();
    const p = await peer();
    p.send(h2Frame(T.PING, 0, 0, Buffer.from("12345678")));
    await p.until("the PING ACK", () => p.frames.some((f) => f.type === T.PING));
    const pong = p.frames.find((f) => f.type === T.PING)!;
    assert.equal(pong.flags, 1);
    assert.equal(pong.payload.toString(), "12345678");

    const q = await peer(false);
    q.send(h2Frame(T.PING, 0, 0, Buffer.from("12345678")));
    assert.equal(await q.goAway(), H2_ERROR.PROTOCOL_ERROR);
    await q.until("the socket's close", () => q.closed);
    assert.ok(refused.includes("http2_protocol"));
  });

  it("refuses a frame past 16 KiB before reading it, and a header block past the header bound", async () => {
    const { peer } = await serve({ maxHeaderListBytes: 4096 });
    const p = await peer();
    // Only a frame header announcing 16,385 bytes is sent: the length alone is refused.
    p.send(Buffer.from([0x00, 0x40, 0x01, T.DATA, 0, 0, 0, 0, 1]));
    assert.equal(await p.goAway(), H2_ERROR.FRAME_SIZE_ERROR);

    // HEADERS then CONTINUATION without end, past the bound: a flood, not a request.
    const q = await peer();
    q.send(h2Frame(T.HEADERS, 0, 1, Buffer.alloc(2048, 0x82)));
    for (let i = 0; i < 3 && !q.closed; i++) q.send(h2Frame(T.CONTINUATION, 0, 1, Buffer.alloc(2048, 0x82)));
    assert.equal(await q.goAway(), H2_ERROR.ENHANCE_YOUR_CALM);
  });

  it("refuses a request whose headers are over the bound, and serves the next on the same connection", async () => {
    const { peer, streams, refused } = await serve({ maxHeaderListBytes: 1024 });
    const p = await peer();
    // A field indexed into the table, then 40 one-byte fields (42 bytes each as the list counts):
    // a 60-byte block whose list is over 1,024 bytes. It is decoded whole, the stream refused.
    const indexed = Buffer.concat([
      Buffer.from([0x40, 5]),
      Buffer.from("x-two"),
      Buffer.from([1]),
      Buffer.from("z"),
    ]);
    p.send(h2Frame(T.HEADERS, 4 | 1, 1, Buffer.concat([indexed, Buffer.alloc(40, 0x82)])));
    assert.equal(await p.reset(1), H2_ERROR.REFUSED_STREAM);
    assert.ok(refused.includes("header_list_too_large"));
    // Its table stayed in step: index 62 is "x-two".
    p.send(h2Frame(T.HEADERS, 4 | 1, 3, Buffer.concat([REQUEST, Buffer.from([0xbe])])));
    await p.until("stream 3", () => streams.length === 1);
    assert.equal(streams[0]!.headers["x-two"], "z");
  });

  it("refuses malformed requests (RFC 9113 8.3) and streams past the concurrent bound", async () => {
    const { peer, streams } = await serve({ maxConcurrentStreams: 1 });
    const p = await peer();
    const malformed: Array<Array<[string, string]>> = [
      [
        [":method", "POST"],
        [":path", "/x"],
      ],
      [
        [":method", "POST"],
        [":scheme", "http"],
        [":path", "/x"],
        ["Upper", "x"],
      ],
      [
        [":method", "POST"],
        [":scheme", "http"],
        [":path", "/x"],
        ["connection", "close"],
      ],
      [
        [":method", "POST"],
        [":scheme", "http"],
        [":path", "/x"],
        ["te", "gzip"],
      ],
      [
        [":method", "POST"],
        [":scheme", "http"],
        ["x", "y"],
        [":path", "/x"],
      ],
      [
        [":method", "POST"],
        [":scheme", "http"],
        [":path", "/x"],
        [":status", "200"],
      ],
    ];
    for (const [i, fields] of malformed.entries()) {
      p.send(h2Frame(T.HEADERS, 4, 1 + 2 * i, encodeHeaders(fields)));
      assert.equal(await p.reset(1 + 2 * i), H2_ERROR.PROTOCOL_ERROR, JSON.stringify(fields));
    }
    assert.equal(streams.length, 0);
    p.send(h2Frame(T.HEADERS, 4, 21, REQUEST), h2Frame(T.HEADERS, 4, 23, REQUEST));
    assert.equal(await p.reset(23), H2_ERROR.REFUSED_STREAM);
    assert.equal(streams.length, 1);
  });

  it("holds a stream's body within its window while it is not read, and takes more as it is", async () => {
    const { peer, streams } = await serve();
    const p = await peer();
    p.send(h2Frame(T.HEADERS, 4, 1, REQUEST));
    await p.until("the stream", () => streams.length === 1);
    const { stream } = streams[0]!;
    // Paused until resumed: the whole window (65,535 bytes) is taken and held, and none of it
    // is given back to the peer while nobody reads.
    const chunk = Buffer.alloc(16_383, 1);
    for (let i = 0; i < 4; i++) p.send(h2Frame(T.DATA, 0, 1, chunk));
    p.send(h2Frame(T.DATA, 0, 1, Buffer.alloc(3, 1)));
    await new Promise((r) => setTimeout(r, 50));
    const updates = () => p.frames.filter((f) => f.type === T.WINDOW_UPDATE && f.stream === 1);
    assert.equal(updates().length, 0);
    let read = 0;
    stream.on("data", (c: Buffer) => {
      read += c.length;
    });
    stream.resume();
    await p.until("the body", () => read === 65_535);
    // Taking it gave the window back, in halves.
    await p.until("WINDOW_UPDATE", () => updates().length > 0);
    assert.ok(updates().reduce((n, f) => n + f.payload.readUInt32BE(0), 0) >= 32_768);
  });

  it("refuses DATA past the stream's window", async () => {
    const { peer, streams } = await serve();
    const p = await peer();
    p.send(h2Frame(T.HEADERS, 4, 1, REQUEST));
    await p.until("the stream", () => streams.length === 1);
    // The connection's window is given back as it fills; the stream's only as it is read.
    for (let i = 0; i < 4; i++) p.send(h2Frame(T.DATA, 0, 1, Buffer.alloc(16_384, 1)));
    assert.equal(await p.reset(1), H2_ERROR.FLOW_CONTROL_ERROR);
  });

  it("cuts off a peer that resets streams faster than the bound (rapid reset)", async () => {
    const { peer, streams, refused } = await serve();
    const p = await peer();
    const burst: Buffer[] = [];
    for (let id = 1; id < 2 * 1_200; id += 2)
      burst.push(h2Frame(T.HEADERS, 4, id, REQUEST), h2Frame(T.RST_STREAM, 0, id, u32(8)));
    p.send(...burst);
    assert.equal(await p.goAway(), H2_ERROR.ENHANCE_YOUR_CALM);
    assert.ok(streams.length <= 1_010, `${streams.length} streams opened`);
    assert.ok(refused.includes("http2_protocol"));
  });

  it("cuts off a peer that sends PINGs and never reads their answers", async () => {
    const { peer, refused } = await serve();
    const p = await peer();
    p.socket.pause();
    const ping = h2Frame(T.PING, 0, 0, Buffer.alloc(8));
    const burst = Buffer.concat(Array.from({ length: 20_000 }, () => ping));
    // Until the answers outgrow the kernel's socket buffers, whatever their size on this machine.
    for (let i = 0; i < 400 && !p.closed && !refused.includes("http2_flood"); i++) {
      p.socket.write(burst);
      await new Promise((r) => setTimeout(r, 10));
    }
    await p.until("the refusal", () => refused.includes("http2_flood"), 10_000);
  });

  it("closes a connection that sends no SETTINGS in time, and one left idle", async () => {
    const { peer, refused } = await serve({ handshakeTimeoutMs: 100, idleTimeoutMs: 150 });
    const silent = await peer(false);
    await silent.until("the close", () => silent.closed);
    assert.ok(refused.includes("handshake_timeout"));
    const idle = await peer();
    assert.equal(await idle.goAway(), H2_ERROR.NO_ERROR);
    assert.ok(refused.includes("idle_connection"));
    await idle.until("the close", () => idle.closed);
  });

  it("answers within the peer's windows, and its trailers after the body, to node:http2's client", async () => {
    const { port } = await serve({}, (stream) => {
      stream.resume();
      const body: Buffer[] = [];
      stream.on("data", (c: Buffer) => body.push(c));
      stream.on("end", () => {
        stream.respond(200, [["content-type", "application/grpc"]]);
        // 1 MiB through a 64 KiB window: write waits for drain, the window opens as the client reads.
        const all = Buffer.concat(body);
        let sent = 0;
        const pump = () => {
          while (sent < 16) {
            sent++;
            if (!stream.write(all)) {
              stream.once("drain", pump);
              return;
            }
          }
          stream.end([["grpc-status", "0"]]);
        };
        pump();
      });
    });
    const session = http2.connect(`http://127.0.0.1:${port}`);
    try {
      const req = session.request({
        ":method": "POST",
        ":path": "/echo",
        "content-type": "application/grpc",
      });
      req.end(Buffer.alloc(65_536, 3));
      let received = 0;
      let trailers: http2.IncomingHttpHeaders = {};
      req.on("data", (c: Buffer) => {
        received += c.length;
      });
      req.on("trailers", (t) => {
        trailers = t;
      });
      await new Promise((resolve) => req.on("end", resolve));
      assert.equal(received, 16 * 65_536);
      assert.equal(trailers["grpc-status"], "0");
    } finally {
      session.destroy();
    }
  });

  it("on close, tells GOAWAY and lets the open stream finish", async () => {
    const connections: H2Connection[] = [];
    const server = createServer((socket) => {
      sockets.push(socket);
      connections.push(
        new H2Connection(socket, {
          maxConcurrentStreams: 10,
          maxHeaderListBytes: 16 * 1024,
          maxHeaderPairs: 128,
          handshakeTimeoutMs: 5_000,
          idleTimeoutMs: 60_000,
          onStream: (stream) => {
            connections[0]!.close();
            setTimeout(() => {
              stream.respond(200, [["content-type", "application/grpc"]]);
              stream.write(Buffer.from("late"));
              stream.end([["grpc-status", "0"]]);
            }, 50);
          },
          refuse: () => {},
        }),
      );
    });
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const session = http2.connect(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
    session.on("error", () => {});
    let goaway = false;
    session.on("goaway", () => {
      goaway = true;
    });
    const req = session.request({ ":method": "POST", ":path": "/x" }, { endStream: true });
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    await new Promise((resolve) => req.on("end", resolve));
    assert.equal(Buffer.concat(chunks).toString(), "late");
    assert.ok(goaway);
    await new Promise((resolve) => (session.closed ? resolve(undefined) : session.on("close", resolve)));
  });

  it("survives random frames: every connection ends in a protocol answer, never in a fault of its own", async () => {
    // A seeded generator, so that a failure is the same on every run: frames of every type with
    // random flags, streams and payloads, among well-formed requests, bodies and window updates.
    let seed = 0x5eed;
    const random = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => random(256)));
    const { peer, refused } = await serve({ idleTimeoutMs: 60_000 }, (stream) => {
      stream.resume();
      stream.on("data", () => stream.write(Buffer.alloc(100, 1)));
      stream.on("end", () => stream.end([["grpc-status", "0"]]));
      stream.respond(200, [["content-type", "application/grpc"]]);
    });
    const anyFrame = (): Buffer => {
      const stream = [0, 1, 3, 5, 2, random(2 ** 31)][random(6)]!;
      switch (random(6)) {
        case 0:
          return h2Frame(T.HEADERS, [4, 5, 0, 0x24, 0x2c][random(5)]!, stream, REQUEST);
        case 1:
          return h2Frame(T.DATA, random(2) ? 1 : 0, stream, bytes(random(300)));
        case 2:
          return h2Frame(T.WINDOW_UPDATE, 0, stream, u32(random(2 ** 31)));
        case 3:
          return h2Frame(T.SETTINGS, random(2), 0, bytes(6 * random(3)));
        default:
          return h2Frame(random(12), random(256), stream, bytes(random(40)));
      }
    };
    for (let round = 0; round < 20; round++) {
      const peers = await Promise.all(Array.from({ length: 15 }, () => peer()));
      for (const p of peers) p.send(...Array.from({ length: 1 + random(12) }, anyFrame));
      await new Promise((r) => setTimeout(r, 30));
      for (const p of peers) p.socket.destroy();
    }
    assert.deepEqual(
      refused.filter((r) => r === "http2_internal_error"),
      [],
    );
    // The random frames did reach the checks: some were refused as protocol errors.
    assert.ok(refused.includes("http2_protocol"));
  });
});
