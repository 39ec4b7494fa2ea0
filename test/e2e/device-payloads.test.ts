import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { IdentityKeyPair, KEMKeyPair, PrivateKey } from "@signalapp/libsignal-client";
import {
  DeleteBodySchema,
  DeviceCiphertextSchema,
  type Entry,
  MessageBodySchema,
  type OutgoingEntry,
  OutgoingEntrySchema,
} from "../../gen/switchboard/v1/entry_pb.js";
import { DeviceMismatchSchema, type MismatchedDevice } from "../../gen/switchboard/v1/gateway_pb.js";
import { KeyService } from "../../gen/switchboard/v1/keys_pb.js";
import type { TestDevice } from "../helpers/device.js";
import { serverFixture } from "../helpers/fixture.js";

const UNKNOWN_DEVICE = "dv_00000000000000000000000000";

function signed(identity: IdentityKeyPair, keyId: number, key: Uint8Array) {
  const publicKey = new Uint8Array(key);
  return { keyId, publicKey, signature: identity.privateKey.sign(publicKey) };
}

/** Publishes a device's keys (as its first upload) so the directory knows its registration id. */
async function publishKeys(device: TestDevice, registrationId: number): Promise<void> {
  const identity = IdentityKeyPair.generate();
  await createClient(KeyService, device.transport).uploadKeys({
    identityKey: identity.publicKey.serialize(),
    registrationId,
    signedPrekey: signed(identity, 1, PrivateKey.generate().getPublicKey().serialize()),
    kyberLastResortPrekey: signed(identity, 1_000_000, KEMKeyPair.generate().getPublicKey().serialize()),
    oneTimePrekeys: [],
    oneTimeKyberPrekeys: [],
  });
}

/** A device with its registration id, as a sender's sessions know it. */
interface Keyed {
  device: TestDevice;
  registrationId: number;
}

/** A fake ciphertext that names its recipient, so a test can see who got what. */
function ciphertextFor(deviceId: string, text: string): Uint8Array {
  return new TextEncoder().encode(`${text} for ${deviceId}`);
}

function pairwise(
  conversationId: string,
  clientMsgId: string,
  text: string,
  to: Array<{ deviceId: string; registrationId: number }>,
): OutgoingEntry {
  return create(OutgoingEntrySchema, {
    clientMsgId,
    conversationId,
    body: {
      case: "message",
      value: create(MessageBodySchema, {
        devicePayloads: to.map((d) =>
          create(DeviceCiphertextSchema, {
            deviceId: d.deviceId,
            registrationId: d.registrationId,
            ciphertext: ciphertextFor(d.deviceId, text),
            type: 3,
          }),
        ),
      }),
    },
  });
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
    const { conversation } = await a1.conversations.createGroup({ title: "g", memberUserIds: [b1.userId] });
    const group = pairwise(conversation!.conversationId, "x3", "hi", to([ka2, kb1, kb2]));
    await assert.rejects(a1.gateway.send({ entry: group }), (err: unknown) => {
      const e = ConnectError.from(err);
      return e.code === Code.InvalidArgument && /only in direct conversations/.test(e.rawMessage);
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
});
