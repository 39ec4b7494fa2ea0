import { create } from "@bufbuild/protobuf";
import {
  type BusEvent,
  BusEventSchema,
  ReceiptIssuedSchema,
  TypingRelayedSchema,
} from "../../gen/switchboard/internal/v1/events_pb.js";
import type { CursorUpdate } from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import {
  ReceiptFrameSchema,
  ReceiptKind,
  TypingEventFrameSchema,
} from "../../gen/switchboard/v1/gateway_pb.js";
import type { EventBus } from "../bus/types.js";
import { injectContext } from "../common/telemetry.js";
import type { ConversationStore } from "../store/types.js";
import type { ConversationState } from "./conversation.js";
import { type ConversationLog, PAGE_MAX } from "./log.js";
import type { PublishOutbox } from "./outbox.js";
import { type ReplicaShards, requireMember } from "./replica.js";

// Receipts name the senders of the entries a cursor moved past; past this many entries the
// receipt goes to every member instead of reading the whole range.
const RECEIPT_SCAN_MAX = 2000;

/**
 * What a member's devices tell the others about reading and writing: delivered and read cursors
 * (saved, and turned into receipts for the senders passed over) and typing (relayed, never
 * stored).
 */
export class Receipts {
  constructor(
    private readonly shards: ReplicaShards,
    private readonly entries: ConversationLog,
    private readonly store: ConversationStore,
    private readonly outbox: PublishOutbox,
    private readonly bus: EventBus,
    /** The clock, in milliseconds since the Unix epoch. */
    private readonly now: () => number,
  ) {}

  /** Loads the cursors of the devices the state does not hold yet (0 for a device with none). */
  async loadCursors(state: ConversationState, deviceIds: readonly string[]): Promise<void> {
    const missing = deviceIds.filter((id) => !state.deviceCursors.has(id));
    if (missing.length === 0) return;
    const found = await this.store.getDeviceCursors(state.id, missing);
    for (const id of missing) {
      if (state.deviceCursors.has(id)) continue;
      const c = found.find((f) => f.deviceId === id);
      state.deviceCursors.set(id, { delivered: c?.deliveredUpTo ?? 0, read: c?.readUpTo ?? 0 });
    }
  }

  /** Moves cursors forward, saves them, and issues receipts to the senders passed over. */
  async updateCursors(updates: readonly CursorUpdate[]): Promise<void> {
    const byConversation = new Map<string, CursorUpdate[]>();
    for (const u of updates) {
      const list = byConversation.get(u.conversationId) ?? [];
      list.push(u);
      byConversation.set(u.conversationId, list);
    }
    await Promise.all([...byConversation].map(([id, list]) => this.updateConversationCursors(id, list)));
  }

  private async updateConversationCursors(conversationId: string, updates: CursorUpdate[]): Promise<void> {
    await this.shards.withState(conversationId, async (state) => {
      if (state.record === undefined) return;
      await this.loadCursors(
        state,
        updates.map((u) => u.deviceId),
      );
      const devices = new Map<string, { deviceId: string; deliveredUpTo: number; readUpTo: number }>();
      const moves: Array<{ userId: string; kind: ReceiptKind; from: number; to: number }> = [];
      for (const u of updates) {
        const member = state.members.get(u.userId);
        // A device of a user who was removed meanwhile: nothing to record.
        if (member === undefined) continue;
        const cursor = state.deviceCursors.get(u.deviceId)!;
        const ceiling = state.committedSeq;
        const read = Math.min(Math.max(cursor.read, Number(u.readUpTo)), ceiling);
        const delivered = Math.min(Math.max(cursor.delivered, Number(u.deliveredUpTo), read), ceiling);
        if (read === cursor.read && delivered === cursor.delivered) continue;
        cursor.read = read;
        cursor.delivered = delivered;
        devices.set(u.deviceId, { deviceId: u.deviceId, deliveredUpTo: delivered, readUpTo: read });
        if (delivered > member.deliveredUpTo) {
          moves.push({
            userId: u.userId,
            kind: ReceiptKind.DELIVERED,
            from: member.deliveredUpTo,
            to: delivered,
          });
          member.deliveredUpTo = delivered;
        }
        if (read > member.readUpTo) {
          moves.push({ userId: u.userId, kind: ReceiptKind.READ, from: member.readUpTo, to: read });
          member.readUpTo = read;
        }
      }
      if (devices.size === 0) return;
      const memberCursors = [...new Set(moves.map((m) => m.userId))].map((userId) => {
        const m = state.members.get(userId)!;
        return { conversationId, userId, deliveredUpTo: m.deliveredUpTo, readUpTo: m.readUpTo };
      });
      await this.store.saveCursors(
        [...devices.values()].map((d) => ({ conversationId, ...d })),
        memberCursors,
      );
      const events: BusEvent[] = [];
      const now = BigInt(this.now());
      for (const move of moves) {
        const notify = await this.sendersBetween(state, move.from, move.to, move.userId);
        if (notify.length === 0) continue;
        events.push(
          create(BusEventSchema, {
            // The receipt continues the trace of the ack that moved the cursor.
            traceContext: injectContext(),
            event: {
              case: "receiptIssued",
              value: create(ReceiptIssuedSchema, {
                receipt: create(ReceiptFrameSchema, {
                  conversationId,
                  userId: move.userId,
                  kind: move.kind,
                  upToSeq: BigInt(move.to),
                  timeMs: now,
                }),
                notifyUserIds: notify,
              }),
            },
          }),
        );
      }
      this.outbox.publish(events);
    });
  }

  /** The users (other than `except`) who sent entries in (from, to]. */
  private async sendersBetween(
    state: ConversationState,
    from: number,
    to: number,
    except: string,
  ): Promise<string[]> {
    if (to - from > RECEIPT_SCAN_MAX) return [...state.members.keys()].filter((id) => id !== except);
    const known = state.receiptSenders(from, to, except);
    if (known !== undefined) return known;
    const senders = new Set<string>();
    for (let after = from; after < to; ) {
      const page = await this.entries.readCommitted(state, after, Math.min(PAGE_MAX, to - after));
      if (page.length === 0) break;
      for (const e of page) {
        // An expired entry reads as a stub, which names no sender.
        if (e.senderUserId === "" || e.senderUserId === except || e.body.case === "membership") continue;
        senders.add(e.senderUserId);
      }
      after = Number(page[page.length - 1]!.seq);
    }
    return [...senders];
  }

  /** Relays a typing indicator to the members; never stored. */
  async relayTyping(
    userId: string,
    deviceId: string,
    conversationId: string,
    active: boolean,
  ): Promise<void> {
    await this.shards.withState(conversationId, async (state) => {
      requireMember(state, userId);
      this.bus.publishEphemeral([
        create(BusEventSchema, {
          traceContext: injectContext(),
          event: {
            case: "typingRelayed",
            value: create(TypingRelayedSchema, {
              typing: create(TypingEventFrameSchema, { conversationId, userId, deviceId, active }),
              recipientUserIds: [...state.members.keys()],
            }),
          },
        }),
      ]);
    });
  }
}
