import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { BinaryWriter } from "@bufbuild/protobuf/wire";
import {
  EntrySchema,
  MembershipAction,
  MembershipBodySchema,
  MessageBodySchema,
  OutgoingEntrySchema,
} from "../../gen/switchboard/v1/entry_pb.js";
import { ConnectRequestSchema, ConnectResponseSchema } from "../../gen/switchboard/v1/gateway_pb.js";
import { encodedSizeBound, stripUnknownFields } from "./wire-size.js";

/** A message's bytes with an unknown length-delimited field 999 of `size` bytes appended. */
function withUnknown(bytes: Uint8Array, size: number): Uint8Array {
  const extra = new BinaryWriter().tag(999, 2).bytes(new Uint8Array(size)).finish();
  const out = new Uint8Array(bytes.length + extra.length);
  out.set(bytes);
  out.set(extra, bytes.length);
  return out;
}

describe("wire size", () => {
  it("never undercounts an encoding", () => {
    const samples = [
      create(EntrySchema, {
        conversationId: "d_abc",
        seq: 2n ** 63n - 1n,
        serverTimeMs: -1n,
        senderUserId: "u_é漢字😀",
        body: {
          case: "message",
          value: create(MessageBodySchema, {
            payload: new Uint8Array(70_000),
            payloadType: 7,
            devicePayloads: [
              { deviceId: "dv_1", registrationId: 16383, ciphertext: new Uint8Array(5), type: 3 },
            ],
          }),
        },
      }),
      create(EntrySchema, {
        body: {
          case: "membership",
          value: create(MembershipBodySchema, {
            action: MembershipAction.ADDED,
            userIds: Array.from({ length: 1000 }, (_, i) => `u_${i}`),
          }),
        },
      }),
      create(ConnectResponseSchema, { frame: { case: "pong", value: { nonce: 5n } } }),
    ];
    for (const m of samples) {
      const exact = toBinary(
        m.$typeName === "switchboard.v1.Entry" ? EntrySchema : ConnectResponseSchema,
        m as never,
      ).length;
      assert.ok(encodedSizeBound(m) >= exact, `${encodedSizeBound(m)} >= ${exact}`);
    }
  });

  it("counts unknown fields, and strips them at every depth", () => {
    const body = withUnknown(
      toBinary(MessageBodySchema, create(MessageBodySchema, { payload: new Uint8Array(1) })),
      300_000,
    );
    const entryBytes = new BinaryWriter()
      .tag(1, 2)
      .string("g_x")
      .tag(2, 2)
      .string("m1")
      .tag(10, 2)
      .bytes(body)
      .finish();
    const entry = fromBinary(OutgoingEntrySchema, withUnknown(entryBytes, 1000));
    const request = create(ConnectRequestSchema, { frame: { case: "send", value: entry } });
    assert.ok(encodedSizeBound(request) > 301_000);
    assert.ok(stripUnknownFields(request) >= 301_000, "both unknown fields, with their length prefixes");
    assert.ok(toBinary(OutgoingEntrySchema, entry).length < 100);
    assert.equal(entry.body.case, "message");
  });
});
