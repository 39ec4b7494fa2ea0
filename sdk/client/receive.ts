import { ConnectError } from "@connectrpc/connect";
import {
  type ConnectResponse,
  type FrameErrorFrame,
  type PrekeysLowFrame,
  type ReadyFrame,
  type ReceiptFrame,
  ReceiptKind,
  type SyncPageFrame,
  type TypingEventFrame,
} from "../../gen/switchboard/v1/gateway_pb.js";
import type { ReorderBuffer } from "../reorder.js";
import type { Acks } from "./acks.js";
import type { Calls } from "./calls.js";
import type { ClientContext } from "./context.js";
import type { Delivery } from "./delivery.js";
import type { SendQueue } from "./outbox.js";
import type { Presence } from "./presence.js";
import type { ActiveStream, StreamLoop } from "./stream.js";

/** The parts of the client the frames from the server go to. */
export interface ReceiverParts {
  stream: StreamLoop;
  presence: Presence;
  acks: Acks;
  queue: SendQueue;
  delivery: Delivery;
  /** Call signalling. */
  calls: Calls;
  /** Set once the reorder buffer exists (it asks this receiver for syncs). */
  reorder: () => ReorderBuffer;
}

/**
 * The frames from the server, one small handler per kind: entries go through the reorder buffer to
 * the app, sync pages answer our sync requests, send answers settle sends, the rest become events.
 */
export class Receiver {
  private nextRequestId = 1;

  constructor(
    private readonly ctx: ClientContext,
    private readonly parts: ReceiverParts,
  ) {}

  /** One frame on stream s. */
  handle(s: ActiveStream, res: ConnectResponse): void {
    const frame = res.frame;
    switch (frame.case) {
      case "ready":
        this.ready(s, frame.value);
        return;
      case "prekeysLow":
        this.prekeysLow(frame.value);
        return;
      case "blocksChanged":
        this.ctx.events.emit("blocksChanged", {});
        return;
      case "privacyChanged":
        this.ctx.events.emit("privacyChanged", {});
        return;
      case "message":
        if (this.ctx.closed) return;
        this.parts.delivery.deliver(this.parts.reorder().offer(frame.value.entries));
        return;
      case "syncPage":
        this.syncPage(s, frame.value);
        return;
      case "caughtUp": {
        const { entries, expiredEntries } = frame.value;
        // After the app has seen the backlog, so "caughtUp" means what it says.
        this.parts.delivery.after(() => {
          this.parts.reorder().resume();
          this.ctx.events.emit("caughtUp", { entries, expiredEntries });
        });
        return;
      }
      case "sendAck": {
        const own = this.parts.queue.acked(frame.value);
        // In the conversation's order, like any entry: an entry before it may still be on its way
        // (in a conversation new to this device, even its first ones: reorder.offerOwn).
        if (own !== undefined && !this.ctx.closed)
          this.parts.delivery.deliver(this.parts.reorder().offerOwn(own));
        return;
      }
      case "sendError":
        this.parts.queue.refused(frame.value);
        return;
      case "receipt":
        this.receipt(frame.value);
        return;
      case "receipts":
        for (const r of frame.value.receipts) this.receipt(r);
        return;
      case "typing":
        this.typing(frame.value);
        return;
      case "presence":
        this.ctx.events.emit("presence", {
          userId: frame.value.userId,
          online: frame.value.online,
          lastSeenMs: frame.value.lastSeenMs,
        });
        return;
      case "error":
        this.serverError(frame.value);
        return;
      case "call":
        if (!this.ctx.closed) void this.parts.calls.receive(frame.value);
        return;
      case "pong":
      case undefined:
        return;
    }
  }

  /** Asks the server for entries of a conversation after a seq (a gap, or a resync). */
  requestSync(conversationId: string, afterSeq: bigint, limit: number): void {
    const s = this.parts.stream.ready;
    if (s === undefined) return;
    const requestId = this.nextRequestId;
    this.nextRequestId = this.nextRequestId >= 0xffffffff ? 1 : this.nextRequestId + 1;
    s.syncRequests.set(requestId, { conversationId, afterSeq });
    this.parts.stream.push(s, { case: "syncRequest", value: { requestId, conversationId, afterSeq, limit } });
  }

  private ready(s: ActiveStream, ready: ReadyFrame): void {
    const { stream, presence, acks, queue } = this.parts;
    const limits = ready.limits;
    stream.accepted(s);
    // Before any send: this client files its own sends at send_ack (outbox.ts), so the server
    // need not push them back, and takes receipts in batches.
    stream.push(s, { case: "options", value: { omitOwnSends: true, batchReceipts: true } });
    this.ctx.limits = limits;
    // The deployment's stream port (or none), for the streams this client opens from now on, and
    // kept in the profile for the first stream after a restart. A failed write only means that
    // stream opens on the server URL, as before the port was named.
    this.ctx.conn.adoptStreamUrl(ready.streamUrl);
    void this.ctx.profile
      .rememberStreamUrl(this.ctx.conn.learnedStreamUrl)
      .catch((err) => this.ctx.events.reportError(err));
    this.ctx.events.emit("connected", {
      sessionId: ready.sessionId,
      limits: {
        maxPayloadBytes: limits?.maxPayloadBytes ?? 0,
        maxSendsInFlight: limits?.maxSendsInFlight ?? 0,
        sendsPerSecond: limits?.sendsPerSecond ?? 0,
        sendBurst: limits?.sendBurst ?? 0,
      },
    });
    stream.resolveFirst();
    presence.resubscribe(s);
    void acks.flush().catch(() => {});
    queue.pump();
    // Uploads the first keys, or tops up one-time prekeys (a prekeys_low notice is sent only
    // to devices online at that moment).
    this.ctx.e2ee?.ensureKeys().catch((err: unknown) => this.ctx.backgroundFailed(err));
  }

  private prekeysLow(notice: PrekeysLowFrame): void {
    this.ctx.e2ee
      ?.replenish({
        oneTimeEcPrekeys: notice.oneTimeEcRemaining,
        oneTimeKyberPrekeys: notice.oneTimeKyberRemaining,
      })
      .catch((err: unknown) => this.ctx.backgroundFailed(err));
  }

  private syncPage(s: ActiveStream, page: SyncPageFrame): void {
    const request = s.syncRequests.get(page.requestId);
    if (request === undefined || this.ctx.closed) return;
    s.syncRequests.delete(page.requestId);
    this.parts.delivery.deliver(
      this.parts.reorder().answer({
        conversationId: request.conversationId,
        afterSeq: request.afterSeq,
        entries: page.entries,
        lastSeq: page.lastSeq,
        hasMore: page.hasMore,
        errorCode: page.errorCode,
      }),
    );
    if (page.errorCode !== 0) {
      this.ctx.events.emit("error", {
        error: new ConnectError(`sync of ${request.conversationId}: ${page.errorMessage}`, page.errorCode),
        fatal: false,
      });
    }
  }

  private receipt(r: ReceiptFrame): void {
    if (r.kind !== ReceiptKind.DELIVERED && r.kind !== ReceiptKind.READ) return;
    this.ctx.events.emit("receipt", {
      conversationId: r.conversationId,
      userId: r.userId,
      kind: r.kind === ReceiptKind.READ ? "read" : "delivered",
      upToSeq: r.upToSeq,
      timeMs: r.timeMs,
      rawKind: r.kind,
    });
  }

  private typing(t: TypingEventFrame): void {
    // The server relays a device's own indicator back to it; that is never news.
    if (t.deviceId === this.ctx.deviceId) return;
    this.ctx.events.emit("typing", {
      conversationId: t.conversationId,
      userId: t.userId,
      deviceId: t.deviceId,
      active: t.active,
    });
  }

  private serverError(e: FrameErrorFrame): void {
    this.ctx.events.emit("error", {
      error: new ConnectError(`server refused a ${e.frame} frame: ${e.message}`, e.code),
      fatal: false,
    });
  }
}
