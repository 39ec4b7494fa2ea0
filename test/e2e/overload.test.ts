import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Code } from "@connectrpc/connect";
import { TestDevice, uniqueName } from "../helpers/device.js";
import { serverFixture } from "../helpers/fixture.js";

/**
 * Overload from the sender's side: past the gateway's bound on sends in flight, a send is refused
 * UNAVAILABLE with a retry hint (services/gateway/admission.ts), takes no seq, and goes through
 * when retried with the same client_msg_id; what was acknowledged is in the log once, in order.
 */
describe("a gateway past its capacity pushes senders back", () => {
  const fx = serverFixture({
    SWITCHBOARD_GATEWAY_SENDS_IN_FLIGHT: "4",
    // A target of a minute: the gateway assumes it answers at least 2,048 sends in the target (34
    // a second), not 4,096 a second, so a crowd of dozens is told more than the shortest hint.
    SWITCHBOARD_SEND_QUEUE_TARGET_MS: "60000",
    SWITCHBOARD_SENDS_PER_SECOND: "100000",
    SWITCHBOARD_SEND_BURST: "100000",
    SWITCHBOARD_FRAMES_PER_SECOND: "100000",
    SWITCHBOARD_FRAME_BURST: "100000",
  });

  /** Alice, streaming and caught up, and her direct conversation with Bob. */
  async function sender(): Promise<{ alice: TestDevice; id: string }> {
    const alice = fx.track(await TestDevice.register(fx.server.url, uniqueName("alice")));
    const bob = fx.track(await TestDevice.register(fx.server.url, uniqueName("bob")));
    const { conversation } = await alice.conversations.openDirect({ peerUserId: bob.userId });
    alice.connect();
    await alice.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught up");
    return { alice, id: conversation!.conversationId };
  }

  it("refuses UNAVAILABLE with a retry hint, loses nothing, and takes every retry", async () => {
    const { alice, id } = await sender();

    const total = 200;
    for (let i = 0; i < total; i++) alice.sendText(id, `m${i}`, `message ${i}`);
    const answered = () =>
      new Set([...alice.ofCase("sendAck"), ...alice.ofCase("sendError")].map((a) => a.clientMsgId));
    await alice.waitFor(() => answered().size >= total || undefined, "every send answered");
    const errors = alice.ofCase("sendError");
    assert.ok(errors.length > 0, "4 sends in flight at most: a burst of 200 must meet the bound");
    for (const e of errors) {
      assert.equal(e.code, Code.Unavailable, e.message);
      // The first refused send met the bound; the later ones wait for it to come back.
      assert.match(e.message, /^(server overloaded|send held)/);
      assert.ok(e.retryAfterMs > 0, `retry hint ${e.retryAfterMs}`);
    }

    // Retry the refused sends after their hint, as a client does, a few at a time.
    const ids = Array.from({ length: total }, (_, i) => `m${i}`);
    await retryInOrder(alice, id, ids);
    const acks = alice.ofCase("sendAck");
    const byId = new Map(acks.map((a) => [a.clientMsgId, a.seq]));
    assert.equal(byId.size, total, "every send was acknowledged in the end");
    // Refusals took no seq: the acknowledged seqs are exactly 2..total+1 (seq 1 is CREATED).
    assert.deepEqual(
      [...new Set(byId.values())].sort((x, y) => (x < y ? -1 : 1)),
      Array.from({ length: total }, (_, i) => BigInt(i + 2)),
    );
    const history = await alice.conversations.getHistory({ conversationId: id, afterSeq: 0n, limit: 1000 });
    const logged = history.entries.filter((e) => e.clientMsgId !== "").map((e) => e.clientMsgId);
    assert.equal(logged.length, total, "each send is in the log once");
    assert.equal(new Set(logged).size, total);
  });

  it("holds the conversation's later sends until a refused one comes back, however late they are read; other conversations go on", async () => {
    const { alice, id } = await sender();
    const carol = fx.track(await TestDevice.register(fx.server.url, uniqueName("carol")));
    const other = (await alice.conversations.openDirect({ peerUserId: carol.userId })).conversation!
      .conversationId;

    const ids = Array.from({ length: 40 }, (_, i) => `b${i}`);
    for (const m of ids) alice.sendText(id, m, `message ${m}`);
    const answered = () =>
      new Set([...alice.ofCase("sendAck"), ...alice.ofCase("sendError")].map((a) => a.clientMsgId));
    await alice.waitFor(() => answered().size >= ids.length || undefined, "the burst answered");
    const acked = new Set(alice.ofCase("sendAck").map((a) => a.clientMsgId));
    const firstRefused = ids.findIndex((m) => !acked.has(m));
    assert.ok(firstRefused >= 0, "4 sends in flight at most: a burst of 40 must meet the bound");
    assert.deepEqual(
      ids.filter((m) => acked.has(m)),
      ids.slice(0, firstRefused),
      "no send after the first refused one was taken",
    );

    // Long past every hint (at most 150 ms for the bound in flight) and with nothing in flight,
    // the device's next send would be taken at once, ahead of the refused sends' retries: it is
    // held instead, until the first refused send comes back.
    await new Promise((r) => setTimeout(r, 600));
    const late = await sendAnswered(alice, id, "late");
    assert.ok(
      "code" in late,
      `the late send was taken (seq ${"seq" in late ? late.seq : "?"}) ahead of ${ids[firstRefused]}`,
    );
    assert.equal(late.code, Code.Unavailable);
    assert.match(late.message, new RegExp(`send held: .*client_msg_id ${ids[firstRefused]}\\b`));
    assert.ok(late.retryAfterMs > 0);
    // Order is per conversation: the same stream's send to another conversation is taken.
    const elsewhere = await sendAnswered(alice, other, "elsewhere");
    assert.ok(
      "seq" in elsewhere,
      `the other conversation was held: ${"message" in elsewhere ? elsewhere.message : ""}`,
    );

    // Sent again in order, every send is taken, and the seqs follow the order they were made in.
    const order = [...ids, "late"];
    await retryInOrder(alice, id, order);
    const seqOf = new Map(alice.ofCase("sendAck").map((a) => [a.clientMsgId, a.seq]));
    const seqs = order.map((m) => seqOf.get(m));
    assert.deepEqual(
      seqs,
      Array.from({ length: order.length }, (_, i) => BigInt(i + 2)),
    );
  });
  it("tells a crowd refused together to come back over the time their answers take, in the order refused", async () => {
    const { alice } = await sender();
    const bob = fx.track(await TestDevice.register(fx.server.url, uniqueName("bob")));
    // One send to each of 60 conversations at once: a refusal holds only its own conversation,
    // so past the 4 in flight each is refused by the admission itself.
    const groups: string[] = [];
    for (let i = 0; i < 60; i++) {
      const { conversation } = await alice.conversations.createGroup({
        title: `crowd ${i}`,
        memberUserIds: [bob.userId],
      });
      groups.push(conversation!.conversationId);
    }
    for (const [i, g] of groups.entries()) alice.sendText(g, `c${i}`, `crowd ${i}`);
    const crowd = new Set(groups.map((_, i) => `c${i}`));
    const answered = () =>
      [...alice.ofCase("sendAck"), ...alice.ofCase("sendError")].filter((a) => crowd.has(a.clientMsgId));
    await alice.waitFor(() => answered().length >= crowd.size || undefined, "the crowd answered");
    const refused = alice.ofCase("sendError").filter((e) => crowd.has(e.clientMsgId));
    assert.ok(refused.length >= 40, `4 sends in flight at most: ${refused.length} of 60 refused`);
    for (const e of refused) assert.match(e.message, /^server overloaded/);
    const hints = refused.map((e) => e.retryAfterMs);
    const report = `hints in the order refused: ${hints.join(" ")}`;
    // The first refused found none waiting: the shortest hint (100 ms, jittered up to 150).
    assert.ok(hints[0]! >= 100 && hints[0]! <= 150, report);
    // The last ten found 30 and more waiting ahead of them. The rate the gateway divides by is
    // what it answered in the seconds it refused in (a few dozen a second in this file's
    // tests), or the 34 a second it assumes when it refused nothing in the last ten: most of a
    // second, and 300 ms even at 100 a second. A fixed short hint would have brought every one of them
    // back within 150 ms.
    const last = hints.slice(-10);
    assert.ok(
      last.every((h) => h > 300),
      report,
    );
    // In the order refused: the first ten are told less than the last ten, on average.
    const mean = (xs: number[]) => xs.reduce((x, y) => x + y, 0) / xs.length;
    assert.ok(mean(hints.slice(0, 10)) < mean(last), report);
    assert.ok(
      hints.every((h) => h <= 7500),
      `never past 5 s, jittered: ${report}`,
    );
  });
});

/** Sends one message and waits for its answer: its send_ack or its send_error. */
async function sendAnswered(device: TestDevice, conversationId: string, clientMsgId: string) {
  device.sendText(conversationId, clientMsgId, clientMsgId);
  return device.waitFor(
    () =>
      device.ofCase("sendError").find((e) => e.clientMsgId === clientMsgId) ??
      device.ofCase("sendAck").find((a) => a.clientMsgId === clientMsgId),
    `${clientMsgId} answered`,
  );
}

/**
 * Sends again, in order and a few at a time after a pause (as a client honouring the hints
 * does), every one of `ids` not acknowledged yet, until all are.
 */
async function retryInOrder(device: TestDevice, conversationId: string, ids: string[]): Promise<void> {
  const missing = () => {
    const acked = new Set(device.ofCase("sendAck").map((a) => a.clientMsgId));
    return ids.filter((m) => !acked.has(m));
  };
  const answers = () => device.ofCase("sendAck").length + device.ofCase("sendError").length;
  for (let round = 0; round < 200 && missing().length > 0; round++) {
    await new Promise((r) => setTimeout(r, 100));
    const batch = missing().slice(0, 3);
    const before = answers();
    for (const m of batch) device.sendText(conversationId, m, `message ${m}`);
    await device.waitFor(() => answers() >= before + batch.length || undefined, "retries answered");
  }
}
