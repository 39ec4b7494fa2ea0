import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { EntrySchema } from "../../gen/switchboard/v1/entry_pb.js";
import { HistoryBundleSchema } from "../../gen/switchboard/v1/history_pb.js";
import type { IncomingEntry } from "../types.js";
import { BundleBuilder, HistoryError, importedToIncoming, parseBundle } from "./history-bundle.js";

// The history bundle's bounds and the checks a receiving device makes (history.e2e.test.ts runs
// the whole transfer against a server process).

function incoming(seq: number, text: string): IncomingEntry {
  const raw = create(EntrySchema, {
    conversationId: "d_abc",
    seq: BigInt(seq),
    senderUserId: "u_bob",
    senderDeviceId: "dv_bob",
    serverTimeMs: 1000n,
    body: {
      case: "message",
      value: {
        payload: new Uint8Array([1, 2, 3]),
        devicePayloads: [{ deviceId: "dv_x", registrationId: 1, ciphertext: new Uint8Array(64) }],
        payloadType: 2,
        replyToSeq: 1n,
      },
    },
  });
  return { raw, payload: new TextEncoder().encode(text), attachments: [] } as unknown as IncomingEntry;
}

const expect = {
  userId: "u_a",
  fromDeviceId: "dv_old",
  forDeviceId: "dv_new",
  entryCount: 1,
  maxEntries: 10,
};

function bundleBytes(fields: Partial<{ userId: string; fromDeviceId: string; forDeviceId: string }>, n = 1) {
  const builder = new BundleBuilder(100, 1 << 20, "test");
  for (let i = 1; i <= n; i++) builder.add(incoming(i, `text ${i}`));
  return toBinary(
    HistoryBundleSchema,
    create(HistoryBundleSchema, {
      userId: "u_a",
      fromDeviceId: "dv_old",
      forDeviceId: "dv_new",
      entries: builder.entries,
      ...fields,
    }),
  );
}

function refused(fn: () => unknown, reason: string, code: Code, pattern: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof HistoryError, String(err));
    assert.ok(err instanceof ConnectError, "a HistoryError is a ConnectError");
    assert.equal(err.reason, reason);
    assert.equal(err.code, code);
    assert.match(err.rawMessage, pattern);
    return true;
  });
}

describe("history bundles", () => {
  it("keeps entries without their ciphertexts, with the decrypted payload", () => {
    const builder = new BundleBuilder(10, 1 << 20, "test");
    builder.add(incoming(7, "hello"));
    const item = builder.entries[0]!;
    const body = item.entry!.body;
    assert.equal(body.case, "message");
    if (body.case !== "message") return;
    assert.equal(body.value.payload.length, 0);
    assert.deepEqual(body.value.devicePayloads, []);
    assert.equal(body.value.replyToSeq, 1n, "what the server logged in clear stays");
    assert.equal(new TextDecoder().decode(item.payload), "hello");
    const shown = importedToIncoming(item, "u_a", "dv_new");
    assert.equal(shown.kind, "message");
    assert.equal(shown.seq, 7n);
    assert.equal(shown.replyTo, 1n);
    assert.equal(new TextDecoder().decode(shown.payload), "hello");
    assert.equal(shown.fromThisDevice, false);
  });

  it("refuses more entries or bytes than its bounds, naming them", () => {
    const few = new BundleBuilder(2, 1 << 20, "the last 7 days");
    few.add(incoming(1, "a"));
    few.add(incoming(2, "b"));
    refused(
      () => few.add(incoming(3, "c")),
      "too-many-entries",
      Code.ResourceExhausted,
      /the last 7 days hold more than 2 entries/,
    );
    const small = new BundleBuilder(100, 100, "the last day");
    small.add(incoming(1, "a"));
    refused(
      () => small.add(incoming(2, "x".repeat(100))),
      "too-large",
      Code.ResourceExhausted,
      /the last day are more than 100 bytes \(1 entries fit\)/,
    );
  });

  it("a receiving device refuses a bundle that disagrees with its transfer", () => {
    assert.equal(parseBundle(bundleBytes({}), expect).entries.length, 1);
    refused(
      () => parseBundle(bundleBytes({ forDeviceId: "dv_other" }), expect),
      "wrong-device",
      Code.PermissionDenied,
      /for device dv_other/,
    );
    refused(
      () => parseBundle(bundleBytes({ userId: "u_other" }), expect),
      "wrong-device",
      Code.PermissionDenied,
      /of user u_other/,
    );
    refused(
      () => parseBundle(bundleBytes({ fromDeviceId: "dv_third" }), expect),
      "wrong-device",
      Code.PermissionDenied,
      /from device dv_third, but dv_old sent it/,
    );
    refused(
      () => parseBundle(bundleBytes({}, 2), expect),
      "format",
      Code.DataLoss,
      /holds 2 entries, its transfer said 1/,
    );
    refused(
      () => parseBundle(bundleBytes({}, 3), { ...expect, entryCount: 3, maxEntries: 2 }),
      "too-many-entries",
      Code.ResourceExhausted,
      /holds 3 entries; this device imports at most 2/,
    );
    refused(
      () => parseBundle(new Uint8Array([0xff, 0xff, 0xff]), expect),
      "format",
      Code.DataLoss,
      /not a HistoryBundle/,
    );
  });
});
