/**
 * Pinned messages. A pin or unpin is an entry of the log (Entry.pin), so every device sees it in
 * order; what is pinned now is kept beside it in the conversation's record
 * (ConversationRecord.pins), written in the same commit as the entry. Listings then show the pins
 * without reading the log, on both store engines, and a delete-for-everyone of a pinned message
 * drops its pin in the delete's own commit, so the list never names a deleted message.
 */
import { create } from "@bufbuild/protobuf";
import { type PinnedMessage, PinnedMessageSchema } from "../../gen/switchboard/v1/conversations_pb.js";
import type { Entry, PinBody } from "../../gen/switchboard/v1/entry_pb.js";
import { AlreadyExistsError, ConflictError, NotFoundError, PermissionError } from "../common/errors.js";
import type { ConversationRecord, MemberRecord, PinRecord } from "../store/types.js";
import type { ConversationState } from "./conversation.js";
import { isExpired } from "./expiry.js";
import { type ConversationLog, PAGE_MAX } from "./log.js";
import type { Batch } from "./shard.js";

/**
 * Messages a conversation may have pinned at once. WhatsApp's number: pins are a short list at
 * the top of a chat, and the record that holds them is read with every listing.
 */
export const MAX_PINS = 3;

/** A pin or unpin checked against the log, waiting for its seq. */
export interface PinPlan {
  /** The message pinned or unpinned. */
  target: number;
  /** True for an unpin. */
  unpin: boolean;
  /** The pinned message's expiry (Entry.expires_at_ms), 0 for none. */
  expiresAtMs: number;
  /** Entries up to this seq were looked at for a delete of the target. */
  checkedTo: number;
}

function isDeleteOf(entry: Entry, target: number): boolean {
  return entry.body.case === "delete" && Number(entry.body.value.targetSeq) === target;
}

function refuseUnlessAllowed(state: ConversationState, userId: string): MemberRecord {
  const member = state.members.get(userId);
  if (member === undefined) throw new NotFoundError("conversation not found");
  if (state.record?.kind === "group" && member.role !== "admin")
    throw new PermissionError("only group admins can pin or unpin messages");
  return member;
}

/**
 * Checks who pins and what, reading the target (a message the sender can read, as a reply's
 * target, not deleted or expired), and catches up with everything assigned while it read:
 * a delete of the target ordered before the pin must win (see checkPinNow).
 */
export async function preparePin(
  state: ConversationState,
  log: ConversationLog,
  userId: string,
  body: PinBody,
  nowMs: number,
): Promise<PinPlan> {
  const member = refuseUnlessAllowed(state, userId);
  const target = Number(body.targetSeq);
  if (target < member.joinedSeq || target > state.committedSeq)
    throw new NotFoundError("target_seq: no such entry");
  const plan: PinPlan = { target, unpin: body.unpin, expiresAtMs: 0, checkedTo: state.lastSeq };
  // An unpin needs no read: it only has to name a pin, and deleted messages have none.
  if (body.unpin) return plan;
  const entry = await log.entryAt(state, target);
  if (entry === undefined) throw new NotFoundError("target_seq: no such entry");
  if (isExpired(entry, nowMs)) throw new ConflictError("target_seq: the message expired");
  if (entry.body.case !== "message") throw new ConflictError("target_seq: only messages can be pinned");
  if (entry.redacted) throw new ConflictError("target_seq: the message was deleted");
  plan.expiresAtMs = Number(entry.expiresAtMs);
  // checkPinNow looks at the tail for deletes after checkedTo; what the tail no longer holds is
  // read here (as a delete's scan does; see Appender.scanOn).
  while (state.tailStart() > plan.checkedTo + 1) {
    const page = await log.readCommitted(state, plan.checkedTo, PAGE_MAX);
    if (page.length === 0) break;
    if (page.some((e) => isDeleteOf(e, target)))
      throw new ConflictError("target_seq: the message was deleted");
    plan.checkedTo = Number(page[page.length - 1]!.seq);
  }
  return plan;
}

/**
 * The checks that must see the conversation as it is when the pin gets its seq. Synchronous: it
 * runs in the append's block between the last await and the seq assignment.
 */
export function checkPinNow(state: ConversationState, userId: string, plan: PinPlan): void {
  refuseUnlessAllowed(state, userId);
  const pins = state.record?.pins ?? [];
  const pinned = pins.some((p) => p.seq === plan.target);
  if (plan.unpin) {
    if (!pinned) throw new ConflictError("target_seq: the message is not pinned");
    return;
  }
  if (state.tailAfter(plan.checkedTo).some((e) => isDeleteOf(e, plan.target)))
    throw new ConflictError("target_seq: the message was deleted");
  if (pinned) throw new AlreadyExistsError("target_seq: the message is already pinned");
  if (pins.length >= MAX_PINS)
    throw new ConflictError(`a conversation has at most ${MAX_PINS} pinned messages; unpin one first`);
}

function writePins(state: ConversationState, batch: Batch, pins: PinRecord[]): void {
  const record = state.record as ConversationRecord;
  state.record = { ...record, pins };
  batch.write(state).conversation = state.record;
}

/** Records the pin entry's effect in the record, in the entry's commit. Synchronous. */
export function recordPin(state: ConversationState, batch: Batch, plan: PinPlan, entry: Entry): void {
  const pins = state.record?.pins ?? [];
  if (plan.unpin) {
    writePins(
      state,
      batch,
      pins.filter((p) => p.seq !== plan.target),
    );
    return;
  }
  const pin: PinRecord = {
    seq: plan.target,
    pinSeq: Number(entry.seq),
    byUserId: entry.senderUserId,
    atMs: Number(entry.serverTimeMs),
    ...(plan.expiresAtMs > 0 && { expiresAtMs: plan.expiresAtMs }),
  };
  writePins(state, batch, [...pins, pin]);
}

/** Drops the pin of a message deleted for everyone, in the delete's commit. Synchronous. */
export function unpinDeleted(state: ConversationState, batch: Batch, target: number): void {
  const pins = state.record?.pins ?? [];
  if (pins.some((p) => p.seq === target))
    writePins(
      state,
      batch,
      pins.filter((p) => p.seq !== target),
    );
}

/**
 * The pins a device may see: of messages after its floor (its user's join, or its link), and not
 * expired (a disappearing message's pin goes with it).
 */
export function pinsView(
  pins: readonly PinRecord[] | undefined,
  floorSeq: number,
  nowMs: number,
): PinnedMessage[] {
  const out: PinnedMessage[] = [];
  for (const p of pins ?? []) {
    if (p.seq <= floorSeq) continue;
    if (p.expiresAtMs !== undefined && p.expiresAtMs <= nowMs) continue;
    out.push(
      create(PinnedMessageSchema, {
        seq: BigInt(p.seq),
        pinSeq: BigInt(p.pinSeq),
        pinnedByUserId: p.byUserId,
        pinnedAtMs: BigInt(p.atMs),
      }),
    );
  }
  return out;
}
