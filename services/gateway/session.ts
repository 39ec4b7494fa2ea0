import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { type Entry, MembershipAction, type OutgoingEntry } from "../../gen/switchboard/v1/entry_pb.js";
import {
  type ConnectRequest,
  type ConnectResponse,
  ConnectResponseSchema,
  type ConversationCursor,
  type PrekeysLowFrame,
  type PresenceFrame,
  type ReceiptFrame,
  type TypingEventFrame,
} from "../../gen/switchboard/v1/gateway_pb.js";
import type { Principal } from "../common/auth.js";
import { newId } from "../common/ids.js";
import { TokenBucket } from "../common/rate-limit/token-bucket.js";
import { endSpan, injectContext, ROOT_CONTEXT, SpanKind, startSpan } from "../common/telemetry.js";
import { requireClientMsgId, requireId } from "../common/validate.js";
import { encodedSizeBound } from "../common/wire-size.js";
import { entryForDevice, mismatchOf } from "./device-set.js";
import { Outbound } from "./outbound.js";
import type { SessionHost } from "./types.js";

/** Entries per message frame, so frames stay small (their bytes are bounded by maxPageBytes). */
const FRAME_ENTRIES = 64;
const CURSORS_PER_FRAME = 256;
const HISTORY_PAGE = 256;

/** What the stream has pushed of one conversation. */
interface ConversationProgress {
  /** Every entry up to this seq has been queued to the device. */
  pushed: bigint;
  /** Entries up to this seq are known to exist and must be pushed. */
  target: bigint;
  /** The running catch-up from the log, if any. */
  running: Promise<number> | undefined;
}

function frame(value: ConnectResponse["frame"]): ConnectResponse {
  return create(ConnectResponseSchema, { frame: value });
}

/**
 * Splits entries into frames of at most FRAME_ENTRIES entries and maxBytes of encoded entries
 * (one entry at least).
 */
function chunks(entries: Entry[], maxBytes: number): Entry[][] {
  const out: Entry[][] = [];
  let current: Entry[] = [];
  let bytes = 0;
  for (const e of entries) {
    const size = encodedSizeBound(e);
    if (current.length >= FRAME_ENTRIES || (current.length > 0 && bytes + size > maxBytes)) {
      out.push(current);
      current = [];
      bytes = 0;
    }
    current.push(e);
    bytes += size;
  }
  if (current.length > 0) out.push(current);
  return out;
}

/**
 * The longest prefix of a page whose encoded entries stay within maxBytes (one entry at least),
 * and whether entries were cut: the sequencer bounds its pages already, this holds the bound
 * against one that does not (an older replica during an upgrade).
 */
export function boundPage(entries: Entry[], maxBytes: number): { entries: Entry[]; cut: boolean } {
  let bytes = 0;
  for (let i = 0; i < entries.length; i++) {
    bytes += encodedSizeBound(entries[i]!);
    if (i > 0 && bytes > maxBytes) return { entries: entries.slice(0, i), cut: true };
  }
  return { entries, cut: false };
}

/** True when the entry takes the principal's user out of the conversation. */
function removesUser(entry: Entry, userId: string): boolean {
  const body = entry.body;
  if (body.case !== "membership") return false;
  if (body.value.action === MembershipAction.LEFT) return entry.senderUserId === userId;
  return body.value.action === MembershipAction.REMOVED && body.value.userIds.includes(userId);
}

/**
 * One device stream. Entries reach the device in seq order per conversation: a live entry that
 * follows what was pushed goes straight out; anything else (a gap, a full queue, a conversation
 * the stream has not seen yet) is fetched from the log instead, one page at a time, so a slow
 * device costs a bounded queue and a cursor, never unbounded memory.
 */
export class Session {
  readonly id = newId("s");
  readonly outbound: Outbound;
  readonly openedAtMs: number;
  readonly subscriptions = new Set<string>();
  private readonly progress = new Map<string, ConversationProgress>();
  // Live entries that arrived before the sync state was read: their conversations catch up after.
  private readonly early = new Map<string, bigint>();
  private syncLoaded = false;
  private sendsInFlight = 0;
  private readonly frames: TokenBucket;
  /** Sends waiting for an asynchronous rate-limit answer, in frame order. */
  private rateChain: Promise<void> = Promise.resolve();
  /** Sends waiting for (or queued behind) a device-set check, in frame order. */
  private checkChain: Promise<void> = Promise.resolve();
  private checksPending = 0;
  private closed = false;
  private idle: (() => void) | undefined;
  /** Reads of the log (catch-up pages and sync pages) run one at a time, each behind the last. */
  private logReads: Promise<void> = Promise.resolve();
  /** Sync requests being answered or waiting to be. */
  private syncsPending = 0;

  constructor(
    readonly principal: Principal,
    private readonly core: SessionHost<Session>,
  ) {
    const { limits } = core;
    this.outbound = new Outbound(
      {
        frames: limits.outboundQueueFrames,
        bytes: limits.outboundQueueBytes,
        frameBytes: limits.maxPageBytes,
        frameEntries: FRAME_ENTRIES,
        stallMs: limits.outboundStallMs,
      },
      () =>
        this.notReading(
          "stream_stalled",
          `the device has not read its stream for ${limits.outboundStallMs} ms while frames wait; reconnect`,
        ),
    );
    this.openedAtMs = core.now();
    this.frames = new TokenBucket(limits.framesPerSecond, limits.frameBurst, this.openedAtMs);
  }

  get userId(): string {
    return this.principal.userId;
  }

  get deviceId(): string {
    return this.principal.deviceId;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Sends ready, starts reading the device's frames and pushes its backlog. */
  start(requests: AsyncIterable<ConnectRequest>): void {
    const { limits } = this.core;
    this.answer(
      frame({
        case: "ready",
        value: {
          $typeName: "switchboard.v1.ReadyFrame",
          userId: this.userId,
          deviceId: this.deviceId,
          sessionId: this.id,
          serverTimeMs: BigInt(this.core.now()),
          limits: {
            $typeName: "switchboard.v1.StreamLimits",
            maxPayloadBytes: limits.maxPayloadBytes,
            maxSendsInFlight: limits.maxSendsInFlight,
            sendsPerSecond: limits.sendsPerSecond,
            sendBurst: limits.sendBurst,
          },
        },
      }),
    );
    void this.readLoop(requests);
    void this.initialSync();
  }

  /**
   * Ends the stream. With an error the device gets that status after the frames already queued;
   * without one the stream ends cleanly.
   */
  close(error?: ConnectError): void {
    if (this.closed) return;
    this.closed = true;
    this.outbound.end(error);
    this.core.detach(this);
  }

  /**
   * Queues an answer to the device's own request. A device whose queue is full even for those
   * (twice the outbound bounds) is not reading: its stream ends with RESOURCE_EXHAUSTED and
   * what was queued for it is dropped, so it holds no more memory.
   */
  private answer(f: ConnectResponse): void {
    if (this.closed || this.outbound.force(f)) return;
    const { limits } = this.core;
    this.notReading(
      "stream_not_reading",
      `the device does not read its stream: ${this.outbound.size} frames, ${this.outbound.bytes} bytes queued ` +
        `(at most ${limits.outboundQueueFrames} frames, ${limits.outboundQueueBytes} bytes, and as ` +
        "much again for answers)",
    );
  }

  /** Ends a stream whose device does not read: drops its queue, RESOURCE_EXHAUSTED, counted. */
  private notReading(reason: string, message: string): void {
    if (this.closed) return;
    this.closed = true;
    this.core.refused(reason, "stream ended: the device does not read its frames", {
      userId: this.userId,
      deviceId: this.deviceId,
      sessionId: this.id,
      queuedFrames: this.outbound.size,
      queuedBytes: this.outbound.bytes,
    });
    this.outbound.abort(new ConnectError(message, Code.ResourceExhausted));
    this.core.detach(this);
  }

  /** Runs a read of the log after every earlier one has finished (one at a time per stream). */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.logReads.then(fn);
    this.logReads = run.then(
      () => {},
      () => {},
    );
    return run;
  }

  /** A committed entry from fanout. */
  deliverEntry(entry: Entry): void {
    if (this.closed) return;
    const id = entry.conversationId;
    if (!this.syncLoaded) {
      const seen = this.early.get(id) ?? 0n;
      if (entry.seq > seen) this.early.set(id, entry.seq);
      return;
    }
    let p = this.progress.get(id);
    if (p === undefined) {
      // A conversation this stream has not seen: the user joined it after the stream opened.
      // The log (which starts at the user's join) is the only safe source for it.
      p = { pushed: 0n, target: 0n, running: undefined };
      this.progress.set(id, p);
    }
    if (entry.seq <= p.pushed) return;
    if (
      p.running === undefined &&
      entry.seq === p.pushed + 1n &&
      this.offerEntries([entryForDevice(entry, this.deviceId)])
    ) {
      p.pushed = entry.seq;
      if (p.target < p.pushed) p.target = p.pushed;
      if (removesUser(entry, this.userId)) this.progress.delete(id);
      return;
    }
    if (entry.seq > p.target) p.target = entry.seq;
    this.catchUp(id, p);
  }

  /** A receipt, typing indicator or presence change: dropped if the device is behind. */
  deliverEvent(value: ConnectResponse["frame"]): void {
    if (this.closed) return;
    if (!this.outbound.offer(frame(value))) this.core.metrics.droppedEvents++;
  }

  deliverReceipt(receipt: ReceiptFrame): void {
    this.deliverEvent({ case: "receipt", value: receipt });
  }

  deliverTyping(typing: TypingEventFrame): void {
    // The user's other devices show it; the device that is typing knows already.
    if (typing.deviceId === this.deviceId) return;
    this.deliverEvent({ case: "typing", value: typing });
  }

  deliverPresence(presence: PresenceFrame): void {
    this.deliverEvent({ case: "presence", value: presence });
  }

  /** Tells the device to upload more one-time prekeys; droppable, as it also asks on connect. */
  deliverPrekeysLow(notice: PrekeysLowFrame): void {
    this.deliverEvent({ case: "prekeysLow", value: notice });
  }

  private offerEntries(entries: Entry[]): boolean {
    return this.outbound.offerEntries(entries);
  }

  private async initialSync(): Promise<void> {
    try {
      await this.core.register(this);
      const state = await this.core.sequencer.getSyncState({ userId: this.userId, deviceId: this.deviceId });
      for (const c of state.conversations) {
        const floor = c.joinedSeq > 0n ? c.joinedSeq - 1n : 0n;
        const pushed = c.deliveredUpTo > floor ? c.deliveredUpTo : floor;
        this.progress.set(c.conversationId, { pushed, target: c.lastSeq, running: undefined });
      }
      this.syncLoaded = true;
      for (const [id, seq] of this.early) {
        const p = this.progress.get(id) ?? { pushed: 0n, target: 0n, running: undefined };
        if (seq > p.target) p.target = seq;
        this.progress.set(id, p);
      }
      this.early.clear();
      let entries = 0;
      for (const [id, p] of [...this.progress]) {
        if (this.closed) return;
        if (p.target > p.pushed || p.running !== undefined) {
          this.catchUp(id, p);
          entries += (await p.running) ?? 0;
        }
      }
      this.answer(
        frame({
          case: "caughtUp",
          value: { $typeName: "switchboard.v1.CaughtUpFrame", entries: BigInt(entries) },
        }),
      );
    } catch (err) {
      this.core.log.warn({ err, sessionId: this.id }, "initial sync failed");
      this.close(
        new ConnectError("could not read the device's pending entries; reconnect", Code.Unavailable),
      );
    }
  }

  private catchUp(conversationId: string, p: ConversationProgress): void {
    if (p.running !== undefined) return;
    p.running = this.fetchFromLog(conversationId, p).finally(() => {
      p.running = undefined;
    });
  }

  /**
   * Pushes entries from the log until the conversation's target is reached. Each page is read
   * only once the queue has room for it, and reads of the log run one at a time per stream, so
   * a device that does not read holds its queue and nothing more.
   */
  private async fetchFromLog(conversationId: string, p: ConversationProgress): Promise<number> {
    let pushed = 0;
    let failures = 0;
    while (!this.closed && p.pushed < p.target) {
      let step: { pushed: number; done: boolean };
      try {
        step = await this.exclusive(() => this.pushPage(conversationId, p));
      } catch (err) {
        const e = ConnectError.from(err);
        if (e.code === Code.PermissionDenied || e.code === Code.NotFound) {
          // No longer (or never) a member: nothing of this conversation is for this device.
          this.progress.delete(conversationId);
          return pushed;
        }
        if (++failures > 5) {
          this.close(new ConnectError("could not read the log; reconnect", Code.Unavailable));
          return pushed;
        }
        await new Promise((r) => setTimeout(r, 100 * 2 ** failures));
        continue;
      }
      failures = 0;
      pushed += step.pushed;
      if (step.done) break;
    }
    return pushed;
  }

  /**
   * Reads one page of a conversation's log once the queue has room for it and queues it as
   * message frames; runs inside exclusive(), so the stream holds at most one page beyond its
   * queue.
   */
  private async pushPage(
    conversationId: string,
    p: ConversationProgress,
  ): Promise<{ pushed: number; done: boolean }> {
    const { maxPageBytes } = this.core.limits;
    await this.outbound.space(maxPageBytes);
    if (this.closed) return { pushed: 0, done: true };
    const page = await this.readPage(conversationId, p.pushed, HISTORY_PAGE);
    if (page.entries.length === 0) {
      p.target = p.pushed;
      return { pushed: 0, done: true };
    }
    let pushed = 0;
    const own = page.entries.map((e) => entryForDevice(e, this.deviceId));
    for (const chunk of chunks(own, maxPageBytes)) {
      const queued = await this.outbound.put(
        frame({ case: "message", value: { $typeName: "switchboard.v1.MessageFrame", entries: chunk } }),
      );
      if (!queued || this.closed) return { pushed, done: true };
      p.pushed = chunk[chunk.length - 1]!.seq;
      pushed += chunk.length;
      if (chunk.some((e) => removesUser(e, this.userId))) {
        this.progress.delete(conversationId);
        return { pushed, done: true };
      }
    }
    if (page.lastSeq > p.target) p.target = page.lastSeq;
    return { pushed, done: false };
  }

  /** A page of the log for this user, at most maxPageBytes of entries. */
  private async readPage(conversationId: string, afterSeq: bigint, limit: number) {
    const maxBytes = this.core.limits.maxPageBytes;
    const page = await this.core.sequencer.getHistory({
      userId: this.userId,
      deviceId: this.deviceId,
      conversationId,
      afterSeq,
      limit,
      maxBytes,
    });
    const bounded = boundPage(page.entries, maxBytes);
    return { entries: bounded.entries, lastSeq: page.lastSeq, hasMore: page.hasMore || bounded.cut };
  }

  private async readLoop(requests: AsyncIterable<ConnectRequest>): Promise<void> {
    try {
      for await (const request of requests) {
        if (this.closed) return;
        const wait = this.frames.take(this.core.now());
        if (wait > 0) {
          this.core.metrics.floodClosures++;
          this.close(
            new ConnectError(
              `too many frames: at most ${this.core.limits.framesPerSecond} per second (burst ${this.core.limits.frameBurst})`,
              Code.ResourceExhausted,
            ),
          );
          return;
        }
        this.handle(request);
      }
      // The device half-closed: answer what it sent, then end cleanly.
      while (this.sendsInFlight > 0 && !this.closed) await new Promise<void>((r) => (this.idle = r));
      this.close();
    } catch (err) {
      const e = ConnectError.from(err);
      if (e.code === Code.ResourceExhausted) {
        this.close(new ConnectError(`frame too large: ${e.rawMessage}`, Code.ResourceExhausted));
      } else if (e.code === Code.InvalidArgument || e.code === Code.Internal) {
        this.close(new ConnectError(`malformed frame: ${e.rawMessage}`, Code.InvalidArgument));
      } else {
        this.close();
      }
    }
  }

  private handle(request: ConnectRequest): void {
    const f = request.frame;
    switch (f.case) {
      case "send":
        this.onSend(f.value);
        return;
      case "ack":
        this.onCursors("ack", f.value.cursors, false);
        return;
      case "read":
        this.onCursors("read", f.value.cursors, true);
        return;
      case "typing":
        this.onTyping(f.value.conversationId, f.value.active);
        return;
      case "presenceSubscribe":
        void this.onPresence(f.value.subscribeUserIds, f.value.unsubscribeUserIds);
        return;
      case "syncRequest":
        this.onSync(f.value.requestId, f.value.conversationId, f.value.afterSeq, f.value.limit);
        return;
      case "ping":
        this.answer(
          frame({
            case: "pong",
            value: {
              $typeName: "switchboard.v1.PongFrame",
              nonce: f.value.nonce,
              serverTimeMs: BigInt(this.core.now()),
            },
          }),
        );
        return;
      default:
        // A frame from a newer protocol version, or an empty one: refuse it, keep the stream.
        this.refuse("unknown", Code.InvalidArgument, "empty frame or a frame type this server does not know");
    }
  }

  private refuse(frameName: string, code: Code, message: string): void {
    this.answer(
      frame({
        case: "error",
        value: { $typeName: "switchboard.v1.FrameErrorFrame", frame: frameName, code, message },
      }),
    );
  }

  private sendError(entry: OutgoingEntry, error: ConnectError, retryAfterMs = 0): void {
    this.answer(
      frame({
        case: "sendError",
        value: {
          $typeName: "switchboard.v1.SendErrorFrame",
          clientMsgId: entry.clientMsgId,
          conversationId: entry.conversationId,
          code: error.code,
          message: error.rawMessage,
          retryAfterMs,
          mismatch: mismatchOf(error),
        },
      }),
    );
  }

  private onSend(entry: OutgoingEntry): void {
    const { limits } = this.core;
    try {
      requireClientMsgId(entry.clientMsgId);
      requireId("conversation_id", entry.conversationId, "conversation");
      this.core.checkEntrySize(entry);
    } catch (err) {
      this.sendError(entry, ConnectError.from(err));
      return;
    }
    if (this.sendsInFlight >= limits.maxSendsInFlight) {
      this.core.metrics.rejectedInFlight++;
      this.sendError(
        entry,
        new ConnectError(
          `too many sends in flight: at most ${limits.maxSendsInFlight} per stream`,
          Code.ResourceExhausted,
        ),
        50,
      );
      return;
    }
    // Counted from here, so the in-flight bound also covers sends waiting for the rate limiter.
    this.sendsInFlight++;
    const receivedAt = performance.now();
    const wait = this.core.takeSendToken(this.deviceId);
    if (typeof wait === "number") {
      this.afterRateLimit(entry, wait, receivedAt);
      return;
    }
    // A shared (Redis) limiter answers asynchronously; chaining keeps this stream's sends in the
    // order the device sent them, so they are sequenced in that order.
    this.rateChain = this.rateChain.then(async () => {
      let w: number;
      try {
        w = await wait;
      } catch {
        w = 0; // The limiter fails open; a broken limiter must not stop messaging.
      }
      this.afterRateLimit(entry, w, receivedAt);
    });
  }

  private afterRateLimit(entry: OutgoingEntry, wait: number, receivedAt: number): void {
    const { limits } = this.core;
    if (wait > 0) {
      this.core.metrics.rejectedRate++;
      this.sendError(
        entry,
        new ConnectError(
          `send rate limit: at most ${limits.sendsPerSecond} per second per device (burst ${limits.sendBurst})`,
          Code.ResourceExhausted,
        ),
        wait,
      );
      this.sendDone();
      return;
    }
    const check = this.core.devices.check(this.principal, entry);
    if (check === undefined && this.checksPending === 0) {
      this.append(entry, receivedAt);
      return;
    }
    // A send with device payloads waits for its device-set check (checks run concurrently);
    // every later send of this stream queues behind it, so sends reach the sequencer in frame
    // order.
    check?.catch(() => {});
    this.checksPending++;
    this.checkChain = this.checkChain
      .then(() => check ?? entry)
      .then(
        (checked) => this.append(checked, receivedAt),
        (err: unknown) => {
          const e = ConnectError.from(err);
          this.core.observe.sendAck((performance.now() - receivedAt) / 1000, "error");
          this.sendError(entry, e, e.code === Code.Unavailable ? 500 : 0);
          this.sendDone();
        },
      )
      .finally(() => {
        this.checksPending--;
      });
  }

  private append(entry: OutgoingEntry, receivedAt: number): void {
    // A send starts its own trace: the stream it arrived on lives far longer than one message.
    const { span, ctx } = startSpan("gateway.send", ROOT_CONTEXT, {
      kind: SpanKind.SERVER,
      attributes: {
        "switchboard.conversation_id": entry.conversationId,
        "switchboard.instance": this.core.id,
      },
    });
    this.core.sends
      .append(this.userId, this.deviceId, entry, injectContext(ctx))
      .then(
        (r) => {
          this.core.observe.sendAck((performance.now() - receivedAt) / 1000, "ok");
          span.setAttribute("switchboard.seq", Number(r.seq));
          endSpan(span);
          this.answer(
            frame({
              case: "sendAck",
              value: {
                $typeName: "switchboard.v1.SendAckFrame",
                clientMsgId: entry.clientMsgId,
                conversationId: entry.conversationId,
                seq: r.seq,
                serverTimeMs: r.serverTimeMs,
              },
            }),
          );
        },
        (err: unknown) => {
          const e = ConnectError.from(err);
          this.core.observe.sendAck((performance.now() - receivedAt) / 1000, "error");
          endSpan(span, e);
          this.sendError(entry, e, e.code === Code.Unavailable ? 500 : 0);
        },
      )
      .finally(() => this.sendDone());
  }

  private sendDone(): void {
    this.sendsInFlight--;
    if (this.sendsInFlight === 0) this.idle?.();
  }

  private onCursors(name: "ack" | "read", cursors: ConversationCursor[], read: boolean): void {
    if (cursors.length > CURSORS_PER_FRAME) {
      this.refuse(
        name,
        Code.InvalidArgument,
        `at most ${CURSORS_PER_FRAME} cursors per frame, got ${cursors.length}`,
      );
      return;
    }
    for (const c of cursors) {
      try {
        requireId("conversation_id", c.conversationId, "conversation");
      } catch (err) {
        this.refuse(name, Code.InvalidArgument, ConnectError.from(err).rawMessage);
        continue;
      }
      this.core.cursors.add(this.userId, this.deviceId, c.conversationId, c.seq, read ? c.seq : 0n);
    }
  }

  private onTyping(conversationId: string, active: boolean): void {
    try {
      requireId("conversation_id", conversationId, "conversation");
    } catch (err) {
      this.refuse("typing", Code.InvalidArgument, ConnectError.from(err).rawMessage);
      return;
    }
    this.core.sequencer
      .relayTyping({ userId: this.userId, deviceId: this.deviceId, conversationId, active })
      .catch((err: unknown) => {
        const e = ConnectError.from(err);
        this.refuse("typing", e.code, e.rawMessage);
      });
  }

  private async onPresence(subscribe: string[], unsubscribe: string[]): Promise<void> {
    const ids = [...subscribe, ...unsubscribe];
    if (ids.some((id) => !/^u_[0-9a-z]{26}$/.test(id))) {
      this.refuse("presence_subscribe", Code.InvalidArgument, "user ids must be user ids (u_...)");
      return;
    }
    for (const id of unsubscribe) this.core.unsubscribePresence(this, id);
    const wanted = [...new Set(subscribe)].filter((id) => !this.subscriptions.has(id));
    if (wanted.length === 0) return;
    const max = this.core.limits.maxPresenceSubscriptions;
    if (this.subscriptions.size + wanted.length > max) {
      this.refuse(
        "presence_subscribe",
        Code.ResourceExhausted,
        `at most ${max} presence subscriptions per stream`,
      );
      return;
    }
    try {
      const { contactUserIds } = await this.core.sequencer.findContacts({
        userId: this.userId,
        peerUserIds: wanted,
      });
      const refused = wanted.filter((id) => !contactUserIds.includes(id));
      if (refused.length > 0) {
        this.refuse(
          "presence_subscribe",
          Code.PermissionDenied,
          `presence is visible only for users you share a conversation with: ${refused.join(", ")}`,
        );
      }
      if (contactUserIds.length === 0 || this.closed) return;
      for (const id of contactUserIds) this.core.subscribePresence(this, id);
      const { presence } = await this.core.presence.getPresence({ userIds: contactUserIds });
      for (const p of presence) this.deliverPresence(p);
    } catch (err) {
      const e = ConnectError.from(err);
      this.refuse("presence_subscribe", e.code, e.rawMessage);
    }
  }

  /**
   * Answers a sync request. Requests are answered one at a time, in order, each page read only
   * once the queue has room for it; up to maxQueuedSyncRequests wait behind the one being
   * answered, and one more is refused at once (RESOURCE_EXHAUSTED on its request id).
   */
  private onSync(requestId: number, conversationId: string, afterSeq: bigint, limit: number): void {
    const page = {
      $typeName: "switchboard.v1.SyncPageFrame" as const,
      requestId,
      conversationId,
      entries: [] as Entry[],
      lastSeq: 0n,
      hasMore: false,
      errorCode: 0,
      errorMessage: "",
    };
    const max = this.core.limits.maxQueuedSyncRequests;
    if (this.syncsPending > max) {
      this.core.refused("sync_requests_queued", "sync request refused: too many waiting on one stream", {
        userId: this.userId,
        deviceId: this.deviceId,
        sessionId: this.id,
      });
      page.errorCode = Code.ResourceExhausted;
      page.errorMessage = `too many sync requests: one is answered at a time and at most ${max} wait behind it; send the next when a page arrives`;
      this.answer(frame({ case: "syncPage", value: page }));
      return;
    }
    this.syncsPending++;
    void this.exclusive(async () => {
      try {
        requireId("conversation_id", conversationId, "conversation");
        if (limit > 1000) throw new ConnectError("limit: at most 1000", Code.InvalidArgument);
        await this.outbound.space(this.core.limits.maxPageBytes);
        if (this.closed) return;
        const history = await this.readPage(conversationId, afterSeq, limit);
        page.entries = history.entries.map((e) => entryForDevice(e, this.deviceId));
        page.lastSeq = history.lastSeq;
        page.hasMore = history.hasMore;
      } catch (err) {
        const e = ConnectError.from(err);
        page.errorCode = e.code;
        page.errorMessage = e.rawMessage;
      }
      await this.outbound.put(frame({ case: "syncPage", value: page }));
    }).finally(() => {
      this.syncsPending--;
    });
  }
}
