import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import type { BusEvent } from "../../gen/switchboard/internal/v1/events_pb.js";
import { CursorUpdateSchema } from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import { ReceiptKind } from "../../gen/switchboard/v1/gateway_pb.js";
import { messageItem } from "../../test/helpers/entries.js";
import { InProcessBus } from "../bus/in-process.js";
import { defaultLimits } from "../common/config.js";
import { createLogger } from "../common/log.js";
import { openLmdbStore } from "../store/lmdb/engine.js";
import type { ConversationStore, StoreEngine } from "../store/types.js";
import { Sequencer } from "./sequencer.js";

const log = createLogger({ level: "silent" });
const ALICE = { userId: "u_0000000000000000000000000a", deviceId: "dv_000000000000000000000000a" };
const BOB = { userId: "u_0000000000000000000000000b", deviceId: "dv_000000000000000000000000b" };
const CAROL = { userId: "u_0000000000000000000000000c", deviceId: "dv_000000000000000000000000c" };
/** Large enough that a few entries overflow the budget, which then sheds every committed tail. */
const PAYLOAD = 20_000;
const BUDGET = 32 * 1024;

/**
 * Receipts against a real LMDB store, with a byte budget that keeps conversations' states but
 * never their tails: what a receipt needs of the entries it passes (their senders) must not cost
 * a read of them from the store, and a state that cannot vouch for them must read them.
 */
describe("Receipts once the tail is shed (real LMDB store)", () => {
  let dir: string;
  let engine: StoreEngine;
  /** Entries the sequencers read back from the store. */
  let entryReads = 0;
  let store: ConversationStore;
  const receipts: Array<{ kind: ReceiptKind; upTo: number; notify: string[] }> = [];
  const buses: InProcessBus[] = [];

  function sequencer(): Sequencer {
    const bus = new InProcessBus(log);
    buses.push(bus);
    bus.consumeCommitted(async (events: readonly BusEvent[]) => {
      for (const e of events) {
        if (e.event.case !== "receiptIssued") continue;
        const { receipt, notifyUserIds } = e.event.value;
        assert.ok(receipt !== undefined);
        receipts.push({
          kind: receipt.kind,
          upTo: Number(receipt.upToSeq),
          notify: [...notifyUserIds].sort(),
        });
      }
    });
    return new Sequencer(store, bus, log, { shardCount: 1, limits: defaultLimits, cacheBytes: BUDGET });
  }

  async function receiptsFor(s: Sequencer, conversationId: string, deliveredUpTo: number, readUpTo = 0) {
    receipts.length = 0;
    await s.updateCursors([
      create(CursorUpdateSchema, {
        userId: BOB.userId,
        deviceId: BOB.deviceId,
        conversationId,
        deliveredUpTo: BigInt(deliveredUpTo),
        readUpTo: BigInt(readUpTo),
      }),
    ]);
    // The outbox publishes on the bus, which hands the events over in a later task.
    for (let i = 0; i < 50 && receipts.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    return [...receipts];
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "receipts-test-"));
    engine = await openLmdbStore({ path: dir });
    store = Object.create(engine.conversations);
    store.readEntries = async (conversationId, afterSeq, limit) => {
      entryReads++;
      return engine.conversations.readEntries(conversationId, afterSeq, limit);
    };
  });
  after(async () => {
    for (const bus of buses) await bus.close();
    await engine.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("names the senders passed over from memory, and from the store after a reload, alike", async () => {
    const first = sequencer();
    const { conversationId: id } = await first.createGroup(ALICE.userId, ALICE.deviceId, "g", [
      BOB.userId,
      CAROL.userId,
    ]);
    const senders = [ALICE, CAROL, ALICE, BOB];
    for (const [i, sender] of senders.entries()) {
      const [sent] = await first.append([messageItem(sender, id, `m${i}`, new Uint8Array(PAYLOAD).fill(i))]);
      assert.ok(sent !== undefined && "seq" in sent, String(sent));
    }
    const last = 1 + senders.length;
    assert.ok(first.hotState.metrics.evictedEntries >= senders.length, "the tails were shed (the premise)");
    assert.equal(first.hotState.conversations, 1, "the state itself was kept (the premise)");

    entryReads = 0;
    const delivered = await receiptsFor(first, id, 3);
    assert.deepEqual(delivered, [
      { kind: ReceiptKind.DELIVERED, upTo: 3, notify: [ALICE.userId, CAROL.userId] },
    ]);
    const read = await receiptsFor(first, id, 0, last);
    assert.deepEqual(
      read.map((r) => [r.kind, r.upTo, r.notify]),
      [
        [ReceiptKind.DELIVERED, last, [ALICE.userId]],
        [ReceiptKind.READ, last, [ALICE.userId, CAROL.userId]],
      ],
      "Bob's own message earns him no receipt; the membership change at seq 1 none at all",
    );
    assert.equal(entryReads, 0, "no entry was read back from the store for a receipt");
    await first.close();

    // Another sequencer over the same store starts with no senders in memory: it reads them.
    const second = sequencer();
    entryReads = 0;
    const again = await receiptsFor(second, id, 0, 0);
    assert.deepEqual(again, [], "nothing moved: no receipt");
    await second.updateCursors([
      create(CursorUpdateSchema, {
        userId: CAROL.userId,
        deviceId: CAROL.deviceId,
        conversationId: id,
        deliveredUpTo: BigInt(last),
      }),
    ]);
    for (let i = 0; i < 50 && receipts.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(receipts, [
      { kind: ReceiptKind.DELIVERED, upTo: last, notify: [ALICE.userId, BOB.userId] },
    ]);
    assert.ok(entryReads > 0, "a state loaded from the store read the entries it could not vouch for");
    await second.close();
  });
});

/**
 * The cursors of every conversation in one UpdateCursors call go to the store in one write, and
 * each conversation's receipts follow only once that write is durable.
 */
describe("Cursors of one call saved in one write (real LMDB store)", () => {
  let dir: string;
  let engine: StoreEngine;
  let store: ConversationStore;
  /** The saveCursors calls, with how many device cursors each carried. */
  const saves: number[] = [];
  /** Set to make the next saves fail, as a store that lost its disk would. */
  let failSaves = false;
  const receipts: Array<{ conversationId: string; kind: ReceiptKind; upTo: number }> = [];
  let bus: InProcessBus;
  let s: Sequencer;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "receipts-save-test-"));
    engine = await openLmdbStore({ path: dir });
    store = Object.create(engine.conversations);
    store.saveCursors = async (devices, members) => {
      saves.push(devices.length);
      if (failSaves) throw new Error("disk gone");
      return engine.conversations.saveCursors(devices, members);
    };
    bus = new InProcessBus(log);
    bus.consumeCommitted(async (events: readonly BusEvent[]) => {
      for (const e of events) {
        if (e.event.case !== "receiptIssued" || e.event.value.receipt === undefined) continue;
        const r = e.event.value.receipt;
        receipts.push({ conversationId: r.conversationId, kind: r.kind, upTo: Number(r.upToSeq) });
      }
    });
    s = new Sequencer(store, bus, log, { shardCount: 4, limits: defaultLimits });
  });
  after(async () => {
    await s.close();
    await bus.close();
    await engine.close();
    await rm(dir, { recursive: true, force: true });
  });

  const update = (who: typeof BOB, conversationId: string, deliveredUpTo: number) =>
    create(CursorUpdateSchema, {
      userId: who.userId,
      deviceId: who.deviceId,
      conversationId,
      deliveredUpTo: BigInt(deliveredUpTo),
    });

  async function conversationWithMessage(name: string): Promise<string> {
    const { conversationId } = await s.createGroup(ALICE.userId, ALICE.deviceId, name, [BOB.userId]);
    const [sent] = await s.append([messageItem(ALICE, conversationId, `${name}-m`, new Uint8Array(8))]);
    assert.ok(sent !== undefined && "seq" in sent, String(sent));
    return conversationId;
  }

  it("writes every conversation's cursors at once, then issues each one's receipts", async () => {
    const ids = [];
    for (let i = 0; i < 5; i++) ids.push(await conversationWithMessage(`g${i}`));
    saves.length = 0;
    receipts.length = 0;
    await s.updateCursors([
      ...ids.map((id) => update(BOB, id, 2)),
      // Nothing to move: already at 0, and 0 asked.
      update(CAROL, ids[0]!, 0),
      // A conversation that does not exist has nothing to save, and holds no one back.
      update(BOB, "c_00000000000000000000000000", 1),
    ]);
    assert.deepEqual(saves, [5], "one write, holding the five cursors that moved");
    for (let i = 0; i < 50 && receipts.length < 5; i++) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(
      receipts.map((r) => r.conversationId).sort(),
      [...ids].sort(),
      "a delivered receipt for each conversation",
    );
    for (const id of ids) {
      const [saved] = await engine.conversations.getDeviceCursors(id, [BOB.deviceId]);
      assert.equal(saved?.deliveredUpTo, 2, "durable in the store");
    }
  });

  it("refuses the whole call, and issues no receipt, when the write fails", async () => {
    const ids = [await conversationWithMessage("f0"), await conversationWithMessage("f1")];
    saves.length = 0;
    receipts.length = 0;
    failSaves = true;
    try {
      await assert.rejects(s.updateCursors(ids.map((id) => update(BOB, id, 2))), /disk gone/);
    } finally {
      failSaves = false;
    }
    assert.deepEqual(saves, [2], "one write was tried, for both");
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(receipts, [], "no receipt claims a cursor that was not saved");
  });
});
