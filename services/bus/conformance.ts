import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, test } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import {
  type BusEvent,
  BusEventSchema,
  type DeliveryBatch,
  DeliveryBatchSchema,
  DeliverySchema,
  EntryCommittedSchema,
  PresenceChangedSchema,
  ReceiptIssuedSchema,
  TypingRelayedSchema,
} from "../../gen/switchboard/internal/v1/events_pb.js";
import { EntrySchema, MessageBodySchema } from "../../gen/switchboard/v1/entry_pb.js";
import {
  PresenceFrameSchema,
  ReceiptFrameSchema,
  ReceiptKind,
  TypingEventFrameSchema,
} from "../../gen/switchboard/v1/gateway_pb.js";
import type { DeliveryChannel, EventBus } from "./types.js";

/** An engine under test; close releases what open took (and may be called after bus.close). */
export interface OpenedBus {
  bus: EventBus;
  delivery: DeliveryChannel;
  /** Resolves once the subscriptions made so far receive what is sent next (NATS: a round trip). */
  settle(): Promise<void>;
  /**
   * Committed events not yet acknowledged or not yet delivered, for engines that track them;
   * lets the suite check that a resolved batch is settled without waiting for a redelivery timer.
   */
  outstanding?(): Promise<number>;
  close(): Promise<void>;
}

/** What an engine may or may not do; the suite checks each way. */
export interface BusCapabilities {
  /** A batch whose handler rejects is delivered again (otherwise it is logged and dropped). */
  redeliversOnReject: boolean;
}

/** Waits for a condition, polling, and fails with what was awaited when the deadline passes. */
export async function eventually(
  what: string,
  condition: () => boolean | Promise<boolean>,
  timeoutMs = 10_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await condition()) return;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** A committed message entry. */
export function committed(conversationId: string, seq: number): BusEvent {
  return create(BusEventSchema, {
    event: {
      case: "entryCommitted",
      value: create(EntryCommittedSchema, {
        entry: create(EntrySchema, {
          conversationId,
          seq: BigInt(seq),
          senderUserId: "u_sender",
          body: {
            case: "message",
            value: create(MessageBodySchema, { payload: new Uint8Array([seq & 0xff]) }),
          },
        }),
        membersVersion: 1n,
      }),
    },
  });
}

/** A read receipt. */
export function receipt(conversationId: string, userId: string, upToSeq: number): BusEvent {
  return create(BusEventSchema, {
    event: {
      case: "receiptIssued",
      value: create(ReceiptIssuedSchema, {
        receipt: create(ReceiptFrameSchema, {
          conversationId,
          userId,
          kind: ReceiptKind.READ,
          upToSeq: BigInt(upToSeq),
        }),
        notifyUserIds: ["u_sender"],
      }),
    },
  });
}

function typing(conversationId: string, userId: string): BusEvent {
  return create(BusEventSchema, {
    event: {
      case: "typingRelayed",
      value: create(TypingRelayedSchema, {
        typing: create(TypingEventFrameSchema, { conversationId, userId, deviceId: "dv_1" }),
        recipientUserIds: ["u_other"],
      }),
    },
  });
}

function presence(userId: string): BusEvent {
  return create(BusEventSchema, {
    event: {
      case: "presenceChanged",
      value: create(PresenceChangedSchema, { presence: create(PresenceFrameSchema, { userId }) }),
    },
  });
}

/** "conversation:seq" of a committed entry, "conversation:r:user:upTo" of a receipt. */
export function keyOf(event: BusEvent): string {
  const e = event.event;
  if (e.case === "entryCommitted") return `${e.value.entry?.conversationId}:${e.value.entry?.seq}`;
  if (e.case === "receiptIssued") {
    return `${e.value.receipt?.conversationId}:r:${e.value.receipt?.userId}:${e.value.receipt?.upToSeq}`;
  }
  return e.case ?? "empty";
}

function bytes(events: readonly BusEvent[]): string[] {
  return events.map((e) => Buffer.from(toBinary(BusEventSchema, e)).toString("base64"));
}

function batchFor(conversationId: string, seq: number): DeliveryBatch {
  const event = committed(conversationId, seq).event;
  const entry = event.case === "entryCommitted" ? event.value.entry : undefined;
  return create(DeliveryBatchSchema, {
    deliveries: [
      create(DeliverySchema, { deviceIds: ["dv_a", "dv_b"], payload: { case: "entry", value: entry! } }),
    ],
  });
}

function seqsByConversation(events: readonly BusEvent[]): Map<string, number[]> {
  const out = new Map<string, number[]>();
  for (const { event } of events) {
    if (event.case !== "entryCommitted" || event.value.entry === undefined) continue;
    const list = out.get(event.value.entry.conversationId) ?? [];
    list.push(Number(event.value.entry.seq));
    out.set(event.value.entry.conversationId, list);
  }
  return out;
}

const range = (from: number, to: number): number[] =>
  Array.from({ length: to - from + 1 }, (_, i) => from + i);

/**
 * The behaviour every EventBus + DeliveryChannel engine must share. Each test opens its own
 * engine and uses fresh conversation ids, so engines backed by a shared server stay independent.
 */
export function runBusConformance(
  name: string,
  open: () => Promise<OpenedBus>,
  capabilities: BusCapabilities,
): void {
  describe(`EventBus conformance: ${name}`, () => {
    async function withBus(fn: (opened: OpenedBus) => Promise<void>): Promise<void> {
      const opened = await open();
      try {
        await fn(opened);
      } finally {
        await opened.close();
      }
    }
    const conversation = (): string => `g_${randomUUID().replaceAll("-", "")}`;

    test("one consumer gets every committed event, in publish order per conversation", () =>
      withBus(async ({ bus }) => {
        const conversations = [conversation(), conversation(), conversation()];
        const received: BusEvent[] = [];
        const stop = bus.consumeCommitted(async (events) => {
          // Within one call, too, each conversation's events come in order.
          for (const seqs of seqsByConversation(events).values()) {
            assert.deepEqual(
              seqs,
              [...seqs].sort((a, b) => a - b),
            );
          }
          received.push(...events);
        });
        // Interleaved conversations, calls of different sizes, published without waiting.
        const publishes: Array<Promise<void>> = [];
        let seq = 1;
        for (const size of [1, 7, 3, 12, 1, 6]) {
          const events: BusEvent[] = [];
          for (let i = 0; i < size; i++, seq++) for (const c of conversations) events.push(committed(c, seq));
          publishes.push(bus.publishCommitted(events));
        }
        await Promise.all(publishes);
        const total = (seq - 1) * conversations.length;
        await eventually(`${total} events`, () => received.length >= total);
        stop();
        const byConversation = seqsByConversation(received);
        for (const c of conversations) assert.deepEqual(byConversation.get(c), range(1, seq - 1));
        assert.equal(received.length, total);
      }));

    test("receipts travel with entries, in order", () =>
      withBus(async ({ bus }) => {
        const c = conversation();
        const received: string[] = [];
        const stop = bus.consumeCommitted(async (events) => {
          received.push(...events.map(keyOf));
        });
        const events = [committed(c, 1), receipt(c, "u_bob", 1), committed(c, 2), receipt(c, "u_bob", 2)];
        await bus.publishCommitted(events);
        await eventually("the receipts", () => received.length >= events.length);
        stop();
        assert.deepEqual(received, events.map(keyOf));
      }));

    test("a batch is settled when its handler resolves: nothing is delivered twice", () =>
      withBus(async (opened) => {
        const { bus } = opened;
        const c = conversation();
        const seen = new Map<string, number>();
        const stop = bus.consumeCommitted(async (events) => {
          for (const e of events) seen.set(keyOf(e), (seen.get(keyOf(e)) ?? 0) + 1);
        });
        await bus.publishCommitted(range(1, 20).map((s) => committed(c, s)));
        await eventually("the first events", () => seen.size >= 20);
        if (opened.outstanding)
          await eventually("every event acknowledged", async () => (await opened.outstanding?.()) === 0);
        // Events that follow come after any redelivery of the earlier ones would have.
        await bus.publishCommitted(range(21, 30).map((s) => committed(c, s)));
        await eventually("the later events", () => seen.size >= 30);
        stop();
        assert.deepEqual(
          [...seen.values()],
          range(1, 30).map(() => 1),
        );
      }));

    if (capabilities.redeliversOnReject) {
      test("a batch whose handler rejects is delivered again", () =>
        withBus(async (opened) => {
          const { bus } = opened;
          const c = conversation();
          const deliveries = new Map<number, number>();
          let failed = false;
          const stop = bus.consumeCommitted(async (events) => {
            const seqs = seqsByConversation(events).get(c) ?? [];
            for (const s of seqs) deliveries.set(s, (deliveries.get(s) ?? 0) + 1);
            if (!failed && seqs.includes(3)) {
              failed = true;
              throw new Error("route lookup failed");
            }
          });
          await bus.publishCommitted(range(1, 5).map((s) => committed(c, s)));
          await eventually("seq 3 delivered again", () => (deliveries.get(3) ?? 0) >= 2);
          await eventually("every event", () => range(1, 5).every((s) => deliveries.has(s)));
          if (opened.outstanding) {
            await eventually("every event acknowledged", async () => (await opened.outstanding?.()) === 0);
          }
          stop();
        }));
    } else {
      test("a batch whose handler rejects is dropped and the bus carries on", () =>
        withBus(async ({ bus }) => {
          const c = conversation();
          const received: number[] = [];
          let calls = 0;
          const stop = bus.consumeCommitted(async (events) => {
            calls++;
            if (calls === 1) throw new Error("route lookup failed");
            received.push(...(seqsByConversation(events).get(c) ?? []));
          });
          await bus.publishCommitted([committed(c, 1)]);
          await eventually("the failing call", () => calls >= 1);
          await bus.publishCommitted([committed(c, 2)]);
          await eventually("the next event", () => received.includes(2));
          stop();
        }));
    }

    test("events published while no consumer is attached wait for the next one", () =>
      withBus(async ({ bus }) => {
        const c = conversation();
        const first: number[] = [];
        const stopFirst = bus.consumeCommitted(async (events) => {
          first.push(...(seqsByConversation(events).get(c) ?? []));
        });
        await bus.publishCommitted([committed(c, 1)]);
        await eventually("the first event", () => first.length === 1);
        // Once stopped, a consumer takes nothing more.
        await stopFirst();
        await bus.publishCommitted(range(2, 4).map((s) => committed(c, s)));
        const second: number[] = [];
        const stopSecond = bus.consumeCommitted(async (events) => {
          second.push(...(seqsByConversation(events).get(c) ?? []));
        });
        await eventually("the later events", () => second.length >= 3);
        stopSecond();
        assert.deepEqual(first, [1]);
        assert.deepEqual(second, [2, 3, 4]);
      }));

    test("ephemeral events reach the consumer as published, never stored", () =>
      withBus(async ({ bus, settle }) => {
        const c = conversation();
        const received: BusEvent[] = [];
        const stop = bus.consumeEphemeral((events) => received.push(...events));
        await settle();
        const sent = [typing(c, "u_a"), typing(c, "u_b"), typing(c, "u_c")];
        bus.publishEphemeral(sent.slice(0, 2));
        bus.publishEphemeral(sent.slice(2));
        bus.publishEphemeral([]);
        await eventually("the typing events", () => received.length >= sent.length);
        assert.deepEqual(bytes(received), bytes(sent));
        stop();
        // Ephemeral events are not committed events: a committed consumer never sees them.
        const committedSeen: BusEvent[] = [];
        const stopCommitted = bus.consumeCommitted(async (events) => {
          committedSeen.push(...events);
        });
        await bus.publishCommitted([committed(c, 1)]);
        await eventually("the committed event", () => committedSeen.length >= 1);
        stopCommitted();
        assert.deepEqual(committedSeen.map(keyOf), [`${c}:1`]);
      }));

    test("broadcasts reach every subscriber until it unsubscribes", () =>
      withBus(async ({ bus, settle }) => {
        const a: BusEvent[] = [];
        const b: BusEvent[] = [];
        const stopA = bus.onBroadcast((events) => a.push(...events));
        const stopB = bus.onBroadcast((events) => b.push(...events));
        await settle();
        const first = [presence("u_1"), presence("u_2")];
        bus.broadcast(first);
        await eventually("both subscribers", () => a.length >= 2 && b.length >= 2);
        assert.deepEqual(bytes(a), bytes(first));
        assert.deepEqual(bytes(b), bytes(first));
        stopA();
        await settle();
        bus.broadcast([presence("u_3")]);
        await eventually("the remaining subscriber", () => b.length >= 3);
        await settle();
        assert.equal(a.length, 2);
        stopB();
      }));

    test("deliver hands each gateway its own batches until it stops listening", () =>
      withBus(async ({ delivery, settle }) => {
        const c = conversation();
        const gwA: DeliveryBatch[] = [];
        const gwB: DeliveryBatch[] = [];
        const stopA = delivery.listen("gw_a", (batch) => gwA.push(batch));
        const stopB = delivery.listen("gw_b", (batch) => gwB.push(batch));
        await settle();
        await delivery.deliver("gw_a", batchFor(c, 1));
        await delivery.deliver("gw_b", batchFor(c, 2));
        await delivery.deliver("gw_a", batchFor(c, 3));
        // Nobody listens there: handed over all the same.
        await delivery.deliver("gw_nobody", batchFor(c, 4));
        await eventually("both gateways", () => gwA.length >= 2 && gwB.length >= 1);
        const bin = (batches: DeliveryBatch[]) =>
          batches.map((x) => Buffer.from(toBinary(DeliveryBatchSchema, x)).toString("base64"));
        assert.deepEqual(bin(gwA), bin([batchFor(c, 1), batchFor(c, 3)]));
        assert.deepEqual(bin(gwB), bin([batchFor(c, 2)]));
        stopA();
        await settle();
        await delivery.deliver("gw_a", batchFor(c, 5));
        await delivery.deliver("gw_b", batchFor(c, 6));
        await eventually("gateway b", () => gwB.length >= 2);
        await settle();
        assert.equal(gwA.length, 2);
        stopB();
      }));

    test("close stops consuming, is idempotent, and later publishes settle", () =>
      withBus(async ({ bus }) => {
        const c = conversation();
        const received: number[] = [];
        bus.consumeCommitted(async (events) => {
          received.push(...(seqsByConversation(events).get(c) ?? []));
        });
        await bus.publishCommitted([committed(c, 1)]);
        await eventually("the first event", () => received.length >= 1);
        await bus.close();
        await bus.close();
        const [late] = await Promise.allSettled([bus.publishCommitted([committed(c, 2)])]);
        assert.ok(late !== undefined);
        assert.deepEqual(received, [1]);
      }));
  });
}
