import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { clone, create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { EntrySchema } from "../../gen/switchboard/v1/entry_pb.js";
import { ConnectResponseSchema, ReceiptKind } from "../../gen/switchboard/v1/gateway_pb.js";
import { entryBytes } from "../common/entry-bytes.js";
import { encodeFrame, encodeFrames } from "./device-stream.js";

/** The device stream writes message frames around cached entry bytes: they must be toBinary's bytes. */
describe("device stream frame encoding", () => {
  const entry = (seq: number, payload: number[], devices = 0) =>
    create(EntrySchema, {
      conversationId: "c_0123456789abcdefghij",
      seq: BigInt(seq),
      senderUserId: "u_sender",
      senderDeviceId: "d_sender",
      clientMsgId: `m${seq}`,
      serverTimeMs: 1_700_000_000_000n + BigInt(seq),
      body: {
        case: "message",
        value: {
          payload: new Uint8Array(payload),
          devicePayloads: Array.from({ length: devices }, (_, i) => ({
            deviceId: `d_${i}`,
            registrationId: i + 1,
            ciphertext: new Uint8Array([i, i, i]),
            type: 2,
          })),
          replyToSeq: seq > 1 ? BigInt(seq - 1) : 0n,
          mentionedUserIds: seq % 2 === 0 ? ["u_a", "u_b"] : [],
        },
      },
    });

  it("writes exactly what toBinary writes, for message frames and every other frame", () => {
    const shared = entry(7, [1, 2, 3]);
    const frames = [
      create(ConnectResponseSchema, { frame: { case: "message", value: { entries: [] } } }),
      create(ConnectResponseSchema, { frame: { case: "message", value: { entries: [entry(1, [])] } } }),
      create(ConnectResponseSchema, {
        frame: {
          case: "message",
          value: { entries: [entry(2, [9], 3), shared, entry(300, new Array(70_000).fill(5))] },
        },
      }),
      create(ConnectResponseSchema, { frame: { case: "sendAck", value: { clientMsgId: "m1", seq: 5n } } }),
      create(ConnectResponseSchema, {
        frame: {
          case: "sendAck",
          value: { clientMsgId: "m–2", conversationId: "c", seq: 6n, expiresAtMs: 2n ** 41n },
        },
      }),
      create(ConnectResponseSchema, { frame: { case: "pong", value: { nonce: 9n } } }),
    ];
    for (const f of frames)
      assert.deepEqual(Buffer.from(encodeFrame(f)), Buffer.from(toBinary(ConnectResponseSchema, f)));
    // The same entry object in another frame: its cached bytes, still the same frame bytes.
    const again = create(ConnectResponseSchema, {
      frame: { case: "message", value: { entries: [shared, entry(8, [4])] } },
    });
    const bytes = encodeFrame(again);
    assert.deepEqual(Buffer.from(bytes), Buffer.from(toBinary(ConnectResponseSchema, again)));
    const parsed = fromBinary(ConnectResponseSchema, bytes);
    assert.equal(parsed.frame.case, "message");
    assert.deepEqual(parsed.frame.case === "message" ? parsed.frame.value.entries.map((e) => e.seq) : [], [
      7n,
      8n,
    ]);
  });

  it("encodes an entry once per object, as the store and every stream share it", () => {
    const e = entry(11, [1, 2, 3], 2);
    const stored = entryBytes(e);
    assert.deepEqual(Buffer.from(stored), Buffer.from(toBinary(EntrySchema, e)));
    assert.equal(entryBytes(e), stored, "the same bytes, not encoded again");
    const f = create(ConnectResponseSchema, { frame: { case: "message", value: { entries: [e] } } });
    assert.deepEqual(Buffer.from(encodeFrame(f)), Buffer.from(toBinary(ConnectResponseSchema, f)));
    // Another object with the same content is encoded on its own.
    const copy = clone(EntrySchema, e);
    assert.notEqual(entryBytes(copy), stored);
    assert.deepEqual(Buffer.from(entryBytes(copy)), Buffer.from(stored));
  });

  it("writes a batch as gRPC messages, each frame's bytes toBinary's behind its 5-byte prefix", () => {
    const shared = entry(21, [7, 7]);
    const batch = [
      create(ConnectResponseSchema, {
        frame: { case: "message", value: { entries: [shared, entry(22, [], 2)] } },
      }),
      create(ConnectResponseSchema, { frame: { case: "sendAck", value: { clientMsgId: "m9", seq: 9n } } }),
      create(ConnectResponseSchema, { frame: { case: "message", value: { entries: [] } } }),
      // Written in place by hot-encoding.ts, between other frames, non-ASCII text included.
      create(ConnectResponseSchema, {
        frame: {
          case: "receipts",
          value: {
            receipts: [
              { conversationId: "c_é😀", userId: "u_中", kind: ReceiptKind.READ, upToSeq: 300n, timeMs: 1n },
              { conversationId: "c_2", userId: "u_b", kind: ReceiptKind.DELIVERED, upToSeq: 2n ** 40n },
            ],
          },
        },
      }),
      create(ConnectResponseSchema, {
        frame: { case: "receipt", value: { conversationId: "c_3", userId: "u_c", kind: ReceiptKind.READ } },
      }),
      create(ConnectResponseSchema, {
        frame: { case: "message", value: { entries: [entry(23, new Array(20_000).fill(1)), shared] } },
      }),
    ];
    const expected = Buffer.concat(
      batch.flatMap((f) => {
        const bytes = toBinary(ConnectResponseSchema, f);
        const prefix = Buffer.alloc(5);
        prefix.writeUInt32BE(bytes.length, 1);
        return [prefix, Buffer.from(bytes)];
      }),
    );
    assert.deepEqual(encodeFrames(batch), expected);
    assert.equal(encodeFrames([]).length, 0);
  });
});
