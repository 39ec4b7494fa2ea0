import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import {
  DeviceCiphertextSchema,
  EntrySchema,
  MembershipBodySchema,
  MessageBodySchema,
} from "../../gen/switchboard/v1/entry_pb.js";
import { compareDevices, entryForDevice, mismatchError, mismatchOf } from "./device-set.js";

const ALICE = "u_a";
const BOB = "u_b";
const ct = (deviceId: string, registrationId: number) =>
  create(DeviceCiphertextSchema, { deviceId, registrationId, ciphertext: new Uint8Array([1]), type: 2 });

describe("compareDevices", () => {
  const devices = new Map([
    [
      ALICE,
      new Map([
        ["dv_a1", 11],
        ["dv_a2", 12],
        ["dv_a3", 0],
      ]),
    ],
    [
      BOB,
      new Map([
        ["dv_b1", 21],
        ["dv_b2", 22],
      ]),
    ],
  ]);
  const sender = { userId: ALICE, deviceId: "dv_a1" };

  it("accepts every other device with keys, the sender's own included, and nothing else", () => {
    assert.equal(
      compareDevices(sender, BOB, devices, [ct("dv_a2", 12), ct("dv_b1", 21), ct("dv_b2", 22)]),
      undefined,
    );
  });

  it("names missing, extra and stale devices, sorted, with users and current registration ids", () => {
    const m = compareDevices(sender, BOB, devices, [
      ct("dv_b2", 99),
      ct("dv_a3", 5),
      ct("dv_a1", 11),
      ct("dv_x", 1),
    ]);
    assert.ok(m);
    assert.deepEqual(
      m.missing.map((d) => [d.userId, d.deviceId, d.registrationId]),
      [
        [ALICE, "dv_a2", 12],
        [BOB, "dv_b1", 21],
      ],
    );
    assert.deepEqual(
      m.extra.map((d) => [d.userId, d.deviceId]),
      [
        ["", "dv_a1"],
        ["", "dv_a3"],
        ["", "dv_x"],
      ],
    );
    assert.deepEqual(
      m.stale.map((d) => [d.userId, d.deviceId, d.registrationId]),
      [[BOB, "dv_b2", 22]],
    );
    const err = mismatchError(m);
    assert.match(
      err.rawMessage,
      /missing dv_a2 \(u_a\), dv_b1 \(u_b\); extra dv_a1, dv_a3, dv_x; stale dv_b2 \(u_b\)/,
    );
    assert.deepEqual(
      mismatchOf(err)?.stale.map((d) => d.deviceId),
      ["dv_b2"],
    );
  });
});

describe("entryForDevice", () => {
  it("keeps only the device's own ciphertext, without touching the shared entry", () => {
    const entry = create(EntrySchema, {
      seq: 5n,
      body: {
        case: "message",
        value: create(MessageBodySchema, { devicePayloads: [ct("dv_a2", 12), ct("dv_b1", 21)] }),
      },
    });
    const mine = entryForDevice(entry, "dv_b1");
    assert.equal(mine.seq, 5n);
    assert.ok(mine.body.case === "message");
    assert.deepEqual(
      mine.body.value.devicePayloads.map((p) => p.deviceId),
      ["dv_b1"],
    );
    assert.ok(entry.body.case === "message");
    assert.equal(entry.body.value.devicePayloads.length, 2, "the original is unchanged");
    const sender = entryForDevice(entry, "dv_a1");
    assert.ok(sender.body.case === "message");
    assert.equal(sender.body.value.devicePayloads.length, 0);
  });

  it("returns entries without device payloads as they are", () => {
    const plain = create(EntrySchema, {
      body: { case: "message", value: create(MessageBodySchema, { payload: new Uint8Array([1]) }) },
    });
    assert.equal(entryForDevice(plain, "dv_b1"), plain);
    const membership = create(EntrySchema, {
      body: { case: "membership", value: create(MembershipBodySchema) },
    });
    assert.equal(entryForDevice(membership, "dv_b1"), membership);
  });
});
