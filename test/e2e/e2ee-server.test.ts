import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  DeviceCiphertextSchema,
  type Entry,
  MembershipAction,
  type OutgoingEntry,
} from "../../gen/switchboard/v1/entry_pb.js";
import { DeviceMismatchSchema } from "../../gen/switchboard/v1/gateway_pb.js";
import { outgoingText } from "../helpers/device.js";
import { messageEntry } from "../helpers/entries.js";
import { serverFixture } from "../helpers/fixture.js";
import { type Keyed, publishKeys } from "../helpers/keys.js";

// The server's side of end-to-end encryption (issue 17): what the server itself must refuse or
// withhold, whatever a client's caches say.

const SENDER_KEY = 7;

/**
 * A sender-key group send: the content once in payload (payload_type 7), a key distribution for
 * the devices in `distributeTo`, and an empty entry for every other device named (a key holder).
 */
function groupSend(
  conversationId: string,
  clientMsgId: string,
  to: Keyed[],
  distributeTo: Keyed[] = [],
): OutgoingEntry {
  const needKey = new Set(distributeTo.map((k) => k.device.deviceId));
  return messageEntry(conversationId, clientMsgId, {
    payload: new TextEncoder().encode(`sender-key ciphertext ${clientMsgId}`),
    payloadType: SENDER_KEY,
    devicePayloads: to.map((k) =>
      create(DeviceCiphertextSchema, {
        deviceId: k.device.deviceId,
        registrationId: k.registrationId,
        ciphertext: needKey.has(k.device.deviceId) ? new TextEncoder().encode("skdm") : new Uint8Array(0),
        type: needKey.has(k.device.deviceId) ? 3 : 0,
      }),
    ),
  });
}

const texts = (entries: Entry[]) =>
  entries.flatMap((e) =>
    e.body.case === "message" ? [new TextDecoder().decode(e.body.value.payload)] : [`#${e.body.case}`],
  );

describe("E2EE, the server's side (one server process, real gRPC)", () => {
  const fx = serverFixture();

  it("refuses a group send checked against members from before a removal (unary Send, no stream)", async () => {
    const [alice, bob, carol] = [await fx.user("ra"), await fx.user("rb"), await fx.user("rc")];
    const [ka, kb, kc] = [alice, bob, carol].map((device, i) => ({ device, registrationId: 500 + i }));
    await Promise.all([ka, kb, kc].map((k) => publishKeys(k!.device, k!.registrationId)));
    const { conversation } = await alice.conversations.createGroup({
      title: "G",
      memberUserIds: [bob.userId, carol.userId],
    });
    const id = conversation!.conversationId;

    // Bob hands his sender key to alice and carol; the gateway now holds the members (for 5 s).
    const first = await bob.gateway.send({ entry: groupSend(id, "s1", [ka!, kc!], [ka!, kc!]) });
    assert.equal(first.seq, 2n);

    // Alice removes carol. Nobody holds a stream, so no membership entry passes the gateway.
    const { entry: removed } = await alice.conversations.removeMembers({
      conversationId: id,
      userIds: [carol.userId],
    });
    assert.equal(removed?.seq, 3n);

    // Bob, who never saw the removal, sends under the key carol holds: refused, with carol's
    // device as extra so his client drops it and rotates its key.
    const refused = await bob.gateway.send({ entry: groupSend(id, "s2", [ka!, kc!]) }).then(
      () => assert.fail("a send addressed to a removed member was accepted"),
      (err: unknown) => ConnectError.from(err),
    );
    assert.equal(refused.code, Code.FailedPrecondition, refused.rawMessage);
    assert.match(refused.rawMessage, /members changed/);
    const mismatch = refused.findDetails(DeviceMismatchSchema)[0];
    assert.ok(mismatch !== undefined, "the refusal carries a DeviceMismatch");
    assert.deepEqual(
      mismatch.extra.map((d) => d.deviceId),
      [carol.deviceId],
    );
    assert.deepEqual(mismatch.missing, []);

    // Nothing was stored after the removal; the repaired send (a new key for alice) goes through.
    const log = await alice.conversations.getHistory({ conversationId: id, afterSeq: 0n });
    assert.equal(log.lastSeq, 3n);
    const last = log.entries.at(-1);
    assert.ok(last?.body.case === "membership" && last.body.value.action === MembershipAction.REMOVED);
    const repaired = await bob.gateway.send({ entry: groupSend(id, "s2", [ka!], [ka!]) });
    assert.equal(repaired.seq, 4n);
  });

  it("gives a newly linked device no history from before its link, in groups and direct conversations", async () => {
    const alice = await fx.user("la");
    const bob = await fx.user("lb");
    const { conversation: group } = await alice.conversations.createGroup({
      title: "G",
      memberUserIds: [bob.userId],
    });
    const { conversation: direct } = await alice.conversations.openDirect({ peerUserId: bob.userId });
    const [g, d] = [group!.conversationId, direct!.conversationId];
    await alice.gateway.send({ entry: outgoingText(g, "g1", "group before the link") });
    await alice.gateway.send({ entry: outgoingText(d, "d1", "direct before the link") });

    const bob2 = fx.track(await bob.link("bob-laptop"));
    await alice.gateway.send({ entry: outgoingText(g, "g2", "group after the link") });
    await alice.gateway.send({ entry: outgoingText(d, "d2", "direct after the link") });

    for (const [id, kind] of [
      [g, "group"],
      [d, "direct"],
    ] as const) {
      // History (unary), from the start of the log.
      const page = await bob2.conversations.getHistory({ conversationId: id, afterSeq: 0n });
      assert.deepEqual(texts(page.entries), [`${kind} after the link`], `${kind}: history on the new device`);
      // The user's first device keeps the whole history.
      const full = await bob.conversations.getHistory({ conversationId: id, afterSeq: 0n });
      assert.deepEqual(texts(full.entries), [
        "#membership",
        `${kind} before the link`,
        `${kind} after the link`,
      ]);
      // The conversation as the new device sees it: nothing before the link is pending.
      const { conversation } = await bob2.conversations.getConversation({ conversationId: id });
      assert.equal(conversation!.deliveredUpTo, 2n, `${kind}: delivered floor`);
      assert.equal(conversation!.readUpTo, 2n, `${kind}: read floor`);
    }
    const listed = await bob2.conversations.listConversations({});
    assert.deepEqual(
      listed.conversations.map((c) => c.deliveredUpTo),
      [2n, 2n],
    );

    // The backlog on connect, and a sync page asked for from seq 0.
    bob2.connect();
    await bob2.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught up");
    assert.deepEqual(texts(bob2.entries(g)), ["group after the link"]);
    assert.deepEqual(texts(bob2.entries(d)), ["direct after the link"]);
    bob2.write({
      case: "syncRequest",
      value: { requestId: 9, conversationId: g, afterSeq: 0n, limit: 10 } as never,
    });
    const sync = await bob2.waitFor(
      () => bob2.ofCase("syncPage").find((p) => p.requestId === 9),
      "sync page",
    );
    assert.deepEqual(texts(sync.entries), ["group after the link"]);

    // A conversation the user joins after the link is the device's from where the user joined.
    const { conversation: later } = await alice.conversations.createGroup({
      title: "H",
      memberUserIds: [bob.userId],
    });
    await alice.gateway.send({ entry: outgoingText(later!.conversationId, "h1", "new group") });
    const h = await bob2.conversations.getHistory({ conversationId: later!.conversationId, afterSeq: 0n });
    assert.deepEqual(texts(h.entries), ["#membership", "new group"]);
  });
});
