import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import {
  MessageBodySchema,
  type OutgoingEntry,
  OutgoingEntrySchema,
} from "../../gen/switchboard/v1/entry_pb.js";
import { defaultLimits } from "../common/config.js";
import { InvalidInputError } from "../common/errors.js";
import { encodedSizeBound } from "../common/wire-size.js";
import { maxEntryBytes, requireEntrySize } from "./untrusted.js";

const limits = { ...defaultLimits, maxPayloadBytes: 1024 };

function entry(payloadBytes: number, mentions: string[]): OutgoingEntry {
  return create(OutgoingEntrySchema, {
    clientMsgId: "m-1",
    conversationId: "c_0123456789abcdef",
    body: {
      case: "message",
      value: create(MessageBodySchema, { payload: new Uint8Array(payloadBytes), mentionedUserIds: mentions }),
    },
  });
}

describe("requireEntrySize", () => {
  test("passes an entry whose payload is at its limit", () => {
    requireEntrySize(entry(1024, []), limits);
  });

  test("refuses an entry whose fields beyond the payload take it past the limit, naming both sizes", () => {
    const big = entry(
      1000,
      Array.from({ length: 100 }, (_, i) => `u_${String(i).padStart(26, "0")}`),
    );
    const bytes = toBinary(OutgoingEntrySchema, big).length;
    assert.throws(
      () => requireEntrySize(big, limits),
      (e: unknown) =>
        e instanceof InvalidInputError &&
        e.message ===
          `entry: ${bytes} bytes encoded; the limit is ${maxEntryBytes(limits, 0)} (the 1024-byte payload limit plus ids and framing)`,
    );
  });

  test("encodes an entry whose size bound passes the limit, and passes it when the encoding fits", () => {
    // The bound counts 3 bytes per character and the longest tags: 20 mentions of 20 characters
    // are 1,400 bytes by the bound but 440 encoded.
    const near = entry(
      900,
      Array.from({ length: 20 }, (_, i) => `u_${String(i).padStart(18, "0")}`),
    );
    const max = maxEntryBytes(limits, 0);
    assert.ok(encodedSizeBound(near) > max, "the bound alone would refuse it");
    assert.ok(toBinary(OutgoingEntrySchema, near).length <= max);
    requireEntrySize(near, limits);
  });

  test("leaves a payload over its own limit to the sequencer's refusal, which names the field", () => {
    requireEntrySize(entry(1025, []), limits);
  });
});
