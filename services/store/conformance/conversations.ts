import { strict as assert } from "node:assert";
import { randomUUID } from "node:crypto";
import { describe, it } from "node:test";
import { create, equals } from "@bufbuild/protobuf";
import {
  DeleteBodySchema,
  type Entry,
  EntrySchema,
  MessageBodySchema,
} from "../../../gen/switchboard/v1/entry_pb.js";
import { isStoreError, type StoreErrorKind } from "../errors.js";
import type { ConversationRecord, ConversationStore, MemberRecord, StoreEngine } from "../types.js";

/**
 * The conformance suite of ConversationStore, for every engine. `open` returns an engine whose
 * close() is called at the end of each test; it may be a fresh store or a shared one, as every test
 * works on ids of its own.
 */
export function runConversationStoreConformance(open: () => Promise<StoreEngine>): void {
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

  describe("ConversationStore conformance", () => {
    test("an unknown conversation reads as empty", async (store) => {
      const id = groupId();
      assert.equal(await store.getConversation(id), undefined);
      assert.deepEqual(await store.getMembers(id), []);
      assert.equal(await store.getLastSeq(id), 0);
      assert.deepEqual(await store.readEntries(id, 0, 10), []);
      assert.equal(await store.getIdempotency(id, "dv_x", "c1"), undefined);
      assert.deepEqual(await store.getDeviceCursors(id, ["dv_x"]), []);
      assert.deepEqual(await store.listUserConversations(userId()), []);
    });

    test("a commit stores metadata, entries and members, read back unchanged", async (store) => {
      const id = groupId();
      const alice = member(userId(), { role: "admin" });
      const entries = [message(id, 1), message(id, 2), message(id, 3, [9, 8, 7])];
      await store.commit([
        { conversationId: id, conversation: conversation(id), append: entries, putMembers: [alice] },
      ]);
      assert.deepEqual(await store.getConversation(id), conversation(id));
      assert.equal(await store.getLastSeq(id), 3);
      assertEntries(await store.readEntries(id, 0, 10), entries);
      assert.deepEqual(await store.getMembers(id), [alice]);
    });

    test("appends continue the log across commits", async (store) => {
      const id = groupId();
      await store.commit([{ conversationId: id, append: [message(id, 1), message(id, 2)] }]);
      await store.commit([{ conversationId: id, append: [message(id, 3)] }]);
      await store.commit([{ conversationId: id, append: [message(id, 4), message(id, 5), message(id, 6)] }]);
      assert.equal(await store.getLastSeq(id), 6);
      assert.equal(await store.peekLastSeq(id), 6, "an ordinary read sees every finished commit");
      assert.equal(await store.peekLastSeq(groupId()), 0);
      assert.deepEqual(seqs(await store.readEntries(id, 0, 100)), [1, 2, 3, 4, 5, 6]);
    });

    test("the first append of a conversation must be seq 1", async (store) => {
      const id = groupId();
      await rejectsWith(store.commit([{ conversationId: id, append: [message(id, 2)] }]), "conflict");
      assert.equal(await store.getLastSeq(id), 0);
      assert.deepEqual(await store.readEntries(id, 0, 10), []);
    });

    test("an append of an already written seq is refused (the writer fence)", async (store) => {
      const id = groupId();
      const original = [message(id, 1, [1]), message(id, 2, [2])];
      await store.commit([{ conversationId: id, append: original }]);
      await rejectsWith(
        store.commit([{ conversationId: id, append: [message(id, 2, [22]), message(id, 3, [33])] }]),
        "conflict",
      );
      await rejectsWith(store.commit([{ conversationId: id, append: [message(id, 1, [11])] }]), "conflict");
      assert.equal(await store.getLastSeq(id), 2);
      assertEntries(await store.readEntries(id, 0, 10), original);
    });

    test("an append that leaves a gap is refused", async (store) => {
      const id = groupId();
      await store.commit([{ conversationId: id, append: [message(id, 1)] }]);
      await rejectsWith(store.commit([{ conversationId: id, append: [message(id, 3)] }]), "conflict");
      assert.equal(await store.getLastSeq(id), 1);
      assert.deepEqual(seqs(await store.readEntries(id, 0, 10)), [1]);
    });

    test("an append whose own seqs are not contiguous is refused", async (store) => {
      const id = groupId();
      await rejectsWith(
        store.commit([{ conversationId: id, append: [message(id, 1), message(id, 3)] }]),
        "conflict",
      );
      await rejectsWith(
        store.commit([{ conversationId: id, append: [message(id, 2), message(id, 1)] }]),
        "conflict",
      );
      assert.equal(await store.getLastSeq(id), 0);
      assert.deepEqual(await store.readEntries(id, 0, 10), []);
    });

    test("a refused commit applies nothing of any of its writes", async (store) => {
      const fresh = groupId();
      const busy = groupId();
      const user = userId();
      await store.commit([{ conversationId: busy, append: [message(busy, 1, [1])] }]);
      await rejectsWith(
        store.commit([
          {
            conversationId: fresh,
            conversation: conversation(fresh),
            append: [message(fresh, 1)],
            idempotency: [{ deviceId: "dv_a", clientMsgId: "c1", seq: 1 }],
            putMembers: [member(user)],
          },
          { conversationId: busy, append: [message(busy, 1, [2])] },
        ]),
        "conflict",
      );
      assert.equal(await store.getConversation(fresh), undefined);
      assert.equal(await store.getLastSeq(fresh), 0);
      assert.deepEqual(await store.readEntries(fresh, 0, 10), []);
      assert.equal(await store.getIdempotency(fresh, "dv_a", "c1"), undefined);
      assert.deepEqual(await store.getMembers(fresh), []);
      assert.deepEqual(await store.listUserConversations(user), []);
      assertEntries(await store.readEntries(busy, 0, 10), [message(busy, 1, [1])]);
    });

    test("one commit applies writes to several conversations, and several writes to one", async (store) => {
      const a = groupId();
      const b = directId();
      await store.commit([
        { conversationId: a, conversation: conversation(a), append: [message(a, 1), message(a, 2)] },
        { conversationId: b, conversation: conversation(b, "direct"), append: [message(b, 1)] },
        { conversationId: a, append: [message(a, 3)] },
      ]);
      assert.equal(await store.getLastSeq(a), 3);
      assert.equal(await store.getLastSeq(b), 1);
      assert.deepEqual(seqs(await store.readEntries(a, 0, 10)), [1, 2, 3]);
      assert.deepEqual(await store.getConversation(b), conversation(b, "direct"));
    });

    test("of concurrent commits of the same seq, exactly one wins", async (store) => {
      const id = groupId();
      const attempts = [1, 2, 3, 4, 5].map((n) => message(id, 1, [n]));
      const results = await Promise.allSettled(
        attempts.map((e) => store.commit([{ conversationId: id, append: [e] }])),
      );
      const won = results.flatMap((r, i) => (r.status === "fulfilled" ? [i] : []));
      assert.equal(won.length, 1);
      for (const r of results) {
        if (r.status === "rejected") assert.ok(isStoreError(r.reason, "conflict"), String(r.reason));
      }
      assertEntries(await store.readEntries(id, 0, 10), [attempts[won[0]!]!]);
    });

    test("a refused commit does not disturb concurrent ones", async (store) => {
      const busy = groupId();
      await store.commit([{ conversationId: busy, append: [message(busy, 1)] }]);
      const good = Array.from({ length: 10 }, () => groupId());
      const calls = [
        ...good.slice(0, 5).map((id) => store.commit([{ conversationId: id, append: [message(id, 1)] }])),
        store.commit([{ conversationId: busy, append: [message(busy, 1, [7])] }]),
        ...good.slice(5).map((id) => store.commit([{ conversationId: id, append: [message(id, 1)] }])),
      ];
      const results = await Promise.allSettled(calls);
      assert.deepEqual(
        results.map((r) => r.status),
        [...Array(5).fill("fulfilled"), "rejected", ...Array(5).fill("fulfilled")],
      );
      for (const id of good) assert.equal(await store.getLastSeq(id), 1);
      assert.equal(await store.getLastSeq(busy), 1);
    });

    test("200 concurrent commits to 20 conversations all land", async (store) => {
      const ids = Array.from({ length: 20 }, () => groupId());
      // Each conversation's commits follow one another, as its one sequencer shard issues them;
      // the 20 conversations commit concurrently.
      await Promise.all(
        ids.map(async (id) => {
          for (let seq = 1; seq <= 10; seq++) {
            await store.commit([
              {
                conversationId: id,
                append: [message(id, seq)],
                idempotency: [{ deviceId: "dv_a", clientMsgId: `c${seq}`, seq }],
              },
            ]);
          }
        }),
      );
      for (const id of ids) {
        assert.equal(await store.getLastSeq(id), 10);
        assert.deepEqual(seqs(await store.readEntries(id, 0, 100)), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert.equal(await store.getIdempotency(id, "dv_a", "c7"), 7);
      }
    });

    test("200 concurrent commits to 200 new conversations all land", async (store) => {
      const ids = Array.from({ length: 200 }, () => groupId());
      const user = userId();
      await Promise.all(
        ids.map((id) =>
          store.commit([
            {
              conversationId: id,
              conversation: conversation(id),
              append: [message(id, 1)],
              putMembers: [member(user)],
            },
          ]),
        ),
      );
      for (const id of ids) assert.equal(await store.getLastSeq(id), 1);
      assert.deepEqual(
        sorted((await store.listUserConversations(user)).map((c) => c.conversationId)),
        sorted(ids),
      );
    });

    test("readEntries pages in ascending seq order", async (store) => {
      const id = groupId();
      const all = Array.from({ length: 25 }, (_, i) => message(id, i + 1));
      await store.commit([{ conversationId: id, append: all.slice(0, 12) }]);
      await store.commit([{ conversationId: id, append: all.slice(12) }]);
      assertEntries(await store.readEntries(id, 0, 10), all.slice(0, 10));
      assertEntries(await store.readEntries(id, 10, 10), all.slice(10, 20));
      assertEntries(await store.readEntries(id, 20, 10), all.slice(20));
      assert.deepEqual(seqs(await store.readEntries(id, 24, 10)), [25]);
      assert.deepEqual(await store.readEntries(id, 25, 10), []);
      assert.deepEqual(await store.readEntries(id, 1000, 10), []);
      assert.deepEqual(await store.readEntries(id, 0, 0), []);
      assert.deepEqual(seqs(await store.readEntries(id, 5, 1)), [6]);
    });

    test("conversations whose ids share a prefix are kept apart", async (store) => {
      const a = groupId();
      const b = `${a}0`;
      const user = userId();
      await store.commit([
        { conversationId: a, append: [message(a, 1)], putMembers: [member(user)] },
        { conversationId: b, append: [message(b, 1), message(b, 2)] },
      ]);
      assert.deepEqual(seqs(await store.readEntries(a, 0, 10)), [1]);
      assert.equal(await store.getLastSeq(a), 1);
      assert.deepEqual(await store.getMembers(b), []);
      assert.deepEqual(
        (await store.listUserConversations(user)).map((c) => c.conversationId),
        [a],
      );
    });

    test("replace rewrites an entry in place and keeps its seq", async (store) => {
      const id = groupId();
      const original = [message(id, 1), message(id, 2, [42, 42]), message(id, 3)];
      await store.commit([{ conversationId: id, append: original }]);
      const tombstone = message(id, 2, []);
      tombstone.redacted = true;
      tombstone.redactedBySeq = 4n;
      const deletion = create(EntrySchema, {
        conversationId: id,
        seq: 4n,
        senderUserId: "u_sender",
        body: { case: "delete", value: create(DeleteBodySchema, { targetSeq: 2n }) },
      });
      await store.commit([{ conversationId: id, append: [deletion], replace: [tombstone] }]);
      assert.equal(await store.getLastSeq(id), 4);
      assertEntries(await store.readEntries(id, 0, 10), [original[0]!, tombstone, original[2]!, deletion]);
    });

    test("replace of an unwritten seq is refused and applies nothing", async (store) => {
      const id = groupId();
      await store.commit([{ conversationId: id, append: [message(id, 1)] }]);
      await rejectsWith(
        store.commit([{ conversationId: id, append: [message(id, 2)], replace: [message(id, 3, [0])] }]),
        "not_found",
      );
      assert.equal(await store.getLastSeq(id), 1);
      assert.deepEqual(seqs(await store.readEntries(id, 0, 10)), [1]);
    });

    test("idempotency records are found by conversation, device and client message id", async (store) => {
      const a = groupId();
      const b = groupId();
      await store.commit([
        {
          conversationId: a,
          append: [message(a, 1), message(a, 2)],
          idempotency: [
            { deviceId: "dv_a", clientMsgId: "m1", seq: 1 },
            { deviceId: "dv_b", clientMsgId: "m1", seq: 2 },
          ],
        },
      ]);
      assert.equal(await store.getIdempotency(a, "dv_a", "m1"), 1);
      assert.equal(await store.getIdempotency(a, "dv_b", "m1"), 2);
      assert.equal(await store.getIdempotency(a, "dv_a", "m2"), undefined);
      assert.equal(await store.getIdempotency(a, "dv_c", "m1"), undefined);
      assert.equal(await store.getIdempotency(b, "dv_a", "m1"), undefined);
    });

    test("expireIdempotency removes records written before the given time, and only those", async (store) => {
      const id = groupId();
      await store.commit([
        {
          conversationId: id,
          append: [message(id, 1)],
          idempotency: [
            { deviceId: "dv_a", clientMsgId: "old", seq: 1 },
            { deviceId: "dv_a", clientMsgId: "rewritten", seq: 1 },
          ],
        },
      ]);
      const cutoff = await clockPast(Date.now());
      await clockPast(cutoff);
      // A record written again after the cutoff counts from its last write.
      await store.commit([
        {
          conversationId: id,
          append: [message(id, 2)],
          idempotency: [
            { deviceId: "dv_a", clientMsgId: "new", seq: 2 },
            { deviceId: "dv_a", clientMsgId: "rewritten", seq: 2 },
          ],
        },
      ]);
      assert.ok((await store.expireIdempotency(cutoff)) >= 1);
      assert.equal(await store.getIdempotency(id, "dv_a", "old"), undefined);
      assert.equal(await store.getIdempotency(id, "dv_a", "new"), 2);
      assert.equal(await store.getIdempotency(id, "dv_a", "rewritten"), 2);
      assert.equal(await store.expireIdempotency(cutoff), 0);
      assert.deepEqual(seqs(await store.readEntries(id, 0, 10)), [1, 2]);
    });

    test("members are put, changed and removed, and the per-user index follows", async (store) => {
      const a = groupId();
      const b = groupId();
      const alice = userId();
      const bob = userId();
      await store.commit([
        { conversationId: a, putMembers: [member(alice, { joinedSeq: 1 }), member(bob, { joinedSeq: 1 })] },
        { conversationId: b, putMembers: [member(alice, { joinedSeq: 5 })] },
      ]);
      assert.deepEqual(
        byUser(await store.getMembers(a)),
        byUser([member(alice, { joinedSeq: 1 }), member(bob, { joinedSeq: 1 })]),
      );
      assert.deepEqual(
        byConversation(await store.listUserConversations(alice)),
        byConversation([
          { conversationId: a, joinedSeq: 1 },
          { conversationId: b, joinedSeq: 5 },
        ]),
      );

      await store.commit([{ conversationId: a, putMembers: [member(bob, { joinedSeq: 1, role: "admin" })] }]);
      const bobInA = (await store.getMembers(a)).find((m) => m.userId === bob);
      assert.equal(bobInA?.role, "admin");

      await store.commit([{ conversationId: a, removeMembers: [alice, userId()] }]);
      assert.deepEqual(
        (await store.getMembers(a)).map((m) => m.userId),
        [bob],
      );
      assert.deepEqual(await store.listUserConversations(alice), [{ conversationId: b, joinedSeq: 5 }]);
      assert.deepEqual(await store.listUserConversations(bob), [{ conversationId: a, joinedSeq: 1 }]);
    });

    test("a member's mute is stored with the member and cleared by putting it without one", async (store) => {
      const a = groupId();
      const alice = userId();
      await store.commit([{ conversationId: a, conversation: conversation(a), putMembers: [member(alice)] }]);
      await store.commit([
        { conversationId: a, putMembers: [member(alice, { mutedUntilMs: 1_800_000_000_000 })] },
      ]);
      assert.equal((await store.getMembers(a))[0]?.mutedUntilMs, 1_800_000_000_000);
      await store.commit([{ conversationId: a, putMembers: [member(alice)] }]);
      assert.equal((await store.getMembers(a))[0]?.mutedUntilMs, undefined);
    });

    test("conversation metadata is created and replaced", async (store) => {
      const id = groupId();
      await store.commit([{ conversationId: id, conversation: conversation(id) }]);
      const renamed: ConversationRecord = { ...conversation(id), title: "renamed", membersVersion: 7 };
      await store.commit([{ conversationId: id, conversation: renamed }]);
      assert.deepEqual(await store.getConversation(id), renamed);
    });

    test("device cursors are saved and read back; devices without cursors are left out", async (store) => {
      const id = groupId();
      const other = groupId();
      await store.saveCursors(
        [
          { conversationId: id, deviceId: "dv_a", deliveredUpTo: 3, readUpTo: 1 },
          { conversationId: id, deviceId: "dv_b", deliveredUpTo: 2, readUpTo: 2 },
          { conversationId: other, deviceId: "dv_a", deliveredUpTo: 9, readUpTo: 9 },
        ],
        [],
      );
      await store.saveCursors([{ conversationId: id, deviceId: "dv_a", deliveredUpTo: 5, readUpTo: 4 }], []);
      assert.deepEqual(byDevice(await store.getDeviceCursors(id, ["dv_a", "dv_b", "dv_c"])), [
        { conversationId: id, deviceId: "dv_a", deliveredUpTo: 5, readUpTo: 4 },
        { conversationId: id, deviceId: "dv_b", deliveredUpTo: 2, readUpTo: 2 },
      ]);
      assert.deepEqual(await store.getDeviceCursors(id, []), []);
      await store.saveCursors([], []);
    });

    test("device floors are recorded per device and conversation, and read back one or all", async (store) => {
      // Device ids of this test alone: a shared store keeps other tests' floors.
      const linked = `dv_${randomUUID().replaceAll("-", "")}`;
      const other = `dv_${randomUUID().replaceAll("-", "")}`;
      const [a, b, c] = [groupId(), groupId(), groupId()];
      assert.equal(await store.getDeviceFloor(linked, a), undefined);
      assert.deepEqual(await store.listDeviceFloors(linked), new Map());
      await store.putDeviceFloors([
        { deviceId: linked, conversationId: a, floorSeq: 7 },
        { deviceId: linked, conversationId: b, floorSeq: 0 },
        { deviceId: other, conversationId: a, floorSeq: 3 },
      ]);
      await store.putDeviceFloors([]);
      assert.equal(await store.getDeviceFloor(linked, a), 7);
      assert.equal(await store.getDeviceFloor(linked, b), 0, "a floor of 0 is a floor, not none");
      assert.equal(await store.getDeviceFloor(linked, c), undefined);
      assert.equal(await store.getDeviceFloor(other, a), 3);
      assert.deepEqual(
        await store.listDeviceFloors(linked),
        new Map([
          [a, 7],
          [b, 0],
        ]),
      );
      assert.deepEqual(await store.listDeviceFloors(other), new Map([[a, 3]]));
    });

    test("member cursors update the member record in place and skip non-members", async (store) => {
      const id = groupId();
      const alice = userId();
      const gone = userId();
      const record = member(alice, { role: "admin", joinedSeq: 2 });
      await store.commit([{ conversationId: id, putMembers: [record] }]);
      await store.saveCursors(
        [],
        [
          { conversationId: id, userId: alice, deliveredUpTo: 6, readUpTo: 4 },
          { conversationId: id, userId: gone, deliveredUpTo: 6, readUpTo: 6 },
        ],
      );
      assert.deepEqual(await store.getMembers(id), [{ ...record, deliveredUpTo: 6, readUpTo: 4 }]);
      assert.deepEqual(await store.listUserConversations(gone), []);
    });
  });
}

function uniqueId(prefix: string): string {
  return `${prefix}_${randomUUID().replaceAll("-", "").slice(0, 26)}`;
}

function groupId(): string {
  return uniqueId("g");
}

function directId(): string {
  return uniqueId("d");
}

function userId(): string {
  return uniqueId("u");
}

function conversation(id: string, kind: ConversationRecord["kind"] = "group"): ConversationRecord {
  return {
    id,
    kind,
    title: kind === "group" ? "Team" : "",
    createdAtMs: 1_700_000_000_000,
    membersVersion: 1,
  };
}

function member(id: string, fields: Partial<MemberRecord> = {}): MemberRecord {
  return {
    userId: id,
    role: "member",
    joinedSeq: 1,
    addedAtMs: 1_700_000_000_000,
    deliveredUpTo: 0,
    readUpTo: 0,
    ...fields,
  };
}

function message(conversationId: string, seq: number, payload: number[] = [seq % 256, 0, 255]): Entry {
  return create(EntrySchema, {
    conversationId,
    seq: BigInt(seq),
    senderUserId: "u_sender",
    senderDeviceId: "dv_sender",
    clientMsgId: `c${seq}`,
    serverTimeMs: 1_700_000_000_000n + BigInt(seq),
    body: { case: "message", value: create(MessageBodySchema, { payload: new Uint8Array(payload) }) },
  });
}

function seqs(entries: Entry[]): number[] {
  return entries.map((e) => Number(e.seq));
}

function assertEntries(actual: Entry[], expected: Entry[]): void {
  assert.deepEqual(seqs(actual), seqs(expected));
  for (const [i, e] of expected.entries()) {
    assert.ok(equals(EntrySchema, actual[i]!, e), `entry seq ${e.seq} differs from what was written`);
  }
}

async function rejectsWith(promise: Promise<unknown>, kind: StoreErrorKind): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(isStoreError(err, kind), `expected StoreError "${kind}", got ${String(err)}`);
    return true;
  });
}

// Waits until the wall clock is past t, so writes before and after the returned time are apart.
async function clockPast(t: number): Promise<number> {
  while (Date.now() <= t) await new Promise((resolve) => setTimeout(resolve, 2));
  return Date.now();
}

function sorted(values: string[]): string[] {
  return [...values].sort();
}

function byUser<T extends { userId: string }>(rows: T[]): T[] {
  return [...rows].sort((x, y) => x.userId.localeCompare(y.userId));
}

function byConversation<T extends { conversationId: string }>(rows: T[]): T[] {
  return [...rows].sort((x, y) => x.conversationId.localeCompare(y.conversationId));
}

function byDevice<T extends { deviceId: string }>(rows: T[]): T[] {
  return [...rows].sort((x, y) => x.deviceId.localeCompare(y.deviceId));
}
