import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { ApnsEnvironment } from "../../gen/switchboard/v1/accounts_pb.js";
import { outgoingText } from "../helpers/device.js";
import { messageEntry } from "../helpers/entries.js";
import { WebPushFixture } from "../helpers/webpush.js";

describe("push wake-ups for offline devices, end to end through a Web Push service", () => {
  const fx = new WebPushFixture();
  before(() =>
    fx.start({ SWITCHBOARD_PUSH_PER_DEVICE_PER_MINUTE: "600", SWITCHBOARD_PUSH_PER_DEVICE_BURST: "2" }),
  );
  after(() => fx.stop());
  const setup = () => fx.pair("pa", "pb");

  const pushesFor = (subId: string) => fx.push.pushes.filter((p) => p.id === subId);

  it("wakes an offline device with a content-free push it can decrypt, naming only the conversation and seq", async () => {
    const { alice, bob, sub, id } = await setup();
    const { devices: listed } = await bob.accounts.listDevices({});
    assert.equal(listed[0]?.pushKind, "webpush");
    const sent = await alice.gateway.send({ entry: outgoingText(id, "p1", "the secret words") });
    const received = await fx.push.waitForPush(
      (p) => p.id === sub.id && (p.payload as { s: string }).s === String(sent.seq),
    );
    assert.deepEqual(received.payload, { c: id, s: String(sent.seq) }, "only the conversation id and seq");
    assert.ok(!JSON.stringify(received.payload).includes("secret"));
    assert.equal(received.topic, id, "collapses per conversation at the push service");
    assert.equal(received.urgency, "high");
    assert.equal(received.claims.aud, fx.push.origin);
    // The push tells the device to connect; the entry comes from the log.
    bob.connect();
    await bob.waitFor(
      () => bob.texts(id).includes("the secret words") || undefined,
      "synced after the wake-up",
    );
  });

  it("collapses a burst into few pushes ending with the latest seq, and does not push to a live device", async () => {
    const { alice, bob, sub, id } = await setup();
    // Sent at once, as a burst really arrives: the test is about collapsing, and ten sends one
    // after another on a busy machine can be slow enough for each to earn its own fx.push.
    const acks = await Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        alice.gateway.send({ entry: outgoingText(id, `b${i}`, `burst ${i}`) }),
      ),
    );
    let last = 0n;
    for (const a of acks) if (a.seq > last) last = a.seq;
    await fx.push.waitForPush(
      (p) => p.id === sub.id && (p.payload as { s: string }).s === String(last),
      5000,
    );
    const count = pushesFor(sub.id).length;
    assert.ok(count <= 4, `ten messages made ${count} pushes`);
    bob.connect();
    await bob.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught up");
    await alice.gateway.send({ entry: outgoingText(id, "online", "while bob is online") });
    await bob.waitFor(() => bob.texts(id).includes("while bob is online") || undefined, "live delivery");
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(pushesFor(sub.id).length, count, "no push while the device holds a stream");
  });

  it("sends nothing for a muted conversation, and pushes again once unmuted", async () => {
    const { alice, bob, sub, id } = await setup();
    await bob.conversations.setMute({ conversationId: id, mutedUntilMs: BigInt(Date.now() + 3_600_000) });
    const { conversation } = await bob.conversations.getConversation({ conversationId: id });
    assert.ok(conversation!.mutedUntilMs > 0n);
    const muted = await alice.gateway.send({ entry: outgoingText(id, "m1", "muted") });
    await new Promise((r) => setTimeout(r, 400));
    const named = (seq: bigint) =>
      pushesFor(sub.id).filter((p) => (p.payload as { s: string }).s === String(seq));
    assert.equal(named(muted.seq).length, 0, "muted: no wake-up for the message");
    await bob.conversations.setMute({ conversationId: id, mutedUntilMs: 0n });
    const sent = await alice.gateway.send({ entry: outgoingText(id, "m2", "unmuted") });
    await fx.push.waitForPush((p) => p.id === sub.id && (p.payload as { s: string }).s === String(sent.seq));
  });

  it("wakes a muted member whom a message mentions, and only that message", async () => {
    const { alice, bob, sub, id } = await setup();
    await bob.conversations.setMute({ conversationId: id, mutedUntilMs: BigInt(Date.now() + 3_600_000) });
    const plain = await alice.gateway.send({ entry: outgoingText(id, "n1", "no mention") });
    const mention = await alice.gateway.send({
      entry: messageEntry(id, "n2", {
        payload: new TextEncoder().encode("@bob look"),
        mentionedUserIds: [bob.userId],
      }),
    });
    await fx.push.waitForPush(
      (p) => p.id === sub.id && (p.payload as { s: string }).s === String(mention.seq),
    );
    const named = (seq: bigint) =>
      pushesFor(sub.id).filter((p) => (p.payload as { s: string }).s === String(seq));
    assert.equal(named(plain.seq).length, 0, "the message without a mention stays muted");
  });

  it("removes a target the push service reports gone", async () => {
    const { alice, bob, sub, id } = await setup();
    fx.push.unsubscribe(sub.id);
    await alice.gateway.send({ entry: outgoingText(id, "g1", "to a gone subscription") });
    const deadline = Date.now() + 5000;
    for (;;) {
      const { devices: listed } = await bob.accounts.listDevices({});
      if (listed[0]?.pushKind === "") break;
      assert.ok(Date.now() < deadline, "the gone target was removed");
      await new Promise((r) => setTimeout(r, 50));
    }
  });

  it("refuses malformed or unsafe targets precisely", async () => {
    const { bob } = await setup();
    await assert.rejects(
      bob.accounts.setPushTarget({
        target: { case: "webPush", value: { endpoint: "ftp://x", p256dh: "a", auth: "b" } },
      }),
      /must be an https URL/,
    );
    await assert.rejects(
      bob.accounts.setPushTarget({
        target: {
          case: "apns",
          value: { token: "abc", topic: "com.example.app", environment: ApnsEnvironment.SANDBOX },
        },
      }),
      /apns.token/,
    );
  });
});
