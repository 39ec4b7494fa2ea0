import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { MemberRole, type PinnedMessage } from "../../gen/switchboard/v1/conversations_pb.js";
import { type OutgoingEntry, OutgoingEntrySchema } from "../../gen/switchboard/v1/entry_pb.js";
import { outgoingText, TestDevice } from "../helpers/device.js";
import { engineServerSuite } from "../helpers/engine-server.js";
import { rejectsWith } from "../helpers/expect.js";
import { SCYLLA_SKIP } from "../helpers/scylla.js";

function pinEntry(
  conversationId: string,
  clientMsgId: string,
  targetSeq: bigint,
  unpin = false,
): OutgoingEntry {
  return create(OutgoingEntrySchema, {
    clientMsgId,
    conversationId,
    body: { case: "pin", value: { targetSeq, unpin } },
  });
}

function deleteEntry(conversationId: string, clientMsgId: string, targetSeq: bigint): OutgoingEntry {
  return create(OutgoingEntrySchema, {
    clientMsgId,
    conversationId,
    body: { case: "delete", value: { targetSeq } },
  });
}

/** The pinned seqs a device is told of, in the server's order. */
async function pinnedSeqs(device: TestDevice, conversationId: string): Promise<bigint[]> {
  const { conversation } = await device.conversations.getConversation({ conversationId });
  return (conversation?.pins ?? []).map((p: PinnedMessage) => p.seq);
}

/**
 * Pins against a server process, on each store engine: a pin or unpin is an entry of the log that
 * every member receives; Conversation.pins lists what is pinned now (in GetConversation and in
 * listings), correct after unpins, deletes-for-everyone, a late join and a restart (read back from
 * the store, not from the sequencer's memory).
 */
for (const engine of ["lmdb", "scylla"] as const) {
  describe(`pins (${engine})`, { skip: engine === "scylla" && SCYLLA_SKIP }, () => {
    const suite = engineServerSuite(engine, "pins");

    it("group admins pin and unpin; every member gets the entries and lists the same pins", async () => {
      const [admin, member] = [await suite.user("pa"), await suite.user("pm")];
      const { conversation } = await admin.conversations.createGroup({
        title: "pins",
        memberUserIds: [member.userId],
      });
      const id = conversation!.conversationId;
      const sent: bigint[] = [];
      for (let i = 1; i <= 5; i++)
        sent.push((await member.gateway.send({ entry: outgoingText(id, `m${i}`, `m${i}`) })).seq);

      // A member who is not an admin may not pin; nothing is written.
      await rejectsWith(
        member.gateway.send({ entry: pinEntry(id, "np", sent[0]!) }),
        Code.PermissionDenied,
        /admins/,
      );

      const pinned = await admin.gateway.send({ entry: pinEntry(id, "p1", sent[1]!) });
      // A retry is the same entry, not a second pin nor a refusal.
      assert.equal((await admin.gateway.send({ entry: pinEntry(id, "p1", sent[1]!) })).seq, pinned.seq);
      await rejectsWith(
        admin.gateway.send({ entry: pinEntry(id, "p1b", sent[1]!) }),
        Code.AlreadyExists,
        /already pinned/,
      );
      await admin.gateway.send({ entry: pinEntry(id, "p2", sent[0]!) });
      await admin.gateway.send({ entry: pinEntry(id, "p3", sent[4]!) });
      await rejectsWith(
        admin.gateway.send({ entry: pinEntry(id, "p4", sent[2]!) }),
        Code.FailedPrecondition,
        /at most 3 pinned/,
      );

      // The member's device has the pin entry in the log and the same list, in pin order.
      const { entries } = await member.conversations.getHistory({ conversationId: id });
      const entry = entries.find((e) => e.seq === pinned.seq);
      assert.equal(entry?.body.case, "pin");
      if (entry?.body.case !== "pin") return;
      assert.equal(entry.body.value.targetSeq, sent[1]);
      assert.equal(entry.body.value.unpin, false);
      assert.equal(entry.senderUserId, admin.userId);
      const { conversation: seen } = await member.conversations.getConversation({ conversationId: id });
      assert.deepEqual(
        seen?.pins.map((p) => [p.seq, p.pinnedByUserId]),
        [
          [sent[1], admin.userId],
          [sent[0], admin.userId],
          [sent[4], admin.userId],
        ],
      );
      assert.equal(seen?.pins[0]?.pinSeq, pinned.seq);
      assert.equal(seen?.pins[0]?.pinnedAtMs, entry.serverTimeMs);
      // Listings carry them too.
      const { conversations } = await member.conversations.listConversations({});
      assert.deepEqual(
        conversations.find((c) => c.conversationId === id)?.pins.map((p) => p.seq),
        [sent[1], sent[0], sent[4]],
      );

      // Unpin frees a place; unpinning what is not pinned is refused.
      await admin.gateway.send({ entry: pinEntry(id, "u1", sent[0]!, true) });
      await rejectsWith(
        admin.gateway.send({ entry: pinEntry(id, "u1b", sent[0]!, true) }),
        Code.FailedPrecondition,
        /not pinned/,
      );
      await admin.gateway.send({ entry: pinEntry(id, "p5", sent[2]!) });
      assert.deepEqual(await pinnedSeqs(member, id), [sent[1], sent[4], sent[2]]);
    });

    it("refuses targets the pinner cannot read or that are not messages; refusals take no seq", async () => {
      const [admin, late] = [await suite.user("ra"), await suite.user("rl")];
      const { conversation } = await admin.conversations.createGroup({ title: "targets", memberUserIds: [] });
      const id = conversation!.conversationId;
      const early = await admin.gateway.send({ entry: outgoingText(id, "e1", "before the late member") });
      const { entry: added } = await admin.conversations.addMembers({
        conversationId: id,
        userIds: [late.userId],
      });
      await admin.conversations.setRole({
        conversationId: id,
        userIds: [late.userId],
        role: MemberRole.ADMIN,
      });
      const after = await admin.gateway.send({ entry: outgoingText(id, "e2", "after") });

      // The late admin cannot read what came before its join: the same answer as no entry at all.
      await rejectsWith(
        late.gateway.send({ entry: pinEntry(id, "x1", early.seq) }),
        Code.NotFound,
        /target_seq/,
      );
      await rejectsWith(
        late.gateway.send({ entry: pinEntry(id, "x2", 1_000n) }),
        Code.NotFound,
        /target_seq/,
      );
      await rejectsWith(
        late.gateway.send({ entry: pinEntry(id, "x3", 0n) }),
        Code.InvalidArgument,
        /target_seq/,
      );
      await rejectsWith(
        late.gateway.send({ entry: pinEntry(id, "x4", added!.seq) }),
        Code.FailedPrecondition,
        /only messages/,
      );
      const { entries: log } = await admin.conversations.getHistory({ conversationId: id });
      const ok = await late.gateway.send({ entry: pinEntry(id, "x5", after.seq) });
      assert.equal(ok.seq, log[log.length - 1]!.seq + 1n, "no seq was taken by the refusals");

      // The admin pins the early message; the late member is not told of it (it cannot read it).
      await admin.gateway.send({ entry: pinEntry(id, "x6", early.seq) });
      assert.deepEqual(await pinnedSeqs(admin, id), [after.seq, early.seq]);
      assert.deepEqual(await pinnedSeqs(late, id), [after.seq]);
    });

    it("a delete-for-everyone unpins; a deleted message cannot be pinned; direct members both pin", async () => {
      const [a, b] = [await suite.user("da"), await suite.user("db")];
      const { conversation } = await a.conversations.openDirect({ peerUserId: b.userId });
      const id = conversation!.conversationId;
      const m1 = await a.gateway.send({ entry: outgoingText(id, "d1", "one") });
      const m2 = await b.gateway.send({ entry: outgoingText(id, "d2", "two") });
      // Either member of a direct conversation may pin, the other's messages too.
      await b.gateway.send({ entry: pinEntry(id, "dp1", m1.seq) });
      await a.gateway.send({ entry: pinEntry(id, "dp2", m2.seq) });
      assert.deepEqual(await pinnedSeqs(a, id), [m1.seq, m2.seq]);

      await a.gateway.send({ entry: deleteEntry(id, "dd1", m1.seq) });
      assert.deepEqual(await pinnedSeqs(a, id), [m2.seq]);
      assert.deepEqual(await pinnedSeqs(b, id), [m2.seq]);
      await rejectsWith(
        b.gateway.send({ entry: pinEntry(id, "dp3", m1.seq) }),
        Code.FailedPrecondition,
        /deleted/,
      );
      await rejectsWith(
        b.gateway.send({ entry: pinEntry(id, "dp4", m1.seq, true) }),
        Code.FailedPrecondition,
        /not pinned/,
      );
    });

    it("pins are read back from the store after a restart", async () => {
      const [a, b] = [await suite.user("sa"), await suite.user("sb")];
      const { conversation } = await a.conversations.createGroup({
        title: "kept",
        memberUserIds: [b.userId],
      });
      const id = conversation!.conversationId;
      const m1 = await a.gateway.send({ entry: outgoingText(id, "k1", "one") });
      const m2 = await a.gateway.send({ entry: outgoingText(id, "k2", "two") });
      await a.gateway.send({ entry: pinEntry(id, "kp1", m1.seq) });
      await a.gateway.send({ entry: pinEntry(id, "kp2", m2.seq) });
      await a.gateway.send({ entry: pinEntry(id, "ku1", m1.seq, true) });

      assert.equal(await suite.server.stop(), 0);
      const server = await suite.restart();
      const again = suite.track(new TestDevice(server.url, b.userId, b.deviceId, b.secret, b.username));
      await again.login();
      assert.deepEqual(await pinnedSeqs(again, id), [m2.seq]);
      // And the state loaded from the store still enforces them: m2 is pinned, m1 is not.
      const admin = suite.track(new TestDevice(server.url, a.userId, a.deviceId, a.secret, a.username));
      await admin.login();
      await rejectsWith(admin.gateway.send({ entry: pinEntry(id, "kp3", m2.seq) }), Code.AlreadyExists);
      await admin.gateway.send({ entry: pinEntry(id, "kp4", m1.seq) });
      assert.deepEqual(await pinnedSeqs(again, id), [m2.seq, m1.seq]);
    });
  });
}
