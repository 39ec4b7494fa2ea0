import assert from "node:assert/strict";
import * as http2 from "node:http2";
import { type AddressInfo, createServer } from "node:net";
import { describe, it } from "node:test";
import { H2Connection, type RequestHeaders } from "./connection.js";
import { encodeHeaders, HeaderListTooLarge, HpackDecoder, HpackError, huffmanDecode } from "./hpack.js";
import { HUFFMAN_CODE_LENGTHS } from "./rfc7541-tables.js";

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ""), "hex");
const BOUNDS = { maxBytes: 16 * 1024, maxPairs: 128 };

describe("HPACK", () => {
  it("has a complete prefix code: the code lengths fill the code space exactly", () => {
    assert.equal(HUFFMAN_CODE_LENGTHS.length, 257);
    // Kraft's sum of a complete prefix code is 1; in units of 2^-30 (the longest code).
    const sum = HUFFMAN_CODE_LENGTHS.reduce((total, length) => total + 2 ** (30 - length), 0);
    assert.equal(sum, 2 ** 30);
  });

  it("decodes RFC 7541's request examples, with and without Huffman, through one dynamic table (C.3, C.4)", () => {
    for (const [blocks, huffman] of [
      [
        [
          "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
          "8286 84be 5808 6e6f 2d63 6163 6865",
          "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ],
        false,
      ],
      [
        [
          "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
          "8286 84be 5886 a8eb 1064 9cbf",
          "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ],
        true,
      ],
    ] as const) {
      const decoder = new HpackDecoder(4096);
      const got = blocks.map((b) => decoder.decode(hex(b), BOUNDS));
      assert.deepEqual(
        got,
        [
          [
            [":method", "GET"],
            [":scheme", "http"],
            [":path", "/"],
            [":authority", "www.example.com"],
          ],
          [
            [":method", "GET"],
            [":scheme", "http"],
            [":path", "/"],
            [":authority", "www.example.com"],
            ["cache-control", "no-cache"],
          ],
          [
            [":method", "GET"],
            [":scheme", "https"],
            [":path", "/index.html"],
            [":authority", "www.example.com"],
            ["custom-key", "custom-value"],
          ],
        ],
        huffman ? "with Huffman" : "without",
      );
    }
  });

  it("refuses what RFC 7541 forbids, as errors that end the connection", () => {
    const cases: Array<[string, string]> = [
      // A field named "a" whose Huffman value is: "a" (00011) then EOS's 30 ones, padded.
      ["0001 6185 1fff ffff ff", "EOS"],
      // "a" then 11 ones: padding of more than 7 bits.
      ["0001 6182 1fff", "padding"],
      // "a" then 000: padding that is not ones.
      ["0001 6181 18", "padding"],
      // Index 0, and an index past both tables.
      ["80", "index 0"],
      ["ff 8001", "past the dynamic table"],
      // A table size update after a field, and one past the setting.
      ["82 3f e11f", "after a field"],
      ["3f e221", "past SETTINGS_HEADER_TABLE_SIZE"],
      // A string running past its block, and an integer that never ends.
      ["0085 6162", "longer than its header block"],
      ["ff ffff ffff ff", "past any bound"],
    ];
    for (const [block, message] of cases) {
      assert.throws(
        () => new HpackDecoder(4096).decode(hex(block), BOUNDS),
        (err: unknown) => err instanceof HpackError && err.message.includes(message),
        block,
      );
    }
  });

  it("decodes a list over its bounds whole, then refuses it, so the table stays in step", () => {
    const decoder = new HpackDecoder(4096);
    // Two fields indexed into the table, in a list over a 40-byte bound.
    const block = Buffer.concat([hex("40 01 61 01 62"), hex("40 01 63 01 64")]);
    assert.throws(() => decoder.decode(block, { maxBytes: 40, maxPairs: 128 }), HeaderListTooLarge);
    // Both went into the table: 62 is the newest ("c": "d"), 63 the first.
    assert.deepEqual(decoder.decode(hex("be bf"), BOUNDS), [
      ["c", "d"],
      ["a", "b"],
    ]);
    assert.throws(() => decoder.decode(hex("82 82 82"), { maxBytes: 4096, maxPairs: 2 }), HeaderListTooLarge);
  });

  it("evicts to the table size, and empties the table when the setting falls to 0", () => {
    const decoder = new HpackDecoder(4096);
    // 4 x (1 + 1000 + 32) bytes do not fit 4,096: the first is evicted. The value's length is
    // 127 + 873 (0x369: e9 06 in 7-bit groups).
    const big = (c: string) =>
      Buffer.concat([hex("40 01"), Buffer.from(c), hex("7f e906"), Buffer.alloc(1000, c)]);
    decoder.decode(Buffer.concat(["a", "b", "c", "d"].map(big)), BOUNDS);
    // 62 is the newest ("d"), 64 the oldest kept ("b"), 65 gone.
    assert.equal(decoder.decode(hex("c0"), BOUNDS)[0]![0], "b");
    assert.throws(() => decoder.decode(hex("c1"), BOUNDS), HpackError);
    decoder.setMaxTableSize(0);
    assert.throws(() => decoder.decode(hex("be"), BOUNDS), HpackError);
  });

  it("encodes fields as literals never indexed, which a decoder reads back", () => {
    const fields: Array<[string, string]> = [
      [":status", "200"],
      ["content-type", "application/grpc"],
      ["grpc-message", "x".repeat(300)],
    ];
    const block = encodeHeaders(fields);
    assert.equal(block[0], 0x10);
    const decoder = new HpackDecoder(4096);
    assert.deepEqual(decoder.decode(block, BOUNDS), fields);
    // Nothing was indexed: the next block cannot refer to any of it.
    assert.throws(() => decoder.decode(hex("be"), BOUNDS), HpackError);
  });

  it("decodes every octet as nghttp2 (node:http2's client) Huffman-codes it", async () => {
    // Each value is long enough that Huffman is the shorter coding whatever the last symbol's
    // code, so the client sends every octet a field value may hold through the Huffman table.
    const octets = [9, ...Array.from({ length: 0x7e - 0x20 + 1 }, (_, i) => 0x20 + i)];
    for (let b = 0x80; b <= 0xff; b++) octets.push(b);
    const value = (b: number) => `${"e".repeat(40)}${String.fromCharCode(b)}${"t".repeat(8)}`;
    const seen: RequestHeaders[] = [];
    const server = createServer(
      (socket) =>
        new H2Connection(socket, {
          maxConcurrentStreams: 100,
          maxHeaderListBytes: 64 * 1024,
          maxHeaderPairs: 256,
          handshakeTimeoutMs: 5_000,
          idleTimeoutMs: 60_000,
          onStream: (stream, headers) => {
            seen.push(headers);
            stream.respond(200, [], true);
          },
          refuse: () => {},
        }),
    );
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const session = http2.connect(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
    try {
      for (let i = 0; i < octets.length; i += 64) {
        const batch = octets.slice(i, i + 64);
        const headers: http2.OutgoingHttpHeaders = { ":method": "POST", ":path": "/octets" };
        for (const b of batch) headers[`x-octet-${b}`] = value(b);
        const req = session.request(headers, { endStream: true });
        await new Promise<void>((resolve, reject) => {
          req.on("response", () => resolve());
          req.on("error", reject);
        });
        req.destroy();
      }
      const got = new Map<number, string>();
      for (const headers of seen) {
        for (const [name, v] of Object.entries(headers)) {
          if (name.startsWith("x-octet-")) got.set(Number(name.slice(8)), String(v));
        }
      }
      for (const b of octets) assert.equal(got.get(b), value(b), `octet ${b}`);
    } finally {
      session.destroy();
      server.close();
    }
  });

  it("decodes a long Huffman string with every code length", () => {
    // A string of every symbol but EOS, Huffman-coded here by the canonical code, decodes back.
    const order = HUFFMAN_CODE_LENGTHS.slice(0, 256)
      .map((length, symbol) => ({ length, symbol }))
      .sort((a, b) => a.length - b.length || a.symbol - b.symbol);
    const codes = new Map<number, { code: bigint; length: number }>();
    let code = 0n;
    let previous = order[0]!.length;
    for (const [i, o] of order.entries()) {
      if (i > 0) code = (code + 1n) << BigInt(o.length - previous);
      previous = o.length;
      codes.set(o.symbol, { code, length: o.length });
    }
    const symbols = Array.from({ length: 256 }, (_, i) => (i * 37) % 256);
    let bits = "";
    for (const s of symbols) bits += codes.get(s)!.code.toString(2).padStart(codes.get(s)!.length, "0");
    bits += "1".repeat((8 - (bits.length % 8)) % 8);
    const bytes = Buffer.from(bits.match(/.{8}/g)!.map((b) => Number.parseInt(b, 2)));
    assert.deepEqual([...huffmanDecode(bytes)], symbols);
  });
});
