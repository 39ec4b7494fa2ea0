import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { outgoingText, TestDevice, uniqueName } from "../helpers/device.js";
import { serverFixture } from "../helpers/fixture.js";

/**
 * omit_own_sends (StreamOptionsFrame): a stream that asks for it is not pushed back, live, the
 * entries it sent itself, and nothing else changes: its other devices and its peer get them,
 * the log still serves them, and a unary send of the same device still arrives on the stream.
 */
describe("stream option omit_own_sends", () => {
  const fx = serverFixture();
  const track = (d: TestDevice) => fx.track(d);

  async function setup() {
    const alice = track(await TestDevice.register(fx.server.url, uniqueName("alice")));
    const bob = track(await TestDevice.register(fx.server.url, uniqueName("bob")));
    const laptop = track(await alice.link("alice-laptop"));
    const { conversation } = await alice.conversations.openDirect({ peerUserId: bob.userId });
    const id = conversation!.conversationId;
    for (const d of [alice, laptop, bob]) {
      d.connect();
      await d.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught up");
    }
    return { alice, laptop, bob, id };
  }

  const seqs = (d: TestDevice, id: string) => d.entries(id).map((e) => e.seq);

  it("skips the live echo of the stream's own sends and nothing else", async () => {
    const { alice, laptop, bob, id } = await setup();
    alice.write({ case: "options", value: { omitOwnSends: true } as never });
    for (let i = 0; i < 20; i++) alice.sendText(id, `own-${i}`, `own ${i}`);
    await alice.waitFor(() => alice.ofCase("sendAck").length >= 20 || undefined, "20 send acks");
    const acked = alice.ofCase("sendAck").map((a) => a.seq);
    // Bob answers: alice must get his entries live, in order, after a run of her own.
    bob.sendText(id, "bob-1", "hello alice");
    const bobAck = await bob.waitFor(
      () => bob.ofCase("sendAck").find((a) => a.clientMsgId === "bob-1"),
      "bob ack",
    );
    await alice.waitFor(() => seqs(alice, id).includes(bobAck.seq) || undefined, "alice gets bob's entry");
    for (const d of [laptop, bob]) {
      await d.waitFor(
        () => acked.every((s) => seqs(d, id).includes(s)) || undefined,
        "the others get all 20",
      );
    }
    assert.deepEqual(
      seqs(alice, id).filter((s) => acked.includes(s)),
      [],
      "none of alice's own sends came back to the stream that sent them",
    );

    // The log still has them: a sync request from before her first send returns all of them.
    alice.write({
      case: "syncRequest",
      value: { requestId: 7, conversationId: id, afterSeq: 0n, limit: 100 } as never,
    });
    const page = await alice.waitFor(
      () => alice.ofCase("syncPage").find((p) => p.requestId === 7),
      "sync page",
    );
    const logged = page.entries.map((e) => e.seq);
    for (const s of acked) assert.ok(logged.includes(s), `seq ${s} is served from the log`);

    // A unary send of the same device is not a send of this stream: it still arrives live.
    const unary = await alice.gateway.send({ entry: outgoingText(id, "unary-1", "by unary") });
    await alice.waitFor(() => seqs(alice, id).includes(unary.seq) || undefined, "the unary send arrives");
  });

  it("echoes every entry without the option, and again once it is turned off", async () => {
    const { alice, id } = await setup();
    alice.sendText(id, "echo-1", "one");
    const first = await alice.waitFor(
      () => alice.ofCase("sendAck").find((a) => a.clientMsgId === "echo-1"),
      "ack",
    );
    await alice.waitFor(() => seqs(alice, id).includes(first.seq) || undefined, "echo without the option");
    alice.write({ case: "options", value: { omitOwnSends: true } as never });
    alice.sendText(id, "quiet-1", "two");
    const quiet = await alice.waitFor(
      () => alice.ofCase("sendAck").find((a) => a.clientMsgId === "quiet-1"),
      "ack",
    );
    alice.write({ case: "options", value: { omitOwnSends: false } as never });
    alice.sendText(id, "echo-2", "three");
    const second = await alice.waitFor(
      () => alice.ofCase("sendAck").find((a) => a.clientMsgId === "echo-2"),
      "ack",
    );
    // The entry after a skipped one arrives live: the skip counts as pushed, so it is no gap.
    await alice.waitFor(() => seqs(alice, id).includes(second.seq) || undefined, "echo after turning it off");
    assert.ok(!seqs(alice, id).includes(quiet.seq), "the send made while the option was on was not echoed");
  });

  it("batch_receipts: receipts come in receipts frames, each once; without it, one receipt frame each", async () => {
    const alice = track(await TestDevice.register(fx.server.url, uniqueName("alice")));
    const members = [
      track(await TestDevice.register(fx.server.url, uniqueName("m1"))),
      track(await TestDevice.register(fx.server.url, uniqueName("m2"))),
      track(await TestDevice.register(fx.server.url, uniqueName("m3"))),
    ];
    const { conversation } = await alice.conversations.createGroup({
      title: "receipts",
      memberUserIds: members.map((m) => m.userId),
    });
    const id = conversation!.conversationId;
    const laptop = track(await alice.link("alice-laptop"));
    for (const d of [alice, laptop, ...members]) {
      d.connect();
      await d.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught up");
    }
    alice.write({ case: "options", value: { omitOwnSends: true, batchReceipts: true } as never });
    alice.sendText(id, "r-1", "hello group");
    const { seq } = await alice.waitFor(
      () => alice.ofCase("sendAck").find((a) => a.clientMsgId === "r-1"),
      "ack",
    );
    for (const m of members) {
      await m.waitFor(() => m.entries(id).some((e) => e.seq === seq) || undefined, "member gets it");
      m.write({ case: "ack", value: { cursors: [{ conversationId: id, seq }] } as never });
    }
    const batched = () =>
      alice
        .ofCase("receipts")
        .flatMap((f) => f.receipts)
        .filter((r) => r.upToSeq === seq);
    await alice.waitFor(() => batched().length >= 3 || undefined, "three delivered receipts");
    assert.deepEqual(
      batched()
        .map((r) => r.userId)
        .sort(),
      members.map((m) => m.userId).sort(),
      "each member's receipt once",
    );
    assert.equal(
      alice.ofCase("receipt").length,
      0,
      "no single receipt frames for a stream that asked for batches",
    );
    // The laptop did not ask: the same receipts, one frame each.
    await laptop.waitFor(
      () => laptop.ofCase("receipt").filter((r) => r.upToSeq === seq).length >= 3 || undefined,
      "single receipts",
    );
    assert.equal(laptop.ofCase("receipts").length, 0);
  });
});
