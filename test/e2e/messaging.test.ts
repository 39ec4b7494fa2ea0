import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ReceiptKind } from "../../gen/switchboard/v1/gateway_pb.js";
import { outgoingText, TestDevice, uniqueName } from "../helpers/device.js";
import { serverFixture } from "../helpers/fixture.js";

describe("messaging end to end (one server process, real gRPC)", () => {
  const fx = serverFixture();
  const track = (d: TestDevice) => fx.track(d);

  async function pair() {
    const alice = track(await TestDevice.register(fx.server.url, uniqueName("alice")));
    const bob = track(await TestDevice.register(fx.server.url, uniqueName("bob")));
    const { conversation } = await alice.conversations.openDirect({ peerUserId: bob.userId });
    return { alice, bob, id: conversation!.conversationId };
  }

  it("delivers a 1:1 message live, acks it with a seq, and sends delivered and read receipts", async () => {
    const { alice, bob, id } = await pair();
    alice.connect();
    bob.connect();
    await alice.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "alice caught up");
    await bob.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "bob caught up");
    alice.sendText(id, "m1", "hello bob");
    const ack = await alice.waitFor(
      () => alice.ofCase("sendAck").find((a) => a.clientMsgId === "m1"),
      "send ack",
    );
    assert.equal(ack.conversationId, id);
    assert.equal(ack.seq, 2n, "seq 1 is the CREATED membership entry");
    await bob.waitFor(() => bob.texts(id).includes("hello bob") || undefined, "bob receives");
    const [entry] = bob.entries(id).filter((e) => e.seq === 2n);
    assert.equal(entry?.senderUserId, alice.userId);
    assert.equal(entry?.senderDeviceId, alice.deviceId);
    bob.write({ case: "ack", value: { cursors: [{ conversationId: id, seq: 2n }] } as never });
    const delivered = await alice.waitFor(
      () => alice.ofCase("receipt").find((r) => r.kind === ReceiptKind.DELIVERED && r.upToSeq === 2n),
      "delivered receipt",
    );
    assert.equal(delivered.userId, bob.userId);
    bob.write({ case: "read", value: { cursors: [{ conversationId: id, seq: 2n }] } as never });
    await alice.waitFor(
      () => alice.ofCase("receipt").find((r) => r.kind === ReceiptKind.READ && r.upToSeq === 2n),
      "read receipt",
    );
    const { members } = await alice.conversations.getConversation({ conversationId: id });
    const bobMember = members.find((m) => m.userId === bob.userId);
    assert.equal(bobMember?.readUpTo, 2n);
    assert.equal(bobMember?.deliveredUpTo, 2n);
  });

  it("keeps per-conversation order with gapless seqs under concurrent senders", async () => {
    const { alice, bob, id } = await pair();
    const alice2 = track(await alice.link("alice-laptop"));
    alice.connect();
    alice2.connect();
    bob.connect();
    const perSender = 60;
    for (let i = 0; i < perSender; i++) {
      alice.sendText(id, `a${i}`, `a${i}`);
      alice2.sendText(id, `l${i}`, `l${i}`);
      bob.sendText(id, `b${i}`, `b${i}`);
    }
    const total = perSender * 3 + 1;
    for (const d of [alice, alice2, bob]) {
      // alice2 was linked after the conversation's first entry, which it is never served.
      const first = d === alice2 ? 2 : 1;
      const count = total - first + 1;
      await d.waitFor(() => d.entries(id).length >= count || undefined, `all entries at ${d.deviceId}`);
      const seqs = d.entries(id).map((e) => Number(e.seq));
      assert.deepEqual(
        seqs,
        Array.from({ length: count }, (_, i) => i + first),
        "every device sees its part of 1..N in order",
      );
    }
    // Each sender's own messages keep their send order.
    const texts = bob.texts(id);
    for (const prefix of ["a", "l", "b"]) {
      const mine = texts.filter((t) => t.startsWith(prefix)).map((t) => Number(t.slice(1)));
      assert.deepEqual(
        mine,
        [...mine].sort((x, y) => x - y),
      );
    }
  });

  it("returns the original seq for a retried clientMsgId and never appends twice", async () => {
    const { alice, bob, id } = await pair();
    const first = await alice.gateway.send({ entry: outgoingText(id, "retry-1", "once") });
    const again = await alice.gateway.send({ entry: outgoingText(id, "retry-1", "once") });
    assert.equal(again.seq, first.seq);
    alice.connect();
    alice.sendText(id, "retry-1", "once");
    const ack = await alice.waitFor(
      () => alice.ofCase("sendAck").find((a) => a.clientMsgId === "retry-1"),
      "ack",
    );
    assert.equal(ack.seq, first.seq);
    const history = await bob.conversations.getHistory({ conversationId: id });
    assert.equal(history.entries.filter((e) => e.clientMsgId === "retry-1").length, 1);
    assert.equal(history.lastSeq, 2n);
  });

  it("delivers everything after the cursor to a device that was offline, then live", async () => {
    const { alice, bob, id } = await pair();
    for (let i = 0; i < 30; i++)
      await alice.gateway.send({ entry: outgoingText(id, `off${i}`, `offline ${i}`) });
    // A group bob was added to while away arrives too.
    const { conversation: group } = await alice.conversations.createGroup({
      title: "while away",
      memberUserIds: [bob.userId],
    });
    await alice.gateway.send({ entry: outgoingText(group!.conversationId, "g1", "in the group") });
    bob.connect();
    await bob.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught up");
    assert.equal(bob.texts(id).length, 30);
    assert.deepEqual(bob.texts(group!.conversationId), ["in the group"]);
    assert.equal(bob.frames[0]?.frame.case, "ready");
    bob.write({ case: "ack", value: { cursors: [{ conversationId: id, seq: 31n }] } as never });
    // Cursor flushes are batched; give the sequencer a moment, then reconnect: nothing is resent.
    await new Promise((r) => setTimeout(r, 200));
    await bob.disconnect();
    bob.connect();
    await bob.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught up again");
    assert.equal(bob.texts(id).length, 0, "acknowledged entries are not redelivered");
    assert.equal(bob.texts(group!.conversationId).length, 1, "unacknowledged group entries are redelivered");
    alice.connect();
    alice.sendText(id, "live", "live again");
    await bob.waitFor(() => bob.texts(id).includes("live again") || undefined, "live after resume");
  });

  it("delivers to every device of the recipient and to the sender's other devices", async () => {
    const { alice, bob, id } = await pair();
    const bob2 = track(await bob.link("bob-tablet"));
    const alice2 = track(await alice.link("alice-tablet"));
    for (const d of [bob, bob2, alice2]) d.connect();
    for (const d of [bob, bob2, alice2])
      await d.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught up");
    await alice.gateway.send({ entry: outgoingText(id, "multi", "to all devices") });
    for (const d of [bob, bob2, alice2]) {
      await d.waitFor(() => d.texts(id).includes("to all devices") || undefined, `device ${d.deviceId}`);
    }
  });

  it("relays typing live to the other members and never stores it", async () => {
    const { alice, bob, id } = await pair();
    alice.connect();
    bob.connect();
    await bob.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught up");
    alice.write({ case: "typing", value: { conversationId: id, active: true } as never });
    const typing = await bob.waitFor(() => bob.ofCase("typing").find((t) => t.active), "typing");
    assert.equal(typing.userId, alice.userId);
    assert.equal(alice.ofCase("typing").length, 0, "the typing device gets no echo of itself");
    const history = await bob.conversations.getHistory({ conversationId: id });
    assert.equal(history.lastSeq, 1n, "typing adds nothing to the log");
  });

  it("reports presence online and last seen to subscribed contacts", async () => {
    const { alice, bob } = await pair();
    bob.connect();
    await bob.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught up");
    bob.write({
      case: "presenceSubscribe",
      value: { subscribeUserIds: [alice.userId], unsubscribeUserIds: [] } as never,
    });
    await bob.waitFor(
      () => bob.ofCase("presence").find((p) => p.userId === alice.userId && !p.online),
      "offline",
    );
    alice.connect();
    await bob.waitFor(
      () => bob.ofCase("presence").find((p) => p.userId === alice.userId && p.online),
      "online",
    );
    await alice.disconnect();
    const gone = await bob.waitFor(
      () => bob.ofCase("presence").filter((p) => p.userId === alice.userId && !p.online)[1],
      "offline again",
    );
    assert.ok(gone.lastSeenMs > 0n);
  });
});
