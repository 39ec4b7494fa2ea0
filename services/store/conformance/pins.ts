import { strict as assert } from "node:assert";
import { randomUUID } from "node:crypto";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import {
  type Entry,
  EntrySchema,
  MessageBodySchema,
  PinBodySchema,
} from "../../../gen/switchboard/v1/entry_pb.js";
import type { ConversationRecord, ConversationStore, PinRecord, StoreEngine } from "../types.js";

/**
 * The conformance suite of the store's part in pins: the record's pin list, written whole with the
 * pin entries' commits and kept when a record is written without one (see the port's
 * ConversationRecord.pins), for every engine (see runConversationStoreConformance for `open`).
 */
export function runPinConformance(open: () => Promise<StoreEngine>): void {
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

  describe("ConversationStore conformance: pins", () => {
    test("pins are written with their entry, kept by a record without them, and cleared with []", async (store) => {
      const id = `g_pin${randomUUID().replaceAll("-", "")}`;
      await store.commit([
        { conversationId: id, conversation: record(id), append: [message(id, 1), message(id, 2)] },
      ]);
      assert.deepEqual((await store.getConversation(id))?.pins ?? [], []);

      const first: PinRecord = { seq: 2, pinSeq: 3, byUserId: "u_a", atMs: 1_700_000_000_003 };
      const second: PinRecord = {
        seq: 1,
        pinSeq: 4,
        byUserId: "u_b",
        atMs: 1_700_000_000_004,
        expiresAtMs: 1_800_000_000_000,
      };
      // Two writes of the record in one commit: the last one holds both pins.
      await store.commit([
        { conversationId: id, conversation: { ...record(id), pins: [first] }, append: [pin(id, 3, 2)] },
        {
          conversationId: id,
          conversation: { ...record(id), pins: [first, second] },
          append: [pin(id, 4, 1)],
        },
      ]);
      assert.deepEqual((await store.getConversation(id))?.pins, [first, second]);

      // A rename (a record written without pins) keeps them, in a commit that appends nothing.
      await store.commit([{ conversationId: id, conversation: { ...record(id), title: "renamed" } }]);
      const renamed = await store.getConversation(id);
      assert.equal(renamed?.title, "renamed");
      assert.deepEqual(renamed?.pins, [first, second]);

      // An unpin, then the last one: [] leaves none.
      await store.commit([
        { conversationId: id, conversation: { ...record(id), pins: [second] }, append: [pin(id, 5, 2)] },
      ]);
      assert.deepEqual((await store.getConversation(id))?.pins, [second]);
      await store.commit([{ conversationId: id, conversation: { ...record(id), pins: [] } }]);
      assert.deepEqual((await store.getConversation(id))?.pins ?? [], []);
      assert.equal(await store.getLastSeq(id), 5);
    });

    test("a record written without pins after one with pins in the same commit keeps those pins", async (store) => {
      const id = `g_pin${randomUUID().replaceAll("-", "")}`;
      const only: PinRecord = { seq: 1, pinSeq: 2, byUserId: "u_a", atMs: 1_700_000_000_002 };
      await store.commit([
        {
          conversationId: id,
          conversation: { ...record(id), pins: [only] },
          append: [message(id, 1), pin(id, 2, 1)],
        },
        // Then a membership change's record, written from a copy without pins, in the same commit.
        { conversationId: id, conversation: { ...record(id), membersVersion: 3 }, append: [message(id, 3)] },
      ]);
      const stored = await store.getConversation(id);
      assert.equal(stored?.membersVersion, 3);
      assert.deepEqual(stored?.pins, [only]);
    });
  });
}

function record(id: string): ConversationRecord {
  return { id, kind: "group", title: "Team", createdAtMs: 1_700_000_000_000, membersVersion: 1 };
}

function message(conversationId: string, seq: number): Entry {
  return create(EntrySchema, {
    conversationId,
    seq: BigInt(seq),
    senderUserId: "u_a",
    serverTimeMs: BigInt(1_700_000_000_000 + seq),
    body: { case: "message", value: create(MessageBodySchema, { payload: new Uint8Array([seq]) }) },
  });
}

function pin(conversationId: string, seq: number, target: number): Entry {
  return create(EntrySchema, {
    conversationId,
    seq: BigInt(seq),
    senderUserId: "u_a",
    serverTimeMs: BigInt(1_700_000_000_000 + seq),
    body: { case: "pin", value: create(PinBodySchema, { targetSeq: BigInt(target) }) },
  });
}
