import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  DeleteBodySchema,
  DeviceCiphertextSchema,
  type Entry,
  MessageBodySchema,
  type OutgoingEntry,
  OutgoingEntrySchema,
} from "../../gen/switchboard/v1/entry_pb.js";
import {
  type DeviceMismatch,
  DeviceMismatchSchema,
  type MismatchedDevice,
} from "../../gen/switchboard/v1/gateway_pb.js";
import type { TestDevice } from "../helpers/device.js";
import { messageEntry } from "../helpers/entries.js";
import { serverFixture } from "../helpers/fixture.js";
import { type Keyed, publishKeys } from "../helpers/keys.js";

const UNKNOWN_DEVICE = "dv_00000000000000000000000000";

/** A fake ciphertext that names its recipient, so a test can see who got what. */
function ciphertextFor(deviceId: string, text: string): Uint8Array {
  return new TextEncoder().encode(`${text} for ${deviceId}`);
}

/** A message send with a payload (empty in a direct conversation) and device entries. */
function messageSend(
  conversationId: string,
  clientMsgId: string,
  payload: Uint8Array,
  entries: Array<{ deviceId: string; registrationId: number; ciphertext: Uint8Array; type: number }>,
): OutgoingEntry {
  return messageEntry(conversationId, clientMsgId, {
    payload,
    devicePayloads: entries.map((e) => create(DeviceCiphertextSchema, e)),
  });
}

function pairwise(
  conversationId: string,
  clientMsgId: string,
  text: string,
  to: Array<{ deviceId: string; registrationId: number }>,
): OutgoingEntry {
  const entries = to.map((d) => ({ ...d, ciphertext: ciphertextFor(d.deviceId, text), type: 3 }));
  return messageSend(conversationId, clientMsgId, new Uint8Array(0), entries);
}

const to = (keyed: Keyed[]) =>
  keyed.map((k) => ({ deviceId: k.device.deviceId, registrationId: k.registrationId }));

/** The device ids, user ids and registration ids of a mismatch list, comparable with deepEqual. */
const listed = (list: MismatchedDevice[]) =>
  list.map((d) => ({ userId: d.userId, deviceId: d.deviceId, registrationId: d.registrationId }));

const expect = (k: Keyed) => ({
  userId: k.device.userId,
  deviceId: k.device.deviceId,
  registrationId: k.registrationId,
});

/**
 * A group send: the sender-key ciphertext once in payload, and an entry for every device named,
 * carrying a key distribution for those in `distributeTo` and nothing for the others (which
 * already hold the sender key).
 */
function groupSend(
  conversationId: string,
  clientMsgId: string,
  text: string,
  to: Array<{ deviceId: string; registrationId: number }>,
  distributeTo: Keyed[] = [],
): OutgoingEntry {
  const needKey = new Set(distributeTo.map((k) => k.device.deviceId));
  const entries = to.map((d) =>
    needKey.has(d.deviceId)
      ? { ...d, ciphertext: ciphertextFor(d.deviceId, "skdm"), type: 3 }
      : { ...d, ciphertext: new Uint8Array(0), type: 0 },
  );
  return messageSend(conversationId, clientMsgId, new TextEncoder().encode(`sender-key ${text}`), entries);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const byDevice = <T extends { deviceId: string }>(list: T[]) =>
  [...list].sort((x, y) => (x.deviceId < y.deviceId ? -1 : 1));

function devicePayloads(entry: Entry | undefined) {
  const body = entry?.body;
  assert.ok(body?.case === "message", "a message entry");
  return body.value.devicePayloads;
}

describe("per-device ciphertexts and mismatched devices (one server process, real gRPC)", () => {
  const fx = serverFixture();

  /** Alice with two devices, Bob with two, all with keys, and their direct conversation. */
  async function setup() {
    const a1 = await fx.user("alice");
    const b1 = await fx.user("bob");
    const a2 = fx.track(await a1.link("alice-laptop"));
    const b2 = fx.track(await b1.link("bob-laptop"));
    const keyed = [a1, a2, b1, b2].map((device, i) => ({ device, registrationId: 100 + i }));
    await Promise.all(keyed.map((k) => publishKeys(k.device, k.registrationId)));
    const { conversation } = await a1.conversations.openDirect({ peerUserId: b1.userId });
    const [ka1, ka2, kb1, kb2] = keyed as [Keyed, Keyed, Keyed, Keyed];
    return { a1, a2, b1, b2, ka1, ka2, kb1, kb2, id: conversation!.conversationId };
  }

  async function connected(...devices: TestDevice[]) {
    for (const d of devices) d.connect();
    await Promise.all(
      devices.map((d) => d.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught up")),
    );
  }

  it("delivers to each device only its own ciphertext, live, in history, on resync, and on the sender's own devices", async () => {
    const { a1, a2, b1, b2, ka2, kb1, kb2, id } = await setup();
    await connected(a1, a2, b1, b2);
    a1.write({ case: "send", value: pairwise(id, "p1", "hello", to([ka2, kb1, kb2])) });
    const ack = await a1.waitFor(() => a1.ofCase("sendAck").find((a) => a.clientMsgId === "p1"), "ack");
    assert.equal(ack.seq, 2n);

    for (const d of [a2, b1, b2]) {
      const entry = await d.waitFor(
        () => d.entries(id).find((e) => e.seq === 2n),
        `live entry on ${d.deviceId}`,
      );
      const payloads = devicePayloads(entry);
      assert.equal(payloads.length, 1, "only its own ciphertext");
      assert.equal(payloads[0]?.deviceId, d.deviceId);
      assert.deepEqual(new Uint8Array(payloads[0]!.ciphertext), ciphertextFor(d.deviceId, "hello"));
      assert.equal(payloads[0]?.type, 3);
    }
    const own = await a1.waitFor(() => a1.entries(id).find((e) => e.seq === 2n), "the sender's own copy");
    assert.equal(devicePayloads(own).length, 0, "the sending device gets none of the others' ciphertexts");

    // History (unary), a sync page on the stream, and the backlog of a reconnecting stream.
    for (const d of [a1, a2, b1, b2]) {
      const { entries } = await d.conversations.getHistory({ conversationId: id, afterSeq: 1n });
      const payloads = devicePayloads(entries[0]);
      assert.deepEqual(
        payloads.map((p) => p.deviceId),
        d === a1 ? [] : [d.deviceId],
      );
    }
    b1.write({
      case: "syncRequest",
      value: { requestId: 7, conversationId: id, afterSeq: 1n, limit: 10 } as never,
    });
    const page = await b1.waitFor(() => b1.ofCase("syncPage").find((p) => p.requestId === 7), "sync page");
    assert.deepEqual(
      devicePayloads(page.entries[0]).map((p) => p.deviceId),
      [b1.deviceId],
    );
    await b2.disconnect();
    await connected(b2);
    const backlog = b2.entries(id).find((e) => e.seq === 2n);
    assert.deepEqual(
      devicePayloads(backlog).map((p) => p.deviceId),
      [b2.deviceId],
      "the backlog from the log is filtered too",
    );
  });

  it("a pairwise message (payload_type 2) naming no devices is checked; an empty plaintext is not", async () => {
    const { a1, ka2, kb1, kb2, id } = await setup();
    const before = await a1.conversations.getHistory({ conversationId: id, afterSeq: 0n });
    const nobody = pairwise(id, "n1", "for nobody", []);
    if (nobody.body.case === "message") nobody.body.value.payloadType = 2;
    const mismatch = await mismatchOfSend(a1, nobody);
    assert.deepEqual(listed(mismatch.missing), byDevice([ka2, kb1, kb2].map(expect)));
    const after = await a1.conversations.getHistory({ conversationId: id, afterSeq: 0n });
    assert.equal(after.lastSeq, before.lastSeq, "no seq was used");
    // payload_type 0 and nothing at all: a plaintext client's empty message, taken as it is.
    const sent = await a1.gateway.send({ entry: pairwise(id, "n2", "empty", []) });
    assert.equal(sent.seq, before.lastSeq + 1n);
  });

  it("refuses missing, extra and stale devices with the exact lists, stores nothing, and takes the corrected retry", async () => {
    const { a1, b1, ka1, ka2, kb1, kb2, id } = await setup();
    // A third device of Alice's, keyed and then revoked: a ciphertext for it is extra.
    const a3 = fx.track(await a1.link("alice-old-phone"));
    await publishKeys(a3, 777);
    await a1.accounts.revokeDevice({ deviceId: a3.deviceId });
    await connected(a1, b1);
    const before = await a1.conversations.getHistory({ conversationId: id, afterSeq: 0n });

    const refusal = async (clientMsgId: string) => {
      const error = await a1.waitFor(
        () => a1.ofCase("sendError").find((e) => e.clientMsgId === clientMsgId),
        `send_error for ${clientMsgId}`,
      );
      assert.equal(error.code, Code.FailedPrecondition);
      assert.match(error.message, /device_payloads do not match/);
      assert.ok(error.mismatch, "the lists are in the frame");
      return error.mismatch;
    };

    // Missing: Bob's second device, and Alice's own other device.
    a1.write({ case: "send", value: pairwise(id, "m1", "hi", to([kb1])) });
    const missing = await refusal("m1");
    assert.deepEqual(
      listed(missing.missing),
      [expect(ka2), expect(kb2)].sort((x, y) => (x.deviceId < y.deviceId ? -1 : 1)),
    );
    assert.deepEqual(missing.extra, []);
    assert.deepEqual(missing.stale, []);

    // Extra: the revoked device, an unknown device and the sending device itself.
    a1.frames = a1.frames.filter((f) => f.frame.case !== "sendError");
    a1.write({
      case: "send",
      value: pairwise(id, "m1", "hi", [
        ...to([ka2, kb1, kb2]),
        { deviceId: a3.deviceId, registrationId: 777 },
        { deviceId: UNKNOWN_DEVICE, registrationId: 5 },
        { deviceId: a1.deviceId, registrationId: ka1.registrationId },
      ]),
    });
    const extra = await refusal("m1");
    assert.deepEqual(
      listed(extra.extra),
      [a3.deviceId, UNKNOWN_DEVICE, a1.deviceId]
        .sort()
        .map((deviceId) => ({ userId: "", deviceId, registrationId: 0 })),
    );
    assert.deepEqual(extra.missing, []);
    assert.deepEqual(extra.stale, []);

    // Stale: Bob's first device under an older registration id.
    a1.frames = a1.frames.filter((f) => f.frame.case !== "sendError");
    a1.write({
      case: "send",
      value: pairwise(id, "m1", "hi", [
        ...to([ka2, kb2]),
        { deviceId: kb1.device.deviceId, registrationId: 9 },
      ]),
    });
    const stale = await refusal("m1");
    assert.deepEqual(listed(stale.stale), [expect(kb1)]);
    assert.deepEqual(stale.missing, []);
    assert.deepEqual(stale.extra, []);

    // The unary Send: the same refusal as a Connect error detail.
    await assert.rejects(
      a1.gateway.send({ entry: pairwise(id, "u1", "hi", to([ka2, kb1])) }),
      (err: unknown) => {
        const e = ConnectError.from(err);
        assert.equal(e.code, Code.FailedPrecondition);
        const [detail] = e.findDetails(DeviceMismatchSchema);
        assert.deepEqual(listed(detail?.missing ?? []), [expect(kb2)]);
        return true;
      },
    );

    // Nothing was stored and no seq was consumed.
    const after = await a1.conversations.getHistory({ conversationId: id, afterSeq: 0n });
    assert.equal(after.lastSeq, before.lastSeq);

    // The corrected retries, with the same client_msg_ids, are taken, in order, with the next seqs.
    a1.write({ case: "send", value: pairwise(id, "m1", "hi", to([ka2, kb1, kb2])) });
    const ack = await a1.waitFor(() => a1.ofCase("sendAck").find((a) => a.clientMsgId === "m1"), "ack of m1");
    assert.equal(ack.seq, before.lastSeq + 1n);
    const unary = await a1.gateway.send({ entry: pairwise(id, "u1", "hi", to([ka2, kb1, kb2])) });
    assert.equal(unary.seq, before.lastSeq + 2n);
    // A retry of the committed send returns the original seq.
    const again = await a1.gateway.send({ entry: pairwise(id, "u1", "hi", to([ka2, kb1, kb2])) });
    assert.equal(again.seq, unary.seq);
  });

  it("refuses malformed sets and pairwise sends to groups with INVALID_ARGUMENT", async () => {
    const { a1, b1, ka2, kb1, kb2, id } = await setup();
    const both = pairwise(id, "x1", "hi", to([ka2, kb1, kb2]));
    if (both.body.case === "message") both.body.value.payload = new Uint8Array([1]);
    await assert.rejects(a1.gateway.send({ entry: both }), (err: unknown) => {
      const e = ConnectError.from(err);
      return e.code === Code.InvalidArgument && /not both/.test(e.rawMessage);
    });
    const twice = pairwise(id, "x2", "hi", [...to([ka2, kb1, kb2]), ...to([kb1])]);
    await assert.rejects(a1.gateway.send({ entry: twice }), (err: unknown) => {
      const e = ConnectError.from(err);
      return e.code === Code.InvalidArgument && /appears twice/.test(e.rawMessage);
    });
    // Pairwise ciphertexts alone in a group: a group message is encrypted once, in payload.
    const { conversation } = await a1.conversations.createGroup({ title: "g", memberUserIds: [b1.userId] });
    const group = pairwise(conversation!.conversationId, "x3", "hi", to([ka2, kb1, kb2]));
    await assert.rejects(a1.gateway.send({ entry: group }), (err: unknown) => {
      const e = ConnectError.from(err);
      return (
        e.code === Code.InvalidArgument &&
        /payload: required with device_payloads in a group/.test(e.rawMessage)
      );
    });
    // Someone outside the conversation learns nothing about its devices.
    const eve = await fx.user("eve");
    await assert.rejects(eve.gateway.send({ entry: pairwise(id, "x4", "hi", to([kb1])) }), (err: unknown) => {
      const e = ConnectError.from(err);
      return e.code === Code.PermissionDenied && e.findDetails(DeviceMismatchSchema).length === 0;
    });
  });

  it("a delete for everyone removes every device's ciphertext", async () => {
    const { a1, a2, b1, b2, ka2, kb1, kb2, id } = await setup();
    const sent = await a1.gateway.send({ entry: pairwise(id, "d1", "secret", to([ka2, kb1, kb2])) });
    await a1.gateway.send({
      entry: create(OutgoingEntrySchema, {
        clientMsgId: "d2",
        conversationId: id,
        body: { case: "delete", value: create(DeleteBodySchema, { targetSeq: sent.seq }) },
      }),
    });
    for (const d of [a1, a2, b1, b2]) {
      const { entries } = await d.conversations.getHistory({
        conversationId: id,
        afterSeq: sent.seq - 1n,
        limit: 1,
      });
      assert.equal(entries[0]?.redacted, true);
      assert.equal(devicePayloads(entries[0]).length, 0, `no ciphertext left for ${d.deviceId}`);
    }
  });

  /** Alice, Bob and Carol with two keyed devices each, in a group Alice created. */
  async function groupSetup() {
    const people = [await fx.user("ga"), await fx.user("gb"), await fx.user("gc")];
    const devices = [];
    for (const first of people) devices.push(first, fx.track(await first.link(`${first.username}-laptop`)));
    const keyed = devices.map((device, i) => ({ device, registrationId: 200 + i }));
    await Promise.all(keyed.map((k) => publishKeys(k.device, k.registrationId)));
    const [a1, b1, c1] = people as [TestDevice, TestDevice, TestDevice];
    const { conversation } = await a1.conversations.createGroup({
      title: "sender keys",
      memberUserIds: [b1.userId, c1.userId],
    });
    const [ka1, ka2, kb1, kb2, kc1, kc2] = keyed as [Keyed, Keyed, Keyed, Keyed, Keyed, Keyed];
    return { ka1, ka2, kb1, kb2, kc1, kc2, id: conversation!.conversationId };
  }

  /** The refusal of a unary Send, with its lists. */
  async function mismatchOfSend(device: TestDevice, entry: OutgoingEntry) {
    let detail: DeviceMismatch | undefined;
    await assert.rejects(device.gateway.send({ entry }), (err: unknown) => {
      const e = ConnectError.from(err);
      assert.equal(e.code, Code.FailedPrecondition, e.rawMessage);
      assert.match(e.rawMessage, /device_payloads do not match/);
      detail = e.findDetails(DeviceMismatchSchema)[0];
      return true;
    });
    assert.ok(detail, "the lists are in the error detail");
    return detail;
  }

  it("group: takes the sender-key payload with every recipient device named, gives each device the payload and only its own key distribution, and stores none for key holders", async () => {
    const { ka1, ka2, kb1, kb2, kc1, kc2, id } = await groupSetup();
    const a1 = ka1.device;
    const everyone = [ka1, ka2, kb1, kb2, kc1, kc2];
    await connected(...everyone.map((k) => k.device));
    // Bob's phone and Carol's laptop do not hold Alice's sender key yet; the others do.
    a1.write({
      case: "send",
      value: groupSend(id, "g1", "hello group", to([ka2, kb1, kb2, kc1, kc2]), [kb1, kc2]),
    });
    const ack = await a1.waitFor(() => a1.ofCase("sendAck").find((a) => a.clientMsgId === "g1"), "ack of g1");
    const expectOwn = (k: Keyed) => (k === kb1 || k === kc2 ? [k.device.deviceId] : []);

    for (const k of [ka2, kb1, kb2, kc1, kc2]) {
      const d = k.device;
      const entry = await d.waitFor(
        () => d.entries(id).find((e) => e.seq === ack.seq),
        `live entry on ${d.deviceId}`,
      );
      assert.ok(entry.body.case === "message");
      assert.equal(new TextDecoder().decode(entry.body.value.payload), "sender-key hello group");
      const own = entry.body.value.devicePayloads;
      assert.deepEqual(
        own.map((p) => p.deviceId),
        expectOwn(k),
        `${d.deviceId} gets only its own key distribution`,
      );
      if (own[0] !== undefined)
        assert.deepEqual(new Uint8Array(own[0].ciphertext), ciphertextFor(d.deviceId, "skdm"));
    }
    // History, read by every device: the holders' empty entries were never stored (a holder would
    // otherwise find its own empty one), and the sender's copy has none.
    for (const k of everyone) {
      const { entries } = await k.device.conversations.getHistory({
        conversationId: id,
        afterSeq: ack.seq - 1n,
        limit: 1,
      });
      assert.equal(entries[0]?.seq, ack.seq);
      assert.deepEqual(
        devicePayloads(entries[0]).map((p) => p.deviceId),
        k === ka1 ? [] : expectOwn(k),
        `history of ${k.device.deviceId}`,
      );
    }

    // Every device holds the key now: empty entries only, and nothing but the payload is stored.
    const quiet = await a1.gateway.send({
      entry: groupSend(id, "g2", "again", to([ka2, kb1, kb2, kc1, kc2])),
    });
    const { entries } = await kb1.device.conversations.getHistory({
      conversationId: id,
      afterSeq: quiet.seq - 1n,
      limit: 1,
    });
    assert.equal(devicePayloads(entries[0]).length, 0);
    // A payload-only group message (a plaintext-compatible client) is not checked at all.
    const plain = await a1.gateway.send({
      entry: create(OutgoingEntrySchema, {
        clientMsgId: "g3",
        conversationId: id,
        body: { case: "message", value: create(MessageBodySchema, { payload: new Uint8Array([1]) }) },
      }),
    });
    assert.equal(plain.seq, quiet.seq + 1n);
  });

  it("group: refuses missing, extra and stale devices with the exact lists, on the stream and the unary Send, and stores nothing", async () => {
    const { ka1, ka2, kb1, kb2, kc1, kc2, id } = await groupSetup();
    const a1 = ka1.device;
    const before = await a1.conversations.getHistory({ conversationId: id, afterSeq: 0n });

    // Missing, on the stream: Carol's laptop, and Alice's own other device.
    await connected(a1);
    a1.write({ case: "send", value: groupSend(id, "m1", "hi", to([kb1, kb2, kc1]), [kb1]) });
    const error = await a1.waitFor(
      () => a1.ofCase("sendError").find((e) => e.clientMsgId === "m1"),
      "send_error for m1",
    );
    assert.equal(error.code, Code.FailedPrecondition);
    assert.deepEqual(listed(error.mismatch?.missing ?? []), byDevice([expect(ka2), expect(kc2)]));
    assert.deepEqual(error.mismatch?.extra, []);
    assert.deepEqual(error.mismatch?.stale, []);

    // Extra: the sending device itself, and a device nobody has.
    const extra = await mismatchOfSend(
      a1,
      groupSend(id, "m1", "hi", [
        ...to([ka1, ka2, kb1, kb2, kc1, kc2]),
        { deviceId: UNKNOWN_DEVICE, registrationId: 5 },
      ]),
    );
    assert.deepEqual(
      listed(extra.extra),
      byDevice(
        [a1.deviceId, UNKNOWN_DEVICE].map((deviceId) => ({ userId: "", deviceId, registrationId: 0 })),
      ),
    );
    assert.deepEqual(extra.missing, []);

    // Stale: Carol's phone under another registration id.
    const stale = await mismatchOfSend(
      a1,
      groupSend(
        id,
        "m1",
        "hi",
        [...to([ka2, kb1, kb2, kc2]), { deviceId: kc1.device.deviceId, registrationId: 9 }],
        [kc1],
      ),
    );
    assert.deepEqual(listed(stale.stale), [expect(kc1)]);
    assert.deepEqual(stale.missing, []);
    assert.deepEqual(stale.extra, []);

    const after = await a1.conversations.getHistory({ conversationId: id, afterSeq: 0n });
    assert.equal(after.lastSeq, before.lastSeq, "no seq was used");
    // The corrected retry with the same client_msg_id is taken.
    const sent = await a1.gateway.send({ entry: groupSend(id, "m1", "hi", to([ka2, kb1, kb2, kc1, kc2])) });
    assert.equal(sent.seq, before.lastSeq + 1n);
  });

  it("group: a sender-key message naming no devices is checked too; a plain group message is not", async () => {
    const { ka1, ka2, kb1, kb2, kc1, kc2, id } = await groupSetup();
    const a1 = ka1.device;
    const before = await a1.conversations.getHistory({ conversationId: id, afterSeq: 0n });
    // A sender who believes nobody else holds keys is told who does, and nothing is stored.
    const alone = groupSend(id, "s1", "to nobody", []);
    if (alone.body.case === "message") alone.body.value.payloadType = 7;
    const mismatch = await mismatchOfSend(a1, alone);
    assert.deepEqual(listed(mismatch.missing), byDevice([ka2, kb1, kb2, kc1, kc2].map(expect)));
    const after = await a1.conversations.getHistory({ conversationId: id, afterSeq: 0n });
    assert.equal(after.lastSeq, before.lastSeq, "no seq was used");
    // Opaque application bytes in a group (payload_type 0) pass without a device check.
    const plain = groupSend(id, "s2", "plain", []);
    const sent = await a1.gateway.send({ entry: plain });
    assert.equal(sent.seq, before.lastSeq + 1n);
  });

  it("group: a removed member's devices become extra and an added member's missing; so does a member's new device", async () => {
    const { ka1, ka2, kb1, kb2, kc1, kc2, id } = await groupSetup();
    const a1 = ka1.device;
    const bob = kb1.device;
    await connected(a1);
    await a1.gateway.send({ entry: groupSend(id, "k1", "all five", to([ka2, kb1, kb2, kc1, kc2])) });

    // Carol is removed and Dave (two keyed devices) is added.
    const d1 = await fx.user("gd");
    const d2 = fx.track(await d1.link("gd-laptop"));
    const [kd1, kd2] = [d1, d2].map((device, i) => ({ device, registrationId: 300 + i })) as [Keyed, Keyed];
    await Promise.all([kd1, kd2].map((k) => publishKeys(k.device, k.registrationId)));
    await a1.conversations.removeMembers({ conversationId: id, userIds: [kc1.device.userId] });
    const { entry: added } = await a1.conversations.addMembers({ conversationId: id, userIds: [d1.userId] });
    // The sender's stream has seen the change (the gateway drops its cached members as it passes).
    await a1.waitFor(() => a1.entries(id).find((e) => e.seq === added!.seq), "the ADDED entry");

    const stillCarol = await mismatchOfSend(
      a1,
      groupSend(id, "k2", "who is here", to([ka2, kb1, kb2, kc1, kc2]), [kb1]),
    );
    assert.deepEqual(
      listed(stillCarol.extra),
      byDevice([kc1, kc2].map((k) => ({ userId: "", deviceId: k.device.deviceId, registrationId: 0 }))),
    );
    assert.deepEqual(listed(stillCarol.missing), byDevice([expect(kd1), expect(kd2)]));
    assert.deepEqual(stillCarol.stale, []);
    const fixed = await a1.gateway.send({
      entry: groupSend(id, "k2", "who is here", to([ka2, kb1, kb2, kd1, kd2]), [kd1, kd2]),
    });
    assert.equal(fixed.seq, added!.seq + 1n);

    // Bob links a laptop and publishes its keys; once the gateway's 5-second trust in Bob's device
    // list has passed, a send without it is refused with it missing.
    const b3 = fx.track(await bob.link("gb-tablet"));
    const kb3 = { device: b3, registrationId: 299 };
    await publishKeys(b3, kb3.registrationId);
    await sleep(5_200);
    const newDevice = await mismatchOfSend(a1, groupSend(id, "k3", "and you", to([ka2, kb1, kb2, kd1, kd2])));
    assert.deepEqual(listed(newDevice.missing), [expect(kb3)]);
    assert.deepEqual(newDevice.extra, []);
    const withIt = await a1.gateway.send({
      entry: groupSend(id, "k3", "and you", to([ka2, kb1, kb2, kb3, kd1, kd2]), [kb3]),
    });
    assert.equal(withIt.seq, fixed.seq + 1n);
  });

  it("group: refuses device_payloads without payload and over the limits with INVALID_ARGUMENT, on the stream and the unary Send", async () => {
    const { ka1, ka2, kb1, kb2, kc1, kc2, id } = await groupSetup();
    const a1 = ka1.device;
    const invalid = (pattern: RegExp) => (err: unknown) => {
      const e = ConnectError.from(err);
      assert.equal(e.code, Code.InvalidArgument, e.rawMessage);
      assert.match(e.rawMessage, pattern);
      return true;
    };
    const noPayload = groupSend(id, "l1", "x", to([ka2, kb1, kb2, kc1, kc2]), [kb1]);
    if (noPayload.body.case === "message") noPayload.body.value.payload = new Uint8Array(0);
    await assert.rejects(
      a1.gateway.send({ entry: noPayload }),
      invalid(/payload: required with device_payloads in a group/),
    );

    // The payload and the key distributions together count against the payload limit (64 KiB).
    const big = groupSend(id, "l2", "x", to([ka2, kb1, kb2, kc1, kc2]));
    if (big.body.case === "message") {
      big.body.value.payload = new Uint8Array(40_000);
      big.body.value.devicePayloads[1]!.ciphertext = new Uint8Array(30_000);
    }
    await assert.rejects(
      a1.gateway.send({ entry: big }),
      invalid(/payload and device_payloads: 70000 bytes together; the limit is 65536/),
    );

    // One entry more than a full group's devices (1,024 members × 8): about 300 KiB of ids, which
    // the gateway must still parse to refuse precisely, on either path.
    const many = Array.from({ length: 1024 * 8 + 1 }, (_, i) => ({
      deviceId: `dv_${i.toString(36).padStart(26, "0")}`,
      registrationId: 1,
    }));
    await assert.rejects(
      a1.gateway.send({ entry: groupSend(id, "l3", "x", many) }),
      invalid(/at most 8192 devices in a group conversation, got 8193/),
    );
    await connected(a1);
    a1.write({ case: "send", value: groupSend(id, "l4", "x", many) });
    const error = await a1.waitFor(
      () => a1.ofCase("sendError").find((e) => e.clientMsgId === "l4"),
      "send_error for l4",
    );
    assert.equal(error.code, Code.InvalidArgument);
    assert.match(error.message, /at most 8192 devices/);
    a1.write({ case: "send", value: groupSend(id, "l5", "x", to([ka2, kb1, kb2, kc1, kc2])) });
    await a1.waitFor(() => a1.ofCase("sendAck").find((a) => a.clientMsgId === "l5"), "the stream goes on");
  });
});
