import { create } from "@bufbuild/protobuf";
import { ConnectError } from "@connectrpc/connect";
import { ReceiptIssuedSchema, TypingRelayedSchema } from "../../gen/switchboard/internal/v1/events_pb.js";
import type {
  AppendItem,
  ConversationSync,
  CursorUpdate,
} from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import {
  type Conversation,
  ConversationKind,
  ConversationSchema,
  type Member,
  MemberRole,
  MemberSchema,
} from "../../gen/switchboard/v1/conversations_pb.js";
import {
  type Entry,
  EntrySchema,
  MembershipAction,
  MembershipBodySchema,
  type OutgoingEntry,
} from "../../gen/switchboard/v1/entry_pb.js";
import {
  ReceiptFrameSchema,
  ReceiptKind,
  TypingEventFrameSchema,
} from "../../gen/switchboard/v1/gateway_pb.js";
import type { EventBus } from "../bus/types.js";
import { toConnectError } from "../common/boundary.js";
import type { Limits } from "../common/config.js";
import {
  ConflictError,
  DomainError,
  InvalidInputError,
  NotFoundError,
  PermissionError,
} from "../common/errors.js";
import { directConversationId, newId } from "../common/ids.js";
import type { Logger } from "../common/log.js";
import { shardOf } from "../common/shard.js";
import { carries, context, endSpan, injectContext, startSpan } from "../common/telemetry.js";
import { encodedSizeBound } from "../common/wire-size.js";
import type { ConversationRecord, ConversationStore, DeviceFloor, MemberRecord } from "../store/types.js";
import type { ConversationState, CursorPair } from "./conversation.js";
import {
  checkDevicePayloads,
  conversationKind,
  membershipRefusal,
  needsDeviceCheck,
} from "./device-payloads.js";
import { HotStateBudget } from "./hot-state.js";
import { type OutboxOptions, PublishOutbox } from "./outbox.js";
import { type Batch, Shard } from "./shard.js";

/** What a delete-for-everyone rewrites: the message and the edits and reactions naming it. */
interface RedactPlan {
  /** The deleted message's seq. */
  target: number;
  /** The committed seq up to which the log was scanned. */
  scannedTo: number;
  /** The entries found, the message first. */
  entries: Entry[];
}

/** The outcome of one append. */
export interface Appended {
  /** The committed seq. */
  seq: number;
  /** Commit time, in milliseconds since the Unix epoch. */
  serverTimeMs: number;
}

/** Options for the sequencer. */
export interface SequencerOptions {
  /** Logical shard count (fixed per deployment). */
  shardCount: number;
  /** Which logical shards this replica owns; all of them when absent. */
  ownedShards?: readonly number[];
  /** Limits on payloads and groups. */
  limits: Limits;
  /** Conversation states kept in memory per shard, at most. */
  maxStatesPerShard?: number;
  /**
   * The byte budget of the hot state (tails, idempotency keys, members, cursors) of all this
   * replica's shards together; least recently used conversations are evicted past it.
   */
  cacheBytes?: number;
  /** The clock, in milliseconds since the Unix epoch. */
  now?: () => number;
  /** How committed events wait for the bus during an outage. */
  outbox?: OutboxOptions;
}

/** The hot state's byte budget when none is configured (config.ts has the deployed default). */
const DEFAULT_CACHE_BYTES = 128 * 1024 * 1024;
const PAGE_DEFAULT = 256;
const PAGE_MAX = 1000;
// Entries read from the store at a time for a byte-bounded page: 32 of the largest entries
// (about 460 KiB each) is the most one page read holds beyond its bound.
const BOUNDED_READ_STEP = 32;
// Receipts name the senders of the entries a cursor moved past; past this many entries the
// receipt goes to every member instead of reading the whole range.
const RECEIPT_SCAN_MAX = 2000;
// FindContacts and listings look at most this many of a user's conversations.
const USER_CONVERSATIONS_MAX = 5000;
// Device floors (where a linked device starts reading) kept in memory, and how many
// conversations' last seqs are read at once while a device is linked.
const FLOOR_CACHE_MAX = 100_000;
const FLOOR_READS_AT_ONCE = 64;
const FLOOR_WRITE_SLICE = 1000;

/** The one answer to a non-member, whether or not the conversation exists. */
const NOT_A_MEMBER = "not a member of this conversation";

function denied(message: string): PermissionError {
  return new PermissionError(message);
}

function refuseOver(what: string, bytes: number, limit: number): void {
  if (bytes > limit) throw new InvalidInputError(`${what} is ${bytes} bytes; the limit is ${limit}`);
}

/**
 * The per-item answer of a batched append. Each item is answered on its own (AppendResult's
 * error_code and error_message), not thrown through the boundary, so the refusal is turned into
 * its wire form here, with the boundary's own table; a DeviceMismatch refusal is already a
 * ConnectError because it carries its lists as an error detail.
 */
function itemRefusal(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  if (err instanceof DomainError) return toConnectError(err);
  return ConnectError.from(err);
}

function toMember(m: MemberRecord): Member {
  return create(MemberSchema, {
    userId: m.userId,
    role: m.role === "admin" ? MemberRole.ADMIN : MemberRole.MEMBER,
    joinedSeq: BigInt(m.joinedSeq),
    deliveredUpTo: BigInt(m.deliveredUpTo),
    readUpTo: BigInt(m.readUpTo),
  });
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
 * Owns conversations: membership, the ordered log, idempotency and cursors. Every mutation of a
 * conversation runs in the shard that owns it; reads of committed data may be served by any
 * replica from the store.
 */
export class Sequencer {
  private readonly shards = new Map<number, Shard>();
  private readonly now: () => number;
  /** Committed events on their way to the bus; holds them through a bus outage. */
  readonly outbox: PublishOutbox;
  /** The byte budget of the shards' in-memory state, with what it holds and evicts. */
  readonly hotState: HotStateBudget;
  /** Sends refused by the shard's own checks, by reason, since start. */
  readonly refusals = { membersChanged: 0 };
  private refusalLoggedAtMs = Number.NEGATIVE_INFINITY;
  /**
   * Linked devices' floors in this replica's conversations, "deviceId\nconversationId" -> the
   * floor, null when none was recorded. Never stale: a floor is written before its device
   * exists (RecordDeviceLink), by the replica that owns the conversation, which sets it here.
   */
  private readonly floors = new Map<string, number | null>();

  constructor(
    private readonly store: ConversationStore,
    private readonly bus: EventBus,
    private readonly log: Logger,
    private readonly options: SequencerOptions,
  ) {
    this.now = options.now ?? Date.now;
    this.outbox = new PublishOutbox(bus, log, options.outbox);
    this.hotState = new HotStateBudget(options.cacheBytes ?? DEFAULT_CACHE_BYTES, log);
    const owned = options.ownedShards ?? [...Array(options.shardCount).keys()];
    for (const index of owned) {
      const maxStates = options.maxStatesPerShard ?? 10_000;
      this.shards.set(index, new Shard(index, store, this.outbox, log, maxStates, this.hotState));
    }
  }

  /** True if this replica owns the conversation's shard. */
  owns(conversationId: string): boolean {
    return this.shards.has(shardOf(conversationId, this.options.shardCount));
  }

  /**
   * The user's conversations in the shards this replica owns. User-level reads are scattered to
   * every replica and merged by the caller, so each answers for its own shards only: with a
   * shared store (ScyllaDB) the others' rows are visible here too and would be counted twice.
   */
  private async userConversations(userId: string) {
    const rows = await this.store.listUserConversations(userId);
    return rows.filter((r) => this.owns(r.conversationId)).slice(0, USER_CONVERSATIONS_MAX);
  }

  /** The shard that owns a conversation, or FailedPrecondition when another replica does. */
  shardFor(conversationId: string): Shard {
    const index = shardOf(conversationId, this.options.shardCount);
    const shard = this.shards.get(index);
    if (shard === undefined) {
      throw new ConflictError(`shard ${index} is not owned by this sequencer replica`);
    }
    return shard;
  }

  /** The logical shards this replica owns, ascending. */
  get ownedShards(): number[] {
    return [...this.shards.keys()].sort((a, b) => a - b);
  }

  /** Waits for every pending commit and refuses new work. */
  async close(): Promise<void> {
    await Promise.all([...this.shards.values()].map((s) => s.close()));
    this.outbox.close();
  }

  /** Runs fn on a conversation's state with the state marked busy. */
  private async withState<T>(
    conversationId: string,
    fn: (state: ConversationState, shard: Shard) => Promise<T>,
  ) {
    const shard = this.shardFor(conversationId);
    const state = await shard.acquire(conversationId);
    try {
      return await fn(state, shard);
    } finally {
      shard.release(state);
    }
  }

  /**
   * The user's membership, or PERMISSION_DENIED. A conversation that does not exist gets the
   * same answer as one the user is not in: direct conversation ids are derived from the two
   * user ids, so any other answer would tell anyone whether two users ever talked.
   */
  private requireMember(state: ConversationState, userId: string): MemberRecord {
    const member = state.record === undefined ? undefined : state.members.get(userId);
    if (member === undefined) throw denied(NOT_A_MEMBER);
    return member;
  }

  /** Commit time, never earlier than the conversation's previous entry. */
  private commitTime(state: ConversationState): number {
    return Math.max(this.now(), state.lastServerTimeMs);
  }

  /** Assigns the next seq and queues the entry in the open batch. Synchronous by design. */
  private assign(
    state: ConversationState,
    batch: Batch,
    init: Omit<Partial<Entry>, "$typeName">,
    extra: string[] = [],
  ) {
    const seq = state.lastSeq + 1;
    const entry = create(EntrySchema, {
      ...init,
      conversationId: state.id,
      seq: BigInt(seq),
      serverTimeMs: BigInt(this.commitTime(state)),
    });
    state.lastSeq = seq;
    state.lastDurable = batch.durable;
    state.pushTail(entry);
    batch.append(state, entry);
    // The entry's event, and the commit, continue the trace of whatever assigned it.
    const trace = injectContext();
    batch.traced(trace);
    batch.publish(
      {
        case: "entryCommitted",
        value: {
          $typeName: "switchboard.internal.v1.EntryCommitted",
          entry,
          membersVersion: BigInt(state.record?.membersVersion ?? 0),
          extraRecipientUserIds: extra,
          mutesVersion: BigInt(state.mutesVersion),
        },
      },
      trace,
    );
    return entry;
  }

  /** Reads one committed entry, from the tail when possible. */
  private async entryAt(state: ConversationState, seq: number): Promise<Entry | undefined> {
    if (seq < 1 || seq > state.lastSeq) return undefined;
    const cached = state.fromTail(seq);
    if (cached !== undefined) return cached;
    const [entry] = await this.store.readEntries(state.id, seq - 1, 1);
    return entry;
  }

  /** Appends a batch of items; results in request order, one refusal does not affect others. */
  async append(items: readonly AppendItem[]): Promise<Array<Appended | ConnectError>> {
    return Promise.all(items.map((item) => this.appendOne(item).catch(itemRefusal)));
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
    this.checkBody(outgoing);
    return this.withState(outgoing.conversationId, async (state, shard) => {
      this.requireMember(state, item.senderUserId);
      const key = `${item.senderDeviceId}\n${outgoing.clientMsgId}`;
      const seen = await this.findRecent(state, key, item.senderDeviceId, outgoing.clientMsgId);
      if (seen !== undefined) return seen;
      const prepared = await this.prepareBody(state, item.senderUserId, outgoing);
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
        return { seq: again.seq, serverTimeMs: again.serverTimeMs };
      }
      this.requireMember(state, item.senderUserId);
      this.requireMembersAsChecked(state, item, outgoing);
      const batch = shard.batch();
      const entry = this.assign(state, batch, {
        senderUserId: item.senderUserId,
        senderDeviceId: item.senderDeviceId,
        clientMsgId: outgoing.clientMsgId,
        body: outgoing.body,
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
      const sent = {
        seq,
        serverTimeMs: Number(entry.serverTimeMs),
        durable: batch.durable as Promise<void> | undefined,
      };
      state.remember(key, sent);
      await batch.durable;
      sent.durable = undefined;
      return { seq, serverTimeMs: sent.serverTimeMs };
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
    key: string,
    deviceId: string,
    clientMsgId: string,
  ): Promise<Appended | undefined> {
    const recent = state.recent.get(key);
    if (recent !== undefined) {
      await recent.durable;
      return { seq: recent.seq, serverTimeMs: recent.serverTimeMs };
    }
    const seq = await this.store.getIdempotency(state.id, deviceId, clientMsgId);
    if (seq === undefined) return undefined;
    const entry = await this.entryAt(state, seq);
    const result = { seq, serverTimeMs: Number(entry?.serverTimeMs ?? 0n) };
    state.remember(key, { ...result, durable: undefined });
    return result;
  }

  private checkBody(outgoing: OutgoingEntry): void {
    const { limits } = this.options;
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
        break;
      default:
        throw new InvalidInputError("entry: a message, edit, delete or reaction body is required");
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
    const member = this.requireMember(state, userId);
    if (targetSeq < member.joinedSeq) throw new NotFoundError("target_seq: no such entry");
    const target = targetSeq <= state.committedSeq ? await this.entryAt(state, targetSeq) : undefined;
    if (target === undefined) throw new NotFoundError("target_seq: no such entry");
    if (target.body.case !== "message") {
      throw new ConflictError("target_seq: only messages can be edited, deleted or reacted to");
    }
    if (target.redacted) throw new ConflictError("target_seq: the message was deleted");
    if (body.case === "edit" && target.senderUserId !== userId)
      throw denied("only the sender can edit a message");
    if (body.case !== "delete") return {};
    const mayDelete =
      target.senderUserId === userId || (state.record?.kind === "group" && member.role === "admin");
    if (!mayDelete) throw denied("only the sender or a group admin can delete a message for everyone");
    // Edits and reactions carry content of their own; they are redacted with the message.
    const scannedTo = state.committedSeq;
    const entries = [target];
    for (let after = targetSeq; after < scannedTo; ) {
      const page = await this.readCommitted(state, after, PAGE_MAX);
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
    const page = await this.readCommitted(state, plan.scannedTo, PAGE_MAX);
    if (page.length === 0) return false;
    for (const e of page) if (targetOf(e) === plan.target && e.body.case !== "delete") plan.entries.push(e);
    plan.scannedTo = Number(page[page.length - 1]!.seq);
    return true;
  }

  /** Queues tombstones for a deleted message and what refers to it. */
  private redactAll(state: ConversationState, batch: Batch, plan: RedactPlan, deleteSeq: number): void {
    // Entries that arrived between the scan and now are only in the tail.
    const late = state.tail.filter(
      (e) => Number(e.seq) > plan.scannedTo && targetOf(e) === plan.target && e.body.case !== "delete",
    );
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

  /** Entries with seq > after that are durable, from the tail when it covers them. */
  private async readCommitted(state: ConversationState, after: number, limit: number): Promise<Entry[]> {
    const upTo = Math.min(state.committedSeq, after + limit);
    if (upTo <= after) return [];
    if (after + 1 >= state.tailStart()) {
      const start = after + 1 - state.tailStart();
      return state.tail.slice(start, start + (upTo - after));
    }
    const entries = await this.store.readEntries(state.id, after, upTo - after);
    return entries.filter((e) => Number(e.seq) <= upTo);
  }

  /** As readCommitted, stopping before the entries' encoded size passes maxBytes (one at least). */
  private async readBounded(
    state: ConversationState,
    after: number,
    limit: number,
    maxBytes: number,
  ): Promise<Entry[]> {
    const out: Entry[] = [];
    let bytes = 0;
    for (let from = after; out.length < limit; ) {
      const step = await this.readCommitted(state, from, Math.min(BOUNDED_READ_STEP, limit - out.length));
      if (step.length === 0) return out;
      for (const entry of step) {
        const size = encodedSizeBound(entry);
        if (out.length > 0 && bytes + size > maxBytes) return out;
        out.push(entry);
        bytes += size;
      }
      from = Number(step[step.length - 1]!.seq);
    }
    return out;
  }

  /** The conversation as a user's device sees it. */
  private view(
    record: ConversationRecord,
    lastSeq: number,
    memberCount: number,
    member: MemberRecord | undefined,
    cursor: CursorPair | undefined,
    userId: string,
    peer: string,
    lastActiveMs: number,
    deviceFloor = 0,
  ): Conversation {
    // Nothing before the user joined, or before this device was linked, is the device's to read.
    const floor = Math.max(member ? member.joinedSeq - 1 : 0, deviceFloor);
    return create(ConversationSchema, {
      conversationId: record.id,
      kind: record.kind === "direct" ? ConversationKind.DIRECT : ConversationKind.GROUP,
      title: record.title,
      lastSeq: BigInt(lastSeq),
      deliveredUpTo: BigInt(Math.max(cursor?.delivered ?? 0, floor)),
      readUpTo: BigInt(Math.max(member?.readUpTo ?? 0, floor)),
      memberCount,
      createdAtMs: BigInt(record.createdAtMs),
      peerUserId: record.kind === "direct" && peer !== userId ? peer : "",
      mutedUntilMs: BigInt(member?.mutedUntilMs ?? 0),
      lastActiveMs: BigInt(lastActiveMs),
    });
  }

  private stateView(
    state: ConversationState,
    userId: string,
    deviceId: string,
    deviceFloor = 0,
  ): Conversation {
    const record = state.record!;
    const peer =
      record.kind === "direct" ? ([...state.members.keys()].find((id) => id !== userId) ?? "") : "";
    return this.view(
      record,
      state.committedSeq,
      state.members.size,
      state.members.get(userId),
      state.deviceCursors.get(deviceId),
      userId,
      peer,
      state.lastServerTimeMs || record.createdAtMs,
      deviceFloor,
    );
  }

  /** Creates a conversation with its first members and its CREATED entry. */
  private async createConversation(
    state: ConversationState,
    shard: Shard,
    kind: "direct" | "group",
    title: string,
    creator: { userId: string; deviceId: string },
    memberIds: string[],
  ): Promise<void> {
    const now = this.now();
    const batch = shard.batch();
    state.record = { id: state.id, kind, title, createdAtMs: now, membersVersion: 1 };
    const members: MemberRecord[] = memberIds.map((userId) => ({
      userId,
      role: kind === "group" && userId === creator.userId ? "admin" : "member",
      joinedSeq: 1,
      addedAtMs: now,
      deliveredUpTo: 0,
      readUpTo: 0,
    }));
    for (const m of members) state.members.set(m.userId, m);
    batch.write(state).conversation = state.record;
    batch.putMembers(state, members);
    this.assign(state, batch, {
      senderUserId: creator.userId,
      senderDeviceId: creator.deviceId,
      body: {
        case: "membership",
        value: create(MembershipBodySchema, { action: MembershipAction.CREATED, userIds: memberIds, title }),
      },
    });
    await batch.durable;
  }

  /** The direct conversation of two users, created on first use. */
  async openDirect(userId: string, peerUserId: string, deviceId: string): Promise<Conversation> {
    if (userId === peerUserId)
      throw new InvalidInputError("peer_user_id: cannot open a conversation with yourself");
    const id = directConversationId(userId, peerUserId);
    return this.withState(id, async (state, shard) => {
      if (state.record === undefined) {
        shard.assertCurrent(state);
        await this.createConversation(state, shard, "direct", "", { userId, deviceId }, [userId, peerUserId]);
      } else {
        // A creation by the other user may still be committing.
        await this.committed(state);
      }
      if (state.members.get(userId) === undefined) throw denied("not a member of this conversation");
      await this.loadCursors(state, [deviceId]);
      return this.stateView(state, userId, deviceId);
    });
  }

  /** Creates a group with the creator as admin. */
  async createGroup(
    userId: string,
    deviceId: string,
    title: string,
    memberIds: readonly string[],
  ): Promise<Conversation> {
    const members = [userId, ...new Set(memberIds.filter((id) => id !== userId))];
    if (members.length > this.options.limits.maxGroupSize) {
      throw new InvalidInputError(`a group has at most ${this.options.limits.maxGroupSize} members`);
    }
    // The caller may route CreateGroup to any replica: it picks an id that hashes to a shard it
    // owns (with R replicas, R tries on average), so the group never needs to move.
    let id = newId("g");
    while (!this.owns(id)) id = newId("g");
    return this.withState(id, async (state, shard) => {
      await this.createConversation(state, shard, "group", title, { userId, deviceId }, members);
      return this.stateView(state, userId, deviceId);
    });
  }

  /** Waits until everything assigned so far in the conversation is durable. */
  private committed(state: ConversationState): Promise<void> {
    // Batches of a shard commit in order, so the latest one settling covers all earlier ones.
    return state.lastDurable;
  }

  /** Changes a group's membership, roles or title; returns the entry, or undefined for a no-op. */
  async changeMembership(
    actor: { userId: string; deviceId: string },
    conversationId: string,
    action: MembershipAction,
    userIds: readonly string[],
    title: string,
  ): Promise<Entry | undefined> {
    return this.withState(conversationId, async (state, shard) => {
      const me = this.requireMember(state, actor.userId);
      if (state.record?.kind !== "group") {
        throw new ConflictError("direct conversations have fixed membership");
      }
      if (action !== MembershipAction.LEFT && me.role !== "admin")
        throw denied("only group admins can do this");
      shard.assertCurrent(state);
      const batch = shard.batch();
      const record = state.record;
      const membership = (act: MembershipAction, ids: string[], extra: string[] = [], newTitle = "") => {
        const seq = state.lastSeq + 1;
        state.record = { ...record, ...state.record, membersVersion: seq };
        batch.write(state).conversation = state.record;
        return this.assign(
          state,
          batch,
          {
            senderUserId: actor.userId,
            senderDeviceId: actor.deviceId,
            body: {
              case: "membership",
              value: create(MembershipBodySchema, { action: act, userIds: ids, title: newTitle }),
            },
          },
          extra,
        );
      };
      let entry: Entry | undefined;
      switch (action) {
        case MembershipAction.ADDED: {
          const added = [...new Set(userIds)].filter((id) => !state.members.has(id));
          if (added.length === 0) break;
          if (state.members.size + added.length > this.options.limits.maxGroupSize) {
            throw new ConflictError(
              `the group would have ${state.members.size + added.length} members; the limit is ${this.options.limits.maxGroupSize}`,
            );
          }
          entry = membership(action, added);
          const joined = Number(entry.seq);
          const now = this.now();
          const records: MemberRecord[] = added.map((userId) => ({
            userId,
            role: "member",
            joinedSeq: joined,
            addedAtMs: now,
            deliveredUpTo: joined - 1,
            readUpTo: joined - 1,
          }));
          for (const m of records) state.members.set(m.userId, m);
          batch.putMembers(state, records);
          break;
        }
        case MembershipAction.REMOVED: {
          if (userIds.includes(actor.userId)) {
            throw new InvalidInputError("user_ids: use LeaveGroup to leave a group");
          }
          const removed = [...new Set(userIds)].filter((id) => state.members.has(id));
          if (removed.length === 0) break;
          entry = membership(action, removed, removed);
          for (const id of removed) state.members.delete(id);
          batch.removeMembers(state, removed);
          break;
        }
        case MembershipAction.LEFT: {
          entry = membership(action, [], [actor.userId]);
          state.members.delete(actor.userId);
          batch.removeMembers(state, [actor.userId]);
          const remaining = [...state.members.values()];
          if (remaining.length > 0 && !remaining.some((m) => m.role === "admin")) {
            const eldest = remaining.reduce((a, b) => (b.joinedSeq < a.joinedSeq ? b : a));
            membership(MembershipAction.PROMOTED, [eldest.userId]);
            const promoted: MemberRecord = { ...eldest, role: "admin" };
            state.members.set(eldest.userId, promoted);
            batch.putMembers(state, [promoted]);
          }
          break;
        }
        case MembershipAction.PROMOTED:
        case MembershipAction.DEMOTED: {
          const role = action === MembershipAction.PROMOTED ? "admin" : "member";
          const unknown = userIds.find((id) => !state.members.has(id));
          if (unknown !== undefined) throw new ConflictError(`user_ids: ${unknown} is not a member`);
          const changed = [...new Set(userIds)].filter((id) => state.members.get(id)?.role !== role);
          if (changed.length === 0) break;
          const adminsLeft = [...state.members.values()].filter(
            (m) => m.role === "admin" && !changed.includes(m.userId),
          );
          if (role === "member" && adminsLeft.length === 0) {
            throw new ConflictError("a group needs at least one admin");
          }
          entry = membership(action, changed);
          const records = changed.map((id) => ({ ...state.members.get(id)!, role }) as MemberRecord);
          for (const m of records) state.members.set(m.userId, m);
          batch.putMembers(state, records);
          break;
        }
        case MembershipAction.RENAMED: {
          if (title === record.title) break;
          entry = membership(action, [], [], title);
          state.record = { ...state.record!, title };
          batch.write(state).conversation = state.record;
          break;
        }
        default:
          throw new InvalidInputError("action: not a membership change a client can make");
      }
      await batch.durable;
      return entry;
    });
  }

  /**
   * A page of the log for a member, never before the entry that added them. With maxBytes the
   * page also stops before its entries' encoded size would pass it (one entry at least), and
   * the store is read in small steps so a page of large entries is never held whole.
   */
  async getHistory(
    userId: string,
    conversationId: string,
    afterSeq: number,
    limit: number,
    maxBytes = 0,
    deviceId = "",
  ): Promise<{ entries: Entry[]; lastSeq: number; hasMore: boolean }> {
    const pageSize = limit === 0 ? PAGE_DEFAULT : Math.min(limit, PAGE_MAX);
    return this.withState(conversationId, async (state) => {
      const member = this.requireMember(state, userId);
      // A device linked after the user joined reads from its link on (the RPC requires the
      // device; only in-process callers read as the user).
      const floor = deviceId === "" ? 0 : await this.deviceFloor(deviceId, conversationId);
      const after = Math.max(afterSeq, member.joinedSeq - 1, floor);
      const entries =
        maxBytes > 0
          ? await this.readBounded(state, after, pageSize, maxBytes)
          : await this.readCommitted(state, after, pageSize);
      const last = entries[entries.length - 1];
      const reached = last === undefined ? after : Number(last.seq);
      return { entries, lastSeq: state.committedSeq, hasMore: reached < state.committedSeq };
    });
  }

  private async loadCursors(state: ConversationState, deviceIds: readonly string[]): Promise<void> {
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
    await this.withState(conversationId, async (state) => {
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
      const events = [];
      const now = BigInt(this.now());
      for (const move of moves) {
        const notify = await this.sendersBetween(state, move.from, move.to, move.userId);
        if (notify.length === 0) continue;
        events.push({
          $typeName: "switchboard.internal.v1.BusEvent" as const,
          // The receipt continues the trace of the ack that moved the cursor.
          traceContext: injectContext(),
          event: {
            case: "receiptIssued" as const,
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
        });
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
    const senders = new Set<string>();
    for (let after = from; after < to; ) {
      const page = await this.readCommitted(state, after, Math.min(PAGE_MAX, to - after));
      if (page.length === 0) break;
      for (const e of page)
        if (e.senderUserId !== except && e.body.case !== "membership") senders.add(e.senderUserId);
      after = Number(page[page.length - 1]!.seq);
    }
    return [...senders];
  }

  /** A device's floor in a conversation of this replica (0 when it has none). */
  private async deviceFloor(deviceId: string, conversationId: string): Promise<number> {
    const key = `${deviceId}\n${conversationId}`;
    let floor = this.floors.get(key);
    if (floor === undefined) {
      floor = (await this.store.getDeviceFloor(deviceId, conversationId)) ?? null;
      this.rememberFloor(key, floor);
    }
    return floor ?? 0;
  }

  private rememberFloor(key: string, floor: number | null): void {
    this.floors.delete(key);
    this.floors.set(key, floor);
    for (const oldest of this.floors.keys()) {
      if (this.floors.size <= FLOOR_CACHE_MAX) break;
      this.floors.delete(oldest);
    }
  }

  /**
   * Records, for a device about to be linked to the user, where it starts in each of the
   * user's conversations in this replica's shards: their last committed seq now. The device
   * is then served nothing from before (history, sync pages, the backlog on connect), while
   * the user's other devices keep the whole history. Called before the device exists, so no
   * read of its floors can come first; a send still being committed as this runs may reach it.
   * Every conversation of the user, not only the first USER_CONVERSATIONS_MAX of a listing.
   */
  async recordDeviceLink(userId: string, deviceId: string): Promise<number> {
    const rows = (await this.store.listUserConversations(userId)).filter((r) => this.owns(r.conversationId));
    const floors: DeviceFloor[] = [];
    for (let i = 0; i < rows.length; i += FLOOR_READS_AT_ONCE) {
      const slice = rows.slice(i, i + FLOOR_READS_AT_ONCE);
      const seqs = await Promise.all(slice.map((r) => this.store.getLastSeq(r.conversationId)));
      slice.forEach((r, j) => {
        floors.push({ deviceId, conversationId: r.conversationId, floorSeq: seqs[j] ?? 0 });
      });
    }
    for (let i = 0; i < floors.length; i += FLOOR_WRITE_SLICE)
      await this.store.putDeviceFloors(floors.slice(i, i + FLOOR_WRITE_SLICE));
    for (const f of floors) this.rememberFloor(`${deviceId}\n${f.conversationId}`, f.floorSeq);
    return floors.length;
  }

  /** Every conversation of the user with its last seq and the device's delivered cursor. */
  async getSyncState(userId: string, deviceId: string): Promise<ConversationSync[]> {
    const [rows, floors] = await Promise.all([
      this.userConversations(userId),
      this.store.listDeviceFloors(deviceId),
    ]);
    return Promise.all(
      rows.map(async (row) => {
        const [lastSeq, cursors] = await Promise.all([
          this.store.getLastSeq(row.conversationId),
          this.store.getDeviceCursors(row.conversationId, [deviceId]),
        ]);
        return {
          $typeName: "switchboard.internal.v1.ConversationSync" as const,
          conversationId: row.conversationId,
          lastSeq: BigInt(lastSeq),
          deliveredUpTo: BigInt(cursors[0]?.deliveredUpTo ?? 0),
          // The device's start: where its user joined, or the first seq after its link.
          joinedSeq: BigInt(Math.max(row.joinedSeq, (floors.get(row.conversationId) ?? 0) + 1)),
        };
      }),
    );
  }

  /** The user's conversations as the device sees them, most recently active first. */
  async listConversations(userId: string, deviceId: string): Promise<Conversation[]> {
    const [rows, floors] = await Promise.all([
      this.userConversations(userId),
      this.store.listDeviceFloors(deviceId),
    ]);
    const listed = await Promise.all(
      rows.map(async (row) => {
        const id = row.conversationId;
        const [record, members, lastSeq, cursors] = await Promise.all([
          this.store.getConversation(id),
          this.store.getMembers(id),
          this.store.getLastSeq(id),
          this.store.getDeviceCursors(id, [deviceId]),
        ]);
        if (record === undefined) return undefined;
        const [last] = lastSeq > 0 ? await this.store.readEntries(id, lastSeq - 1, 1) : [];
        const cursor = cursors[0];
        const peer = record.kind === "direct" ? (members.find((m) => m.userId !== userId)?.userId ?? "") : "";
        return this.view(
          record,
          lastSeq,
          members.length,
          members.find((m) => m.userId === userId),
          cursor ? { delivered: cursor.deliveredUpTo, read: cursor.readUpTo } : undefined,
          userId,
          peer,
          Number(last?.serverTimeMs ?? BigInt(record.createdAtMs)),
          floors.get(id) ?? 0,
        );
      }),
    );
    return listed
      .filter((c): c is Conversation => c !== undefined)
      .sort((a, b) => Number(b.lastActiveMs - a.lastActiveMs));
  }

  /** One conversation with its members, for a member. */
  async getConversation(userId: string, deviceId: string, conversationId: string) {
    return this.withState(conversationId, async (state) => {
      this.requireMember(state, userId);
      await this.loadCursors(state, [deviceId]);
      const floor = await this.deviceFloor(deviceId, conversationId);
      return {
        conversation: this.stateView(state, userId, deviceId, floor),
        members: [...state.members.values()].map(toMember),
      };
    });
  }

  /** Current members, the membership version and the mutes in force, for fanout. */
  async getMembers(conversationId: string) {
    return this.withState(conversationId, async (state) => {
      if (state.record === undefined) throw new NotFoundError("conversation not found");
      const now = this.now();
      const mutes = [...state.members.values()].flatMap((m) =>
        (m.mutedUntilMs ?? 0) > now ? [{ userId: m.userId, mutedUntilMs: m.mutedUntilMs ?? 0 }] : [],
      );
      return {
        userIds: [...state.members.keys()],
        membersVersion: state.record.membersVersion,
        mutes,
        mutesVersion: state.mutesVersion,
      };
    });
  }

  /** Mutes (or with 0 unmutes) a conversation for one member: no push wake-ups until then. */
  async setMute(userId: string, conversationId: string, mutedUntilMs: number): Promise<void> {
    await this.withState(conversationId, async (state, shard) => {
      const member = this.requireMember(state, userId);
      shard.assertCurrent(state);
      const { mutedUntilMs: _previous, ...rest } = member;
      const updated: MemberRecord = mutedUntilMs > 0 ? { ...rest, mutedUntilMs } : rest;
      state.members.set(userId, updated);
      state.mutesVersion = Math.max(state.mutesVersion + 1, Date.now());
      const batch = shard.batch();
      batch.putMembers(state, [updated]);
      await batch.durable;
    });
  }

  /** Relays a typing indicator to the members; never stored. */
  async relayTyping(
    userId: string,
    deviceId: string,
    conversationId: string,
    active: boolean,
  ): Promise<void> {
    await this.withState(conversationId, async (state) => {
      this.requireMember(state, userId);
      this.bus.publishEphemeral([
        {
          $typeName: "switchboard.internal.v1.BusEvent",
          traceContext: injectContext(),
          event: {
            case: "typingRelayed",
            value: create(TypingRelayedSchema, {
              typing: create(TypingEventFrameSchema, { conversationId, userId, deviceId, active }),
              recipientUserIds: [...state.members.keys()],
            }),
          },
        },
      ]);
    });
  }

  /** Which of the peers share at least one conversation with the user. */
  async findContacts(userId: string, peerUserIds: readonly string[]): Promise<string[]> {
    const rows = await this.userConversations(userId);
    const ids = new Set(rows.map((r) => r.conversationId));
    const found = new Set<string>();
    let pending = peerUserIds.filter((peer) => {
      if (peer === userId || ids.has(directConversationId(userId, peer))) {
        found.add(peer);
        return false;
      }
      return true;
    });
    for (const row of rows) {
      if (pending.length === 0) break;
      if (!row.conversationId.startsWith("g_")) continue;
      const members = new Set((await this.store.getMembers(row.conversationId)).map((m) => m.userId));
      pending = pending.filter((peer) => {
        if (!members.has(peer)) return true;
        found.add(peer);
        return false;
      });
    }
    return peerUserIds.filter((p) => found.has(p));
  }
}
