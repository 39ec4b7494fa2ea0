import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Code } from "@connectrpc/connect";
import { messageEntry } from "../helpers/entries.js";
import { rejectsWith } from "../helpers/expect.js";
import { serverFixture } from "../helpers/fixture.js";

/**
 * Replies and mentions: what a message may tell the server about other entries and users besides
 * its content (reply_to_seq, mentioned_user_ids), checked against the conversation before a seq
 * is given, and kept in the log for every member's devices.
 */
describe("replies and mentions", () => {
  const fx = serverFixture();
  const text = (s: string) => new TextEncoder().encode(s);

  it("keeps a reply's target and the mentions in the log, for every member", async () => {
    const [a, b, c] = [await fx.user("ra"), await fx.user("rb"), await fx.user("rc")];
    const { conversation } = await a.conversations.createGroup({
      title: "thread",
      memberUserIds: [b.userId, c.userId],
    });
    const id = conversation!.conversationId;
    const first = await a.gateway.send({ entry: messageEntry(id, "r1", { payload: text("lunch?") }) });
    const reply = await b.gateway.send({
      entry: messageEntry(id, "r2", {
        payload: text("yes, @ra and @rc"),
        replyToSeq: first.seq,
        mentionedUserIds: [a.userId, c.userId],
      }),
    });
    const { entries } = await c.conversations.getHistory({ conversationId: id });
    const stored = entries.find((e) => e.seq === reply.seq);
    assert.equal(stored?.body.case, "message");
    if (stored?.body.case !== "message") return;
    assert.equal(stored.body.value.replyToSeq, first.seq);
    assert.deepEqual(stored.body.value.mentionedUserIds, [a.userId, c.userId]);
    // A retry of the reply is the same entry, not a second one.
    const again = await b.gateway.send({
      entry: messageEntry(id, "r2", { payload: text("yes, @ra and @rc"), replyToSeq: first.seq }),
    });
    assert.equal(again.seq, reply.seq);
  });

  it("refuses a reply to an entry the sender cannot read, and mentions of non-members", async () => {
    const [a, b, c, outsider] = [
      await fx.user("sa"),
      await fx.user("sb"),
      await fx.user("sc"),
      await fx.user("so"),
    ];
    const { conversation } = await a.conversations.createGroup({ title: "late", memberUserIds: [b.userId] });
    const id = conversation!.conversationId;
    const before = await a.gateway.send({ entry: messageEntry(id, "s1", { payload: text("before c") }) });
    await a.conversations.addMembers({ conversationId: id, userIds: [c.userId] });
    const send = (clientMsgId: string, extra: { replyToSeq?: bigint; mentionedUserIds?: string[] }) =>
      c.gateway.send({ entry: messageEntry(id, clientMsgId, { payload: text("hi"), ...extra }) });

    // Before the sender's join, and past what is committed: the same answer as no entry at all.
    await rejectsWith(send("s2", { replyToSeq: before.seq }), Code.NotFound, /reply_to_seq/);
    await rejectsWith(send("s3", { replyToSeq: 1_000n }), Code.NotFound, /reply_to_seq/);
    await rejectsWith(send("s4", { mentionedUserIds: [outsider.userId] }), Code.InvalidArgument, /members/);
    await rejectsWith(send("s5", { mentionedUserIds: [a.userId, a.userId] }), Code.InvalidArgument, /twice/);
    await rejectsWith(send("s6", { mentionedUserIds: [c.userId] }), Code.InvalidArgument, /itself/);
    const many = Array.from({ length: 65 }, (_, i) => `u_${String(i).padStart(26, "0")}`);
    await rejectsWith(send("s7", { mentionedUserIds: many }), Code.InvalidArgument, /at most 64/);
    // Refusals store nothing: the same ids then go through.
    const { entries: log } = await a.conversations.getHistory({ conversationId: id });
    const ok = await send("s2", { mentionedUserIds: [a.userId] });
    assert.equal(ok.seq, log[log.length - 1]!.seq + 1n, "no seq was taken by the refusals");
  });
});
