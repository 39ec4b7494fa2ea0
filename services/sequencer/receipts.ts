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
import type { ConversationStore, DeviceCursor, MemberCursor } from "../store/types.js";
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

  /**
   * Moves cursors forward, saves them, and issues receipts to the senders passed over. The
   * cursors of every conversation in the call go to the store in one write (CursorSave): at 5,000
   * msgs/s a gateway's flush (every 25 ms) names about a hundred conversations, and each had been
   * a write of its own, with its own unit for the store's write thread, child transaction and
   * promises.
   */
  async updateCursors(updates: readonly CursorUpdate[]): Promise<void> {
    const byConversation = new Map<string, CursorUpdate[]>();
    for (const u of updates) {
      const list = byConversation.get(u.conversationId);
      if (list === undefined) byConversation.set(u.conversationId, [u]);
      else list.push(u);
    }
    const save = new CursorSave(byConversation.size, (devices, members) =>
      this.store.saveCursors(devices, members),
    );
    await Promise.all(
      [...byConversation].map(([id, list]) => this.updateConversationCursors(id, list, save)),
    );
  }

  private async updateConversationCursors(
    conversationId: string,
    updates: CursorUpdate[],
    save: CursorSave,
  ): Promise<void> {
    let joined = false;
    try {
      await this.shards.withState(conversationId, async (state) => {
        if (state.record === undefined) return;
        // Nearly always every cursor is in memory already: no call, no promise.
        if (updates.some((u) => !state.deviceCursors.has(u.deviceId))) {
          await this.loadCursors(
            state,
            updates.map((u) => u.deviceId),
          );
        }
        const devices = new Map<string, DeviceCursor>();
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
          // A device named twice in one call is saved once, with its last values (the highest).
          devices.set(u.deviceId, {
            conversationId,
            deviceId: u.deviceId,
            deliveredUpTo: delivered,
            readUpTo: read,
          });
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
        joined = true;
        await save.join(devices.values(), memberCursors);
        const events: BusEvent[] = [];
        const now = BigInt(this.now());
        for (const move of moves) {
          // From memory when the state can vouch for the range (nearly always), else from the log.
          const notify =
            this.sendersKnown(state, move.from, move.to, move.userId) ??
            (await this.sendersRead(state, move.from, move.to, move.userId));
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
    } finally {
      // With nothing to save (or refused before it could say), it no longer holds the others' write back.
      if (!joined) save.leave();
    }
  }

  /**
   * The users (other than `except`) who sent entries in (from, to], if known without reading the
   * log: a range too long to scan names every member.
   */
  private sendersKnown(
    state: ConversationState,
    from: number,
    to: number,
    except: string,
  ): string[] | undefined {
    if (to - from > RECEIPT_SCAN_MAX) return [...state.members.keys()].filter((id) => id !== except);
    return state.receiptSenders(from, to, except);
  }

  /** The users (other than `except`) who sent entries in (from, to], read from the log. */
  private async sendersRead(
    state: ConversationState,
    from: number,
    to: number,
    except: string,
  ): Promise<string[]> {
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

/**
 * One store write for the cursors of several conversations. Each conversation, under its own
 * state, moves its cursors and joins with what to save, or leaves with nothing; once every one has
 * done either, the cursors are written together, and each that joined goes on (to its receipts)
 * when the write is durable, as it would after a write of its own. A failed write fails every
 * conversation that joined it. Holding a state until the others have joined costs nothing: no
 * operation on a conversation waits for another to end (a state is marked busy, not locked), and
 * joining needs only the conversation's cursors loaded. A conversation whose state or cursors must
 * first be read from the store holds the others' receipts back by that read; the call as a whole
 * took as long as its slowest conversation before, and its gateway waits for the whole call.
 */
export class CursorSave {
  private readonly devices: DeviceCursor[] = [];
  private readonly members: MemberCursor[] = [];
  private waiting: number;
  private begin!: () => void;
  private readonly saved: Promise<void>;

  constructor(
    /** The conversations that will each join or leave. */
    conversations: number,
    write: (devices: readonly DeviceCursor[], members: readonly MemberCursor[]) => Promise<void>,
  ) {
    this.waiting = conversations;
    this.saved = new Promise<void>((resolve) => {
      this.begin = resolve;
    }).then(() => (this.devices.length === 0 ? undefined : write(this.devices, this.members)));
    if (conversations === 0) this.begin();
  }

  /** Adds a conversation's cursors; resolves once they are durable with the others'. */
  join(devices: Iterable<DeviceCursor>, members: readonly MemberCursor[]): Promise<void> {
    for (const d of devices) this.devices.push(d);
    for (const m of members) this.members.push(m);
    this.arrive();
    return this.saved;
  }

  /** A conversation with nothing to save. */
  leave(): void {
    this.arrive();
  }

  private arrive(): void {
    if (--this.waiting === 0) this.begin();
  }
}
