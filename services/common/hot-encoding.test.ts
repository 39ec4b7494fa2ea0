import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { type Entry, EntrySchema } from "../../gen/switchboard/v1/entry_pb.js";
import {
  type ConnectResponse,
  ConnectResponseSchema,
  type ReceiptFrame,
  ReceiptFrameSchema,
  ReceiptKind,
} from "../../gen/switchboard/v1/gateway_pb.js";
import { decodeEntry, entryBytes } from "./entry-bytes.js";
import {
  encodeAnswerFrame,
  encodeEntry,
  HOT_ENCODING_FITS,
  SHAPES,
  shapeOf,
  varintSize,
  writeVarint,
} from "./hot-encoding.js";

/** A seeded generator, so a failure names a case that can be run again. */
function random(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Strings of every UTF-8 length class, and lone surrogates (TextEncoder writes U+FFFD for each). */
const PIECES = [
  "a",
  "Z",
  "-",
  "é",
  "ß",
  "中",
  "😀",
  "\ud800",
  "\udfff",
  "\u007f",
  "\u0080",
  "\u07ff",
  "\u0800",
];

function text(r: () => number): string {
  const n = r() < 0.2 ? 0 : Math.floor(r() * (r() < 0.1 ? 300 : 40));
  let s = "";
  // Mostly ASCII, as ids are; sometimes anything.
  const ascii = r() < 0.7;
  for (let i = 0; i < n; i++)
    s += ascii ? String.fromCharCode(32 + Math.floor(r() * 95)) : PIECES[Math.floor(r() * PIECES.length)]!;
  return s;
}

/** 64-bit values at the edges of what a varint takes in 1..8 bytes, and past 2^53. */
const BIG = [
  0n,
  1n,
  127n,
  128n,
  16_383n,
  16_384n,
  2n ** 31n - 1n,
  2n ** 31n,
  2n ** 32n,
  1_764_000_000_000n,
  2n ** 49n,
  2n ** 53n - 1n,
];

function u64(r: () => number): bigint {
  return r() < 0.5 ? BIG[Math.floor(r() * BIG.length)]! : BigInt(Math.floor(r() * 2 ** 40));
}

function u32(r: () => number): number {
  const edges = [0, 1, 127, 128, 300, 2 ** 21, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1];
  return r() < 0.5 ? edges[Math.floor(r() * edges.length)]! : Math.floor(r() * 2 ** 32);
}

function bytes(r: () => number): Uint8Array {
  const n = r() < 0.2 ? 0 : r() < 0.05 ? 70_000 : Math.floor(r() * 300);
  return Uint8Array.from({ length: n }, () => Math.floor(r() * 256));
}

function entry(r: () => number): Entry {
  return create(EntrySchema, {
    conversationId: text(r),
    seq: u64(r),
    senderUserId: text(r),
    senderDeviceId: text(r),
    clientMsgId: text(r),
    serverTimeMs: u64(r),
    body:
      r() < 0.85
        ? {
            case: "message",
            value: {
              payload: bytes(r),
              devicePayloads: Array.from({ length: r() < 0.6 ? 0 : Math.floor(r() * 4) }, () => ({
                deviceId: text(r),
                registrationId: u32(r),
                ciphertext: bytes(r),
                type: u32(r),
              })),
              payloadType: r() < 0.5 ? 0 : u32(r),
              replyToSeq: r() < 0.5 ? 0n : u64(r),
              mentionedUserIds: Array.from({ length: r() < 0.7 ? 0 : Math.floor(r() * 3) + 1 }, () =>
                text(r),
              ),
            },
          }
        : { case: undefined },
    redacted: r() < 0.2,
    redactedBySeq: r() < 0.8 ? 0n : u64(r),
    expiresAtMs: r() < 0.7 ? 0n : u64(r),
    expired: r() < 0.2,
  });
}

function receipt(r: () => number): ReceiptFrame {
  return create(ReceiptFrameSchema, {
    conversationId: text(r),
    userId: text(r),
    kind: [ReceiptKind.UNSPECIFIED, ReceiptKind.DELIVERED, ReceiptKind.READ][Math.floor(r() * 3)]!,
    upToSeq: u64(r),
    timeMs: u64(r),
  });
}

function answer(r: () => number): ConnectResponse {
  const pick = r();
  if (pick < 0.5)
    return create(ConnectResponseSchema, {
      frame: {
        case: "sendAck",
        value: {
          clientMsgId: text(r),
          conversationId: text(r),
          seq: u64(r),
          serverTimeMs: u64(r),
          expiresAtMs: r() < 0.6 ? 0n : u64(r),
        },
      },
    });
  if (pick < 0.75) return create(ConnectResponseSchema, { frame: { case: "receipt", value: receipt(r) } });
  return create(ConnectResponseSchema, {
    frame: {
      case: "receipts",
      value: { receipts: Array.from({ length: Math.floor(r() * 5) }, () => receipt(r)) },
    },
  });
}

const same = (a: Uint8Array, b: Uint8Array, what: string) =>
  assert.deepEqual(Buffer.from(a).toString("hex"), Buffer.from(b).toString("hex"), what);

describe("hot encoding", () => {
  it("is on: the schemas have exactly the fields the encoders write", () => {
    // A field added to one of these messages turns the fast path off (toBinary writes it), and
    // fails here until hot-encoding.ts writes it too and SHAPES names it.
    for (const [desc, shape] of SHAPES) assert.equal(shapeOf(desc), shape, desc.typeName);
    assert.ok(HOT_ENCODING_FITS);
  });

  it("writes varints as protobuf does, up to 2^53 - 1", () => {
    const zero = new Uint8Array(1).fill(9);
    assert.equal(writeVarint(zero, 0, 0), 1);
    assert.equal(zero[0], 0);
    const edges = [
      1,
      127,
      128,
      16_383,
      16_384,
      2 ** 21,
      2 ** 28 - 1,
      2 ** 28,
      2 ** 31,
      2 ** 35,
      2 ** 42,
      2 ** 49,
    ];
    for (const n of [...edges, 2 ** 53 - 1]) {
      const out = new Uint8Array(10);
      const end = writeVarint(out, 0, n);
      assert.equal(end, varintSize(n), `size of ${n}`);
      // Field 2 of Entry is a uint64: toBinary writes its tag (0x10), then the varint.
      same(
        out.subarray(0, end),
        toBinary(EntrySchema, create(EntrySchema, { seq: BigInt(n) })).subarray(1),
        `${n}`,
      );
    }
  });

  it("encodes entries exactly as toBinary does", () => {
    const r = random(1);
    let fast = 0;
    for (let i = 0; i < 3_000; i++) {
      const e = entry(r);
      const expected = toBinary(EntrySchema, e);
      const got = encodeEntry(e);
      assert.ok(got !== undefined, `entry ${i} was not written by the fast path`);
      fast++;
      same(got, expected, `entry ${i}`);
      same(entryBytes(e), expected, `entryBytes ${i}`);
    }
    assert.equal(fast, 3_000);
  });

  it("leaves to toBinary what it does not write, and entryBytes still gives toBinary's bytes", () => {
    const r = random(2);
    const withUnknown = entry(r);
    withUnknown.$unknown = [{ no: 99, wireType: 0, data: new Uint8Array([5]) }];
    const outOfRange = [
      create(EntrySchema, { seq: 2n ** 53n }),
      create(EntrySchema, { serverTimeMs: -1n }),
      create(EntrySchema, { expiresAtMs: 2n ** 63n - 1n }),
      create(EntrySchema, { body: { case: "message", value: { replyToSeq: 2n ** 64n - 1n } } }),
    ];
    const otherBody = create(EntrySchema, {
      conversationId: "c",
      seq: 3n,
      body: { case: "reaction", value: { targetSeq: 1n, payload: new Uint8Array([1, 2]) } },
    });
    for (const e of [withUnknown, ...outOfRange, otherBody]) {
      assert.equal(encodeEntry(e), undefined);
      same(entryBytes(e), toBinary(EntrySchema, e), "fallback");
    }
  });

  it("decodes what entryBytes wrote to an entry whose bytes are the same, not encoded again", () => {
    const r = random(4);
    const withUnknown = entry(r);
    withUnknown.$unknown = [{ no: 99, wireType: 0, data: new Uint8Array([5]) }];
    const others = [
      withUnknown,
      create(EntrySchema, {
        conversationId: "c",
        seq: 3n,
        body: { case: "reaction", value: { targetSeq: 1n, payload: new Uint8Array([1, 2]) } },
      }),
      create(EntrySchema, { seq: 4n, body: { case: "delete", value: { targetSeq: 1n } } }),
      create(EntrySchema, {
        seq: 5n,
        body: { case: "membership", value: { userIds: ["u_a", "u_b"], title: "t" } },
      }),
      create(EntrySchema, { seq: 6n, redacted: true, redactedBySeq: 9n, expired: true }),
    ];
    for (const [i, e] of [...Array.from({ length: 500 }, () => entry(r)), ...others].entries()) {
      const bytes = entryBytes(e);
      const copy = bytes.slice();
      const decoded = decodeEntry(copy);
      same(toBinary(EntrySchema, decoded), bytes, `re-encoded ${i}`);
      assert.equal(entryBytes(decoded), copy, `registered, not encoded again ${i}`);
    }
    // Bytes fields are plain Uint8Arrays even when decoded from a Buffer.
    const fromBuffer = decodeEntry(Buffer.from(entryBytes(others[1]!)));
    assert.ok(fromBuffer.body.case === "reaction");
    assert.equal(Object.getPrototypeOf(fromBuffer.body.value.payload), Uint8Array.prototype);
  });

  it("encodes send_ack, receipt and receipts frames exactly as toBinary does", () => {
    const r = random(3);
    for (let i = 0; i < 3_000; i++) {
      const f = answer(r);
      const got = encodeAnswerFrame(f);
      assert.ok(got !== undefined, `frame ${i} (${f.frame.case}) was not written by the fast path`);
      same(got, toBinary(ConnectResponseSchema, f), `frame ${i} (${f.frame.case})`);
      // And a stock decoder reads back what was encoded.
      assert.equal(fromBinary(ConnectResponseSchema, got).frame.case, f.frame.case);
    }
    const other = create(ConnectResponseSchema, { frame: { case: "pong", value: { nonce: 1n } } });
    assert.equal(encodeAnswerFrame(other), undefined);
  });

  it("gives every encoding its own memory, so posting one to another thread copies only it", () => {
    const e = create(EntrySchema, { conversationId: "c", seq: 1n, body: { case: "message", value: {} } });
    const bytes = encodeEntry(e)!;
    assert.equal(bytes.byteOffset, 0);
    assert.equal(bytes.buffer.byteLength, bytes.length);
  });
});
