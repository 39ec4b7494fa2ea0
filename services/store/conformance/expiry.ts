import { strict as assert } from "node:assert";
import { randomUUID } from "node:crypto";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { type Entry, EntrySchema, MessageBodySchema } from "../../../gen/switchboard/v1/entry_pb.js";
import type { ConversationRecord, ConversationStore, MemberRecord, StoreEngine } from "../types.js";

/**
 * The conformance suite of the store's part in disappearing messages: entries that expire and
 * conversations' timers, for every engine (see runConversationStoreConformance for `open`).
 */
export function runExpiryConformance(open: () => Promise<StoreEngine>): void {
  const test = (name: string, fn: (store: ConversationStore) => Promise<void>): void => {
    it(name, async () => {
      const engine = await open();
      try {
        await fn(engine.conversations);
      } finally {
        await engine.close();
      }
    });
  };

  describe("ConversationStore conformance: expiring entries", () => {
    test("deleteExpiredEntries removes entries expired by now, keeps the rest and the head", async (store) => {
      const id = `g_exp${randomUUID().replaceAll("-", "")}`;
      const now = Date.now();
      const far = now + 3_600_000;
      // Written already expired (a write delayed past its expiry), never expiring, and later.
      const entries = [
        message(id, 1, 0),
        message(id, 2, now - 1_000),
        message(id, 3, far),
        message(id, 4, now - 500),
        message(id, 5, 0),
      ];
      await store.commit([{ conversationId: id, append: entries }]);
      for (let n = await store.deleteExpiredEntries(now, 1); n === 1; ) {
        // Bounded batches: one entry at a time, until none is left.
        n = await store.deleteExpiredEntries(now, 1);
      }
      assert.deepEqual(seqs(await store.readEntries(id, 0, 10)), [1, 3, 5]);
      // The seqs keep their place: the head is where it was, and the next append continues it.
      assert.equal(await store.getLastSeq(id), 5);
      await store.commit([{ conversationId: id, append: [message(id, 6, far)] }]);
      assert.deepEqual(seqs(await store.readEntries(id, 0, 10)), [1, 3, 5, 6]);
      // Paging steps over the deleted seqs without stopping short.
      assert.deepEqual(seqs(await store.readEntries(id, 1, 1)), [3]);
      assert.deepEqual(seqs(await store.readEntries(id, 3, 2)), [5, 6]);
      const left = (await store.readEntries(id, 2, 1))[0];
      assert.equal(left?.expiresAtMs, BigInt(far), "the expiry is stored with the entry");
    });

    test("a rewritten entry (a tombstone) expires by the expiry it is rewritten with", async (store) => {
      const id = `g_exp${randomUUID().replaceAll("-", "")}`;
      const soon = Date.now() - 1;
      await store.commit([
        { conversationId: id, append: [message(id, 1, Date.now() + 3_600_000), message(id, 2, 0)] },
      ]);
      const tomb = create(EntrySchema, { ...message(id, 1, soon), redacted: true, redactedBySeq: 2n });
      tomb.body = { case: undefined };
      await store.commit([{ conversationId: id, replace: [tomb] }]);
      await store.deleteExpiredEntries(Date.now(), 100);
      assert.deepEqual(seqs(await store.readEntries(id, 0, 10)), [2]);
    });

    test("deleteEntriesOlderThan deletes the entries committed before a time, in bounded calls", async (store) => {
      const ids = [0, 1].map(() => `g_ret${randomUUID().replaceAll("-", "")}`);
      const now = Date.now();
      const day = 86_400_000;
      for (const id of ids) {
        // Commit times ascend with the seqs, as a sequencer writes them.
        const entries = [40, 35, 31, 29, 1].map((daysAgo, i) => ({
          ...message(id, i + 1, 0),
          serverTimeMs: BigInt(now - daysAgo * day),
        }));
        // The third also expires (a disappearing message): its expiry index goes with it.
        entries[2]!.expiresAtMs = BigInt(now + day);
        await store.commit([{ conversationId: id, append: entries.map((e) => create(EntrySchema, e)) }]);
      }
      if (store.retentionByTtl === true) {
        // The database's TTL is the retention: nothing to delete by time here.
        assert.equal(await store.deleteEntriesOlderThan(now - 30 * day, 10), 0);
        return;
      }
      let deleted = 0;
      // Two at a time: calls resume where the last one stopped, even inside a conversation.
      for (let calls = 0; deleted < 6 && calls < 100; calls++) {
        deleted += await store.deleteEntriesOlderThan(now - 30 * day, 2);
      }
      assert.equal(deleted, 6);
      for (const id of ids) {
        assert.deepEqual(seqs(await store.readEntries(id, 0, 10)), [4, 5]);
        assert.equal(await store.getLastSeq(id), 5, "the seqs keep their place");
      }
      // The expiring entry's index went with it: the expiry sweep finds nothing to delete.
      assert.equal(await store.deleteExpiredEntries(now + 2 * day, 100), 0);
    });

    test("deleteDeliveredOlderThan deletes old entries up to the bound it is given, and no others", async (store) => {
      const id = `g_del${randomUUID().replaceAll("-", "")}`;
      const fresh = `g_new${randomUUID().replaceAll("-", "")}`;
      const now = Date.now();
      const hour = 3_600_000;
      const entries = [5, 4, 3, 2, 0.1].map((hoursAgo, i) =>
        create(EntrySchema, { ...message(id, i + 1, 0), serverTimeMs: BigInt(now - hoursAgo * hour) }),
      );
      const member = (userId: string, deliveredUpTo: number): MemberRecord => ({
        userId,
        role: "member",
        joinedSeq: 1,
        addedAtMs: now,
        deliveredUpTo,
        readUpTo: 0,
      });
      await store.commit([
        { conversationId: id, append: entries, putMembers: [member("u_a", 5), member("u_b", 5)] },
        // Nothing old enough here: its bound is never asked for.
        {
          conversationId: fresh,
          append: [create(EntrySchema, { ...message(fresh, 1, 0), serverTimeMs: BigInt(now) })],
          putMembers: [member("u_a", 0)],
        },
      ]);
      // The caller's bound, not the members' cursors, decides (both members acknowledged all 5):
      // here some device of theirs has received up to 3 only.
      let bound = 3;
      const asked = new Map<string, string[]>();
      const receivedUpTo = async (conversationId: string, members: readonly MemberRecord[]) => {
        asked.set(conversationId, members.map((m) => m.userId).sort());
        return conversationId === id ? bound : Number.POSITIVE_INFINITY;
      };
      let deleted = 0;
      for (let calls = 0; calls < 50; calls++) {
        const n = await store.deleteDeliveredOlderThan(now - hour, 100, receivedUpTo);
        deleted += n;
        // The walk may need more than one call to reach this conversation in a shared store.
        if (n === 0 && (await store.readEntries(id, 0, 1))[0]?.seq === 4n) break;
      }
      // 1..3 are old and received; 4 is old but not received everywhere; 5 is recent.
      assert.deepEqual(seqs(await store.readEntries(id, 0, 10)), [4, 5]);
      assert.equal(await store.getLastSeq(id), 5);
      assert.deepEqual(asked.get(id), ["u_a", "u_b"], "asked with the conversation's current members");
      assert.equal(asked.has(fresh), false, "not asked where nothing is old enough");
      assert.deepEqual(seqs(await store.readEntries(fresh, 0, 10)), [1]);
      bound = 5;
      for (let calls = 0; calls < 50; calls++) {
        await store.deleteDeliveredOlderThan(now - hour, 100, receivedUpTo);
        if ((await store.readEntries(id, 0, 1))[0]?.seq === 5n) break;
      }
      assert.deepEqual(
        seqs(await store.readEntries(id, 0, 10)),
        [5],
        "once received, 4 goes too; 5 is recent",
      );
      assert.ok(deleted >= 3);
      // A bound of 0 (someone has received nothing) deletes nothing.
      const none = `g_non${randomUUID().replaceAll("-", "")}`;
      await store.commit([
        {
          conversationId: none,
          append: [create(EntrySchema, { ...message(none, 1, 0), serverTimeMs: BigInt(now - 5 * hour) })],
          putMembers: [member("u_a", 1)],
        },
      ]);
      let reached = false;
      const nothing = async (conversationId: string) => {
        if (conversationId === none) reached = true;
        return 0;
      };
      for (let calls = 0; calls < 50 && !reached; calls++) {
        await store.deleteDeliveredOlderThan(now - hour, 100, nothing);
      }
      assert.ok(reached, "the walk reached the conversation");
      assert.deepEqual(seqs(await store.readEntries(none, 0, 10)), [1]);
    });

    test("a conversation's disappearing timer is stored with its metadata", async (store) => {
      const id = `g_exp${randomUUID().replaceAll("-", "")}`;
      const plain: ConversationRecord = { id, kind: "group", title: "t", createdAtMs: 1, membersVersion: 1 };
      await store.commit([{ conversationId: id, conversation: plain }]);
      assert.deepEqual(await store.getConversation(id), plain);
      const timed = { ...plain, disappearingSeconds: 86_400, disappearingAdminsOnly: true };
      await store.commit([{ conversationId: id, conversation: timed }]);
      assert.deepEqual(await store.getConversation(id), timed);
      const off = { ...plain, membersVersion: 2, disappearingSeconds: 0, disappearingAdminsOnly: false };
      await store.commit([{ conversationId: id, conversation: off }]);
      assert.deepEqual(await store.getConversation(id), off);
    });
  });
}

function message(conversationId: string, seq: number, expiresAtMs: number): Entry {
  return create(EntrySchema, {
    conversationId,
    seq: BigInt(seq),
    senderUserId: "u_sender",
    senderDeviceId: "dv_sender",
    clientMsgId: `c${seq}`,
    serverTimeMs: BigInt(Date.now()),
    expiresAtMs: BigInt(expiresAtMs),
    body: { case: "message", value: create(MessageBodySchema, { payload: new Uint8Array([seq, 1, 2]) }) },
  });
}

function seqs(entries: Entry[]): number[] {
  return entries.map((e) => Number(e.seq));
}
