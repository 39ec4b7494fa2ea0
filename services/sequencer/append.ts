import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { AppendItem } from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import { type Entry, EntrySchema, type OutgoingEntry } from "../../gen/switchboard/v1/entry_pb.js";
import { toConnectError } from "../common/boundary.js";
import type { Limits } from "../common/config.js";
import {
  ConflictError,
  DomainError,
  InvalidInputError,
  NotFoundError,
  PermissionError,
} from "../common/errors.js";
import type { Logger } from "../common/log.js";
import { carries, context, endSpan, startSpan } from "../common/telemetry.js";
import { encodedSizeBound } from "../common/wire-size.js";
import type { ConversationStore } from "../store/types.js";
import { checkCallLog } from "./call-log.js";
import type { ConversationState } from "./conversation.js";
import {
  checkDevicePayloads,
  conversationKind,
  membershipRefusal,
  needsDeviceCheck,
} from "./device-payloads.js";
import { type ConversationLog, PAGE_MAX } from "./log.js";
import { checkPinNow, preparePin, recordPin, unpinDeleted } from "./pins.js";
import { type ReplicaShards, requireMember } from "./replica.js";
import { checkReplyAndMentions } from "./replies.js";
import type { Batch, Shard } from "./shard.js";
import type { Appended } from "./types.js";

/** What a delete-for-everyone rewrites: the message and the edits and reactions naming it. */
interface RedactPlan {
  /** The deleted message's seq. */
  target: number;
  /** The committed seq up to which the log was scanned. */
  scannedTo: number;
  /** The entries found, the message first. */
  entries: Entry[];
}

/** Sends refused by the shard's own checks, by reason, since start. */
export interface AppendRefusals {
  /** Group sends checked against members that changed before their seq (a count). */
  membersChanged: number;
}

function refuseOver(what: string, bytes: number, limit: number): void {
  if (bytes > limit) throw new InvalidInputError(`${what} is ${bytes} bytes; the limit is ${limit}`);
}

function redacted(entry: Entry, bySeq: number): Entry {
  const copy = create(EntrySchema, { ...entry, redacted: true, redactedBySeq: BigInt(bySeq) });
  const body = copy.body;
  if (body.case === "message" || body.case === "edit" || body.case === "reaction") {
    // Every device's ciphertext goes with the payload: nothing of the content stays.
    body.value = { ...body.value, payload: new Uint8Array(0), devicePayloads: [], payloadType: 0 };
  }
  return copy;
}

function targetOf(entry: Entry): number | undefined {
  const body = entry.body;
  if (body.case === "edit" || body.case === "reaction" || body.case === "delete")
    return Number(body.value.targetSeq);
  return undefined;
}

/**
 * The per-item answer of a batched append. Each item is answered on its own (AppendResult's
 * error_code and error_message), not thrown through the boundary, so the refusal is turned into
 * its wire form here, with the boundary's own table; a DeviceMismatch refusal is already a
 * ConnectError because it carries its lists as an error detail. Anything else is a bug or an I/O
 * fault: like the boundary, it is logged with its cause and answered as a bare INTERNAL, so no
 * stack, path or driver message reaches a client.
 */
function itemRefusal(err: unknown, log: Logger): ConnectError {
  if (err instanceof ConnectError) return err;
  if (err instanceof DomainError) return toConnectError(err);
  log.error({ err }, "unexpected error appending an item");
  return new ConnectError("internal error", Code.Internal);
}

/**
 * Appends messages, edits, reactions and deletes: checks each against the conversation's state,
 * deduplicates by (device, client_msg_id), assigns its seq and waits for its commit.
 */
export class Appender {
  /** Sends refused by the shard's own checks, by reason, since start. */
  readonly refusals: AppendRefusals = { membersChanged: 0 };
  private refusalLoggedAtMs = Number.NEGATIVE_INFINITY;

  constructor(
    private readonly shards: ReplicaShards,
    private readonly entries: ConversationLog,
    private readonly store: ConversationStore,
    private readonly limits: Limits,
    /** The clock, in milliseconds since the Unix epoch. */
    private readonly now: () => number,
    private readonly log: Logger,
  ) {}

  /** Appends a batch of items; results in request order, one refusal does not affect others. */
  async append(items: readonly AppendItem[]): Promise<Array<Appended | ConnectError>> {
    return Promise.all(items.map((item) => this.appendOne(item).catch((err) => itemRefusal(err, this.log))));
  }

  private async appendOne(item: AppendItem): Promise<Appended> {
    const outgoing = item.entry;
    if (outgoing === undefined) throw new InvalidInputError("entry: required");
    // Each item of a batched call continues the trace of its own send.
    const { span, ctx } = startSpan(
      "sequencer.append",
      carries(item.traceContext) ? item.traceContext : undefined,
      {
        attributes: { "switchboard.conversation_id": outgoing.conversationId },
      },
    );
    try {
      const appended = await context.with(ctx, () => this.appendInState(item, outgoing));
      span.setAttribute("switchboard.seq", appended.seq);
      endSpan(span);
      return appended;
    } catch (err) {
      endSpan(span, err);
      throw err;
    }
  }

  private async appendInState(item: AppendItem, outgoing: OutgoingEntry): Promise<Appended> {
    // A call's log entry comes from a gateway with its body beside the entry (call-log.ts).
    let body: Entry["body"] = outgoing.body;
    if (item.callLog) body = { case: "call", value: checkCallLog(item, outgoing) };
    else this.checkBody(outgoing);
    return this.shards.withState(outgoing.conversationId, async (state, shard) => {
      const sender = requireMember(state, item.senderUserId);
      const key = `${item.senderDeviceId}\n${outgoing.clientMsgId}`;
      const seen = await this.findRecent(state, shard, key, item.senderDeviceId, outgoing.clientMsgId);
      if (seen !== undefined) return seen;
      if (body.case === "message") checkReplyAndMentions(state, sender, body.value);
      const prepared = await this.prepareBody(state, item.senderUserId, outgoing);
      const pin =
        body.case === "pin"
          ? await preparePin(state, this.entries, item.senderUserId, body.value, this.now())
          : undefined;
      // The tail must cover everything after the delete's scan (see scanOn); checked again
      // after each read, and nothing awaits between the last check and the block below.
      const plan = prepared.redact;
      while (plan !== undefined && state.tailStart() > plan.scannedTo + 1) {
        if (!(await this.scanOn(state, plan))) break;
      }
      shard.assertCurrent(state);
      // Everything from here to the end of the block is synchronous: no other operation on this
      // conversation can interleave between the checks and the seq assignment.
      const again = state.recent.get(key);
      if (again !== undefined) {
        await again.durable;
        return { seq: again.seq, serverTimeMs: again.serverTimeMs, expiresAtMs: again.expiresAtMs ?? 0 };
      }
      requireMember(state, item.senderUserId);
      this.requireMembersAsChecked(state, item, outgoing);
      if (pin !== undefined) checkPinNow(state, item.senderUserId, pin);
      // The entry's size decides whether it still fits the open batch (see Shard.batch).
      const batch = shard.batch(encodedSizeBound(outgoing));
      const entry = this.entries.assign(state, batch, {
        senderUserId: item.senderUserId,
        senderDeviceId: item.senderDeviceId,
        clientMsgId: outgoing.clientMsgId,
        body,
      });
      const seq = Number(entry.seq);
      const write = batch.write(state);
      write.idempotency ??= [];
      write.idempotency.push({
        deviceId: item.senderDeviceId,
        clientMsgId: outgoing.clientMsgId,
        seq,
      });
      if (prepared.redact !== undefined) this.redactAll(state, batch, prepared.redact, seq);
      if (pin !== undefined) recordPin(state, batch, pin, entry);
      const sent = {
        seq,
        serverTimeMs: Number(entry.serverTimeMs),
        expiresAtMs: Number(entry.expiresAtMs),
        durable: batch.durable as Promise<void> | undefined,
      };
      state.remember(key, sent);
      await batch.durable;
      sent.durable = undefined;
      return { seq, serverTimeMs: sent.serverTimeMs, expiresAtMs: sent.expiresAtMs };
    });
  }

  /**
   * A group send whose devices the gateway checked stands only if the members it was checked
   * against are the members now, at the seq about to be assigned (called in the synchronous
   * block before assign, so no membership change can come between). The gateway trusts cached
   * members for seconds; this is what keeps a member removed in that window from being sent a
   * key or a message they could read. A group send that needs the check and carries none was
   * not checked at all, and is refused too.
   */
  private requireMembersAsChecked(state: ConversationState, item: AppendItem, outgoing: OutgoingEntry): void {
    if (state.record?.kind !== "group" || !needsDeviceCheck(outgoing.conversationId, outgoing.body)) return;
    if (item.checkedMembers.length === 0) {
      throw new InvalidInputError(
        "checked_members: required for a group send with device_payloads or a sender-key payload",
      );
    }
    const refusal = membershipRefusal(item.checkedMembers, state.members);
    if (refusal === undefined) return;
    this.refusals.membersChanged++;
    const now = this.now();
    // Logged at most once per 10 s: a client can make as many of these as it has sends.
    if (now - this.refusalLoggedAtMs >= 10_000) {
      this.refusalLoggedAtMs = now;
      this.log.info(
        { refusal: "group_members_changed", conversationId: state.id, count: this.refusals.membersChanged },
        "group send refused: checked against members that changed before its seq",
      );
    }
    throw refusal;
  }

  private async findRecent(
    state: ConversationState,
    shard: Shard,
    key: string,
    deviceId: string,
    clientMsgId: string,
  ): Promise<Appended | undefined> {
    const recent = state.recent.get(key);
    if (recent !== undefined) {
      await recent.durable;
      return { seq: recent.seq, serverTimeMs: recent.serverTimeMs, expiresAtMs: recent.expiresAtMs ?? 0 };
    }
    const seq = await this.store.getIdempotency(state.id, deviceId, clientMsgId);
    if (seq === undefined) return undefined;
    // Past what this state has committed, the entry is another writer's (or a recovery's): only
    // the store has it, never this state's tail.
    const entry =
      seq <= state.committedSeq
        ? await this.entries.entryAt(state, seq)
        : (await this.store.readEntries(state.id, seq - 1, 1)).find((e) => Number(e.seq) === seq);
    // An entry expired by now is read as its stub (no times): the retry is told it expires at once.
    const result = {
      seq,
      serverTimeMs: Number(entry?.serverTimeMs ?? 0n),
      expiresAtMs: entry?.expired === true ? 1 : Number(entry?.expiresAtMs ?? 0n),
    };
    state.remember(key, { ...result, durable: undefined });
    // The process that committed it may have died before publishing its event, or the commit was
    // finished by a recovery or another writer: publishing it again costs a duplicate the
    // consumers drop, not publishing it costs the recipients their live delivery and push.
    if (entry !== undefined && !entry.expired) shard.republish(entry, state.mutesVersion);
    return result;
  }

  private checkBody(outgoing: OutgoingEntry): void {
    const { limits } = this;
    const body = outgoing.body;
    const kind = conversationKind(outgoing.conversationId);
    switch (body.case) {
      case "message":
      case "edit":
        refuseOver("payload", body.value.payload.length, limits.maxPayloadBytes);
        checkDevicePayloads(body, kind, limits);
        break;
      case "reaction":
        refuseOver("reaction", body.value.payload.length, limits.maxReactionBytes);
        checkDevicePayloads(body, kind, limits);
        break;
      case "delete":
      case "pin":
        break;
      default:
        throw new InvalidInputError("entry: a message, edit, delete, reaction or pin body is required");
    }
    const target = "targetSeq" in body.value ? body.value.targetSeq : undefined;
    if (target !== undefined && target === 0n) throw new InvalidInputError("target_seq: required");
  }

  /** Checks the target of an edit, delete or reaction; for a delete, finds what to redact. */
  private async prepareBody(
    state: ConversationState,
    userId: string,
    outgoing: OutgoingEntry,
  ): Promise<{ redact?: RedactPlan }> {
    const body = outgoing.body;
    if (body.case !== "edit" && body.case !== "delete" && body.case !== "reaction") return {};
    const targetSeq = Number(body.value.targetSeq);
    const member = requireMember(state, userId);
    if (targetSeq < member.joinedSeq) throw new NotFoundError("target_seq: no such entry");
    const target = targetSeq <= state.committedSeq ? await this.entries.entryAt(state, targetSeq) : undefined;
    if (target === undefined || target.expired) throw new NotFoundError("target_seq: no such entry");
    if (target.body.case !== "message")
      throw new ConflictError("target_seq: only messages can be edited, deleted or reacted to");
    if (target.redacted) throw new ConflictError("target_seq: the message was deleted");
    if (body.case === "edit" && target.senderUserId !== userId)
      throw new PermissionError("only the sender can edit a message");
    if (body.case !== "delete") return {};
    const mayDelete =
      target.senderUserId === userId || (state.record?.kind === "group" && member.role === "admin");
    if (!mayDelete)
      throw new PermissionError("only the sender or a group admin can delete a message for everyone");
    // Edits and reactions carry content of their own; they are redacted with the message.
    const scannedTo = state.committedSeq;
    const entries = [target];
    for (let after = targetSeq; after < scannedTo; ) {
      const page = await this.entries.readCommitted(state, after, PAGE_MAX);
      if (page.length === 0) break;
      for (const e of page) if (targetOf(e) === targetSeq && e.body.case !== "delete") entries.push(e);
      after = Number(page[page.length - 1]!.seq);
    }
    return { redact: { target: targetSeq, scannedTo, entries } };
  }

  /**
   * Extends a delete's scan by one page; false when there was nothing more to read. redactAll
   * (synchronous) takes the entries that arrived after the scan from the tail, so the tail must
   * start right after the scan; the byte budget may have shed committed entries from it while
   * the scan read the store.
   */
  private async scanOn(state: ConversationState, plan: RedactPlan): Promise<boolean> {
    const page = await this.entries.readCommitted(state, plan.scannedTo, PAGE_MAX);
    if (page.length === 0) return false;
    for (const e of page) if (targetOf(e) === plan.target && e.body.case !== "delete") plan.entries.push(e);
    plan.scannedTo = Number(page[page.length - 1]!.seq);
    return true;
  }

  /** Queues tombstones for a deleted message and what refers to it. */
  private redactAll(state: ConversationState, batch: Batch, plan: RedactPlan, deleteSeq: number): void {
    // A pinned message deleted for everyone is unpinned in the same commit.
    unpinDeleted(state, batch, plan.target);
    // Entries that arrived between the scan and now are only in the tail.
    const late = state
      .tailAfter(plan.scannedTo)
      .filter((e) => targetOf(e) === plan.target && e.body.case !== "delete");
    for (const scanned of [...plan.entries, ...late]) {
      const seq = Number(scanned.seq);
      // The newest version wins: a reaction may have been redacted by an earlier delete.
      const base = state.fromTail(seq) ?? scanned;
      if (base.redacted) continue;
      const tomb = redacted(base, deleteSeq);
      batch.replace(state, tomb);
      state.replaceTail(tomb);
    }
  }
}
