import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { MemberRole } from "../../gen/switchboard/v1/conversations_pb.js";
import {
  DeleteBodySchema,
  EditBodySchema,
  MembershipAction,
  OutgoingEntrySchema,
  ReactionBodySchema,
} from "../../gen/switchboard/v1/entry_pb.js";
import { ReceiptKind } from "../../gen/switchboard/v1/gateway_pb.js";
import { outgoingText } from "../helpers/device.js";
import { rejectsWith } from "../helpers/expect.js";
import { serverFixture } from "../helpers/fixture.js";

describe("groups and entry kinds end to end", () => {
  const fx = serverFixture({ SWITCHBOARD_MAX_GROUP_SIZE: "4" });
  const user = (prefix: string) => fx.user(prefix);

  it("delivers group messages to every member with per-member receipts", async () => {
    const [a, b, c] = [await user("ga"), await user("gb"), await user("gc")];
    const { conversation } = await a.conversations.createGroup({
      title: "trio",
      memberUserIds: [b.userId, c.userId],
    });
    const id = conversation!.conversationId;
    assert.equal(conversation!.memberCount, 3);
    for (const d of [a, b, c]) d.connect();
    for (const d of [b, c]) await d.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught up");
    a.sendText(id, "g1", "hi all");
    for (const d of [b, c]) {
      await d.waitFor(() => d.texts(id).includes("hi all") || undefined, "group message");
      d.write({ case: "ack", value: { cursors: [{ conversationId: id, seq: 2n }] } as never });
    }
    await a.waitFor(() => {
      const from = new Set(
        a
          .ofCase("receipt")
          .filter((r) => r.kind === ReceiptKind.DELIVERED && r.upToSeq >= 2n)
          .map((r) => r.userId),
      );
      return from.has(b.userId) && from.has(c.userId) ? true : undefined;
    }, "delivered receipts from both members");
    const created = b.entries(id)[0];
    assert.equal(created?.body.case, "membership");
    assert.equal(created?.body.case === "membership" && created.body.value.action, MembershipAction.CREATED);
  });

  it("enforces admin rules, join visibility, removal and the group size limit", async () => {
    const [a, b, c, d, e] = [
      await user("ra"),
      await user("rb"),
      await user("rc"),
      await user("rd"),
      await user("re"),
    ];
    const { conversation } = await a.conversations.createGroup({ title: "rules", memberUserIds: [b.userId] });
    const id = conversation!.conversationId;
    await a.gateway.send({ entry: outgoingText(id, "before", "before c joined") });
    await rejectsWith(
      b.conversations.addMembers({ conversationId: id, userIds: [c.userId] }),
      Code.PermissionDenied,
      /admin/,
    );
    await a.conversations.setRole({ conversationId: id, userIds: [b.userId], role: MemberRole.ADMIN });
    const added = await b.conversations.addMembers({ conversationId: id, userIds: [c.userId] });
    const joinSeq = added.entry!.seq;
    // c sees the log from the entry that added it, not before.
    const history = await c.conversations.getHistory({ conversationId: id });
    assert.equal(history.entries[0]?.seq, joinSeq);
    assert.ok(!history.entries.some((x) => x.clientMsgId === "before"));
    await a.conversations.addMembers({ conversationId: id, userIds: [d.userId] });
    await rejectsWith(
      a.conversations.addMembers({ conversationId: id, userIds: [e.userId] }),
      Code.FailedPrecondition,
      /limit is 4/,
    );
    // Removal: the removed member is told, then sees nothing more and can do nothing more.
    c.connect();
    await c.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught up");
    await a.conversations.removeMembers({ conversationId: id, userIds: [c.userId] });
    await c.waitFor(
      () =>
        c
          .entries(id)
          .find((x) => x.body.case === "membership" && x.body.value.action === MembershipAction.REMOVED),
      "removal entry",
    );
    await a.gateway.send({ entry: outgoingText(id, "after", "after c left") });
    await rejectsWith(
      c.gateway.send({ entry: outgoingText(id, "c-after", "let me in") }),
      Code.PermissionDenied,
    );
    await rejectsWith(c.conversations.getHistory({ conversationId: id }), Code.PermissionDenied);
    await new Promise((r) => setTimeout(r, 200));
    assert.ok(!c.texts(id).includes("after c left"), "no entries after removal");
    // Renames and leaving: the last admin leaving promotes the longest-standing member.
    await b.conversations.setRole({ conversationId: id, userIds: [b.userId], role: MemberRole.MEMBER });
    await a.conversations.renameGroup({ conversationId: id, title: "renamed" });
    await a.conversations.leaveGroup({ conversationId: id });
    const { conversation: after, members } = await b.conversations.getConversation({ conversationId: id });
    assert.equal(after?.title, "renamed");
    assert.equal(members.find((m) => m.userId === b.userId)?.role, MemberRole.ADMIN);
    assert.ok(!members.some((m) => m.userId === a.userId));
    await rejectsWith(a.conversations.getConversation({ conversationId: id }), Code.PermissionDenied);
    await rejectsWith(
      b.conversations.addMembers({
        conversationId: conversation!.conversationId.replace("g_", "d_"),
        userIds: [],
      }),
      Code.InvalidArgument,
    );
  });

  it("edits, deletes for everyone (a tombstone without content) and reacts", async () => {
    const [a, b] = [await user("ea"), await user("eb")];
    const { conversation } = await a.conversations.openDirect({ peerUserId: b.userId });
    const id = conversation!.conversationId;
    const sent = await a.gateway.send({ entry: outgoingText(id, "orig", "secret text") });
    const body = <C extends "edit" | "delete" | "reaction">(clientMsgId: string, c: C, value: unknown) =>
      create(OutgoingEntrySchema, { clientMsgId, conversationId: id, body: { case: c, value } as never });
    await rejectsWith(
      b.gateway.send({
        entry: body(
          "b-edit",
          "edit",
          create(EditBodySchema, { targetSeq: sent.seq, payload: new Uint8Array([1]) }),
        ),
      }),
      Code.PermissionDenied,
      /only the sender/,
    );
    await a.gateway.send({
      entry: body(
        "a-edit",
        "edit",
        create(EditBodySchema, { targetSeq: sent.seq, payload: new TextEncoder().encode("edited") }),
      ),
    });
    await b.gateway.send({
      entry: body(
        "b-react",
        "reaction",
        create(ReactionBodySchema, { targetSeq: sent.seq, payload: new TextEncoder().encode("👍") }),
      ),
    });
    await rejectsWith(
      b.gateway.send({ entry: body("b-del", "delete", create(DeleteBodySchema, { targetSeq: sent.seq })) }),
      Code.PermissionDenied,
    );
    const del = await a.gateway.send({
      entry: body("a-del", "delete", create(DeleteBodySchema, { targetSeq: sent.seq })),
    });
    const { entries } = await b.conversations.getHistory({ conversationId: id });
    const bySeq = new Map(entries.map((x) => [x.seq, x]));
    const original = bySeq.get(sent.seq)!;
    assert.equal(original.redacted, true);
    assert.equal(original.redactedBySeq, del.seq);
    assert.equal(original.body.case === "message" && original.body.value.payload.length, 0);
    for (const x of entries.filter((x) => x.body.case === "edit" || x.body.case === "reaction")) {
      assert.equal(x.redacted, true, `${x.body.case} of a deleted message is redacted too`);
    }
    assert.equal(entries.length, 5, "entries stay: the log has no gaps");
    await rejectsWith(
      a.gateway.send({ entry: body("a-del2", "delete", create(DeleteBodySchema, { targetSeq: sent.seq })) }),
      Code.FailedPrecondition,
      /deleted/,
    );
    await rejectsWith(
      a.gateway.send({
        entry: body(
          "a-edit2",
          "edit",
          create(EditBodySchema, { targetSeq: 999n, payload: new Uint8Array() }),
        ),
      }),
      Code.NotFound,
    );
  });
});
