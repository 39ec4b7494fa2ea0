import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  AppendItemSchema,
  type CheckedMember,
  CheckedMemberSchema,
} from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import {
  DeleteBodySchema,
  DeviceCiphertextSchema,
  MembershipAction,
  type OutgoingEntry,
  OutgoingEntrySchema,
} from "../../gen/switchboard/v1/entry_pb.js";
import { messageEntry } from "../../test/helpers/entries.js";
import { InProcessBus } from "../bus/in-process.js";
import { wireCodeOf } from "../common/boundary.js";
import { defaultLimits } from "../common/config.js";
import { createLogger } from "../common/log.js";
import { openLmdbStore } from "../store/lmdb/engine.js";
import type { StoreEngine } from "../store/types.js";
import { checkDevicePayloads, mismatchOf } from "./device-payloads.js";
import { type Appended, Sequencer } from "./sequencer.js";

const log = createLogger({ level: "silent" });
const ALICE = "u_0000000000000000000000000a";
const BOB = "u_0000000000000000000000000b";
const A1 = "dv_000000000000000000000000a1";
const B1 = "dv_000000000000000000000000b1";
const B2 = "dv_000000000000000000000000b2";
const CAROL = "u_0000000000000000000000000c";
const C1 = "dv_000000000000000000000000c1";

/** The members a gateway's device check saw, with the devices the send addresses. */
const checked = (...members: Array<[string, string[]]>): CheckedMember[] =>
  members.map(([userId, deviceIds]) => create(CheckedMemberSchema, { userId, deviceIds }));

function pairwise(conversationId: string, clientMsgId: string, deviceIds: string[]): OutgoingEntry {
  return messageEntry(conversationId, clientMsgId, {
    devicePayloads: deviceIds.map((deviceId) =>
      create(DeviceCiphertextSchema, {
        deviceId,
        registrationId: 7,
        ciphertext: new Uint8Array([1, 2]),
        type: 2,
      }),
    ),
  });
}

function group(
  clientMsgId: string,
  payload: number[],
  ciphertexts: Array<[string, number[]]>,
): OutgoingEntry {
  const entry = pairwise("g_x", clientMsgId, []);
  if (entry.body.case === "message") {
    entry.body.value.payload = new Uint8Array(payload);
    entry.body.value.devicePayloads = ciphertexts.map(([deviceId, ciphertext]) =>
      create(DeviceCiphertextSchema, {
        deviceId,
        registrationId: 7,
        ciphertext: new Uint8Array(ciphertext),
        type: 3,
      }),
    );
  }
  return entry;
}

describe("checkDevicePayloads", () => {
  const limits = { maxPayloadBytes: 10, maxDevicesPerUser: 2, maxGroupSize: 3 };
  const refused = (
    entry: OutgoingEntry,
    pattern: RegExp,
    kind: "direct" | "group" = "direct",
    keyHolders = false,
  ) =>
    assert.throws(
      () => checkDevicePayloads(entry.body, kind, limits, keyHolders),
      // A domain error, as the gateway and the boundary turn it into the wire code.
      (e: unknown) => wireCodeOf(e) === Code.InvalidArgument && e instanceof Error && pattern.test(e.message),
    );

  it("passes a well-formed set and a body without one", () => {
    checkDevicePayloads(pairwise("d_x", "m", [B1, B2]).body, "direct", limits);
    checkDevicePayloads(create(OutgoingEntrySchema).body, "direct", limits);
    checkDevicePayloads(create(OutgoingEntrySchema).body, "group", limits);
  });

  it("refuses payload with device_payloads, duplicates, bad ids, empty ciphertexts and oversized sets", () => {
    const both = pairwise("d_x", "m", [B1]);
    if (both.body.case === "message") both.body.value.payload = new Uint8Array([1]);
    refused(both, /not both/);
    refused(pairwise("d_x", "m", [B1, B1]), /appears twice/);
    refused(pairwise("d_x", "m", ["nope"]), /device_id/);
    refused(
      pairwise("d_x", "m", [A1, B1, B2, "dv_000000000000000000000000c1", "dv_000000000000000000000000c2"]),
      /at most 4 devices in a direct conversation, got 5/,
    );
    const empty = pairwise("d_x", "m", [B1]);
    if (empty.body.case === "message") empty.body.value.devicePayloads[0]!.ciphertext = new Uint8Array();
    refused(empty, /ciphertext: required/);
    const zero = pairwise("d_x", "m", [B1]);
    if (zero.body.case === "message") zero.body.value.devicePayloads[0]!.registrationId = 0;
    refused(zero, /registration_id/);
    const big = pairwise("d_x", "m", [B1, B2]);
    if (big.body.case === "message") big.body.value.devicePayloads[0]!.ciphertext = new Uint8Array(9);
    refused(big, /11 bytes together; the limit is 10/);
  });

  it("in a group: requires payload, counts it with the ciphertexts, and allows empty ones only for key holders at the gateway", () => {
    // The gateway's view: devices that hold the sender key get an empty ciphertext.
    checkDevicePayloads(
      group(
        "g",
        [1],
        [
          [B1, []],
          [B2, [2, 3]],
        ],
      ).body,
      "group",
      limits,
      true,
    );
    // The sequencer's: those were dropped before the log, so an empty one is malformed.
    refused(
      group(
        "g",
        [1],
        [
          [B1, []],
          [B2, [2, 3]],
        ],
      ),
      /device_payloads\[0\]\.ciphertext: required/,
      "group",
    );
    checkDevicePayloads(group("g", [1], [[B2, [2, 3]]]).body, "group", limits);
    refused(group("g", [], [[B1, [1]]]), /payload: required with device_payloads in a group/, "group", true);
    refused(
      group(
        "g",
        [1, 1, 1, 1],
        [
          [B1, [1, 1, 1]],
          [B2, [1, 1, 1, 1]],
        ],
      ),
      /payload and device_payloads: 11 bytes together; the limit is 10/,
      "group",
      true,
    );
    const seven = ["1", "2", "3", "4", "5", "6", "7"].map((n): [string, number[]] => [
      `dv_000000000000000000000000${n}x`,
      [],
    ]);
    refused(group("g", [1], seven), /at most 6 devices in a group conversation, got 7/, "group", true);
    refused(
      group(
        "g",
        [1],
        [
          [B1, []],
          [B1, []],
        ],
      ),
      /appears twice/,
      "group",
      true,
    );
    // In a direct conversation an empty ciphertext stays malformed even at the gateway.
    const empty = pairwise("d_x", "m", [B1]);
    if (empty.body.case === "message") empty.body.value.devicePayloads[0]!.ciphertext = new Uint8Array();
    refused(empty, /ciphertext: required/, "direct", true);
  });
});

describe("Sequencer with per-device ciphertexts", () => {
  let dir: string;
  let engine: StoreEngine;
  let sequencer: Sequencer;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "device-payloads-test-"));
    engine = await openLmdbStore({ path: dir });
    sequencer = new Sequencer(engine.conversations, new InProcessBus(log), log, {
      shardCount: 4,
      limits: defaultLimits,
    });
  });
  after(async () => {
    await sequencer.close();
    await engine.close();
    await rm(dir, { recursive: true, force: true });
  });

  async function append(entry: OutgoingEntry, checkedMembers: CheckedMember[] = []): Promise<Appended> {
    const [r] = await sequencer.append([
      create(AppendItemSchema, { senderUserId: ALICE, senderDeviceId: A1, entry, checkedMembers }),
    ]);
    if (r instanceof ConnectError) throw r;
    return r!;
  }

  it("stores every ciphertext, and a delete for everyone leaves none in the store", async () => {
    const { conversationId: id } = await sequencer.openDirect(ALICE, BOB, A1);
    const sent = await append(pairwise(id, "m1", [B1, B2]));
    const [stored] = await engine.conversations.readEntries(id, sent.seq - 1, 1);
    assert.ok(stored?.body.case === "message");
    assert.equal(stored.body.value.devicePayloads.length, 2, "the log keeps every device's ciphertext");
    await append(
      create(OutgoingEntrySchema, {
        clientMsgId: "m2",
        conversationId: id,
        body: { case: "delete", value: create(DeleteBodySchema, { targetSeq: BigInt(sent.seq) }) },
      }),
    );
    const [tomb] = await engine.conversations.readEntries(id, sent.seq - 1, 1);
    assert.equal(tomb?.redacted, true);
    assert.ok(tomb?.body.case === "message");
    assert.equal(tomb.body.value.devicePayloads.length, 0);
  });

  it("stores a group's payload with its key distributions, and refuses device_payloads without payload", async () => {
    const created = await sequencer.createGroup(ALICE, A1, "g", [BOB]);
    const id = created.conversationId;
    const withKeys = group("g1", [4, 4], [[B1, [1, 2]]]);
    withKeys.conversationId = id;
    const sent = await append(withKeys, checked([ALICE, []], [BOB, [B1]]));
    const [stored] = await engine.conversations.readEntries(id, sent.seq - 1, 1);
    assert.ok(stored?.body.case === "message");
    assert.deepEqual([...stored.body.value.payload], [4, 4]);
    assert.deepEqual(
      stored.body.value.devicePayloads.map((p) => p.deviceId),
      [B1],
    );
    const bare = pairwise(id, "g2", [B1]);
    await assert.rejects(append(bare), (e: unknown) => {
      return (
        e instanceof ConnectError &&
        e.code === Code.InvalidArgument &&
        /payload: required with device_payloads in a group/.test(e.rawMessage)
      );
    });
    // The key holders' empty ciphertexts never reach the log.
    const holders = group("g3", [4], [[B1, []]]);
    holders.conversationId = id;
    await assert.rejects(append(holders), (e: unknown) => {
      return (
        e instanceof ConnectError &&
        e.code === Code.InvalidArgument &&
        /ciphertext: required/.test(e.rawMessage)
      );
    });
    // A direct conversation still refuses payload together with device_payloads.
    const { conversationId: direct } = await sequencer.openDirect(ALICE, BOB, A1);
    const both = group("d1", [4], [[B1, [1]]]);
    both.conversationId = direct;
    await assert.rejects(append(both), (e: unknown) => {
      return e instanceof ConnectError && e.code === Code.InvalidArgument && /not both/.test(e.rawMessage);
    });
  });

  it("holds a group send to the members it was checked against, at the seq it would get", async () => {
    const { conversationId: id } = await sequencer.createGroup(ALICE, A1, "g", [BOB, CAROL]);
    const send = (clientMsgId: string) => {
      const entry = group(clientMsgId, [9], [[B1, [1]]]);
      entry.conversationId = id;
      return entry;
    };
    /** Alice adds or removes carol. */
    const carol = (action: MembershipAction) =>
      sequencer.changeMembership({ userId: ALICE, deviceId: A1 }, id, action, [CAROL], "");
    /** The refusal of an append that must be refused. */
    const refusal = (appended: Promise<Appended>) =>
      appended.then(
        () => assert.fail("accepted"),
        (e: unknown) => ConnectError.from(e),
      );
    const all = checked([ALICE, []], [BOB, [B1]], [CAROL, [C1]]);
    assert.equal((await append(send("h1"), all)).seq, 2);
    // Not checked at all: refused, never stored.
    await assert.rejects(append(send("h2")), (e: unknown) => {
      return (
        e instanceof ConnectError && e.code === Code.InvalidArgument && /checked_members/.test(e.rawMessage)
      );
    });
    await carol(MembershipAction.REMOVED);
    // Checked against the members before the removal: carol's device comes back as extra.
    const refused = await refusal(append(send("h3"), all));
    assert.equal(refused.code, Code.FailedPrecondition);
    assert.match(refused.rawMessage, /members changed .*removed u_0000000000000000000000000c/);
    assert.deepEqual(
      mismatchOf(refused)?.extra.map((d) => d.deviceId),
      [C1],
    );
    // A member added since is named, with no devices (the shard knows none).
    await carol(MembershipAction.ADDED);
    const added = await refusal(append(send("h4"), checked([ALICE, []], [BOB, [B1]])));
    assert.match(added.rawMessage, /added u_0000000000000000000000000c/);
    assert.deepEqual(mismatchOf(added)?.extra, []);
    assert.equal((await append(send("h4"), all)).seq, 5);
    assert.equal(await engine.conversations.getLastSeq(id), 5, "nothing refused was stored");
  });
});
