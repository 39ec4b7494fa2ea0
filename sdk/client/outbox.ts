import { create, fromBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { type Entry, type OutgoingEntry, OutgoingEntrySchema } from "../../gen/switchboard/v1/entry_pb.js";
import type { DeviceMismatch, SendAckFrame, SendErrorFrame } from "../../gen/switchboard/v1/gateway_pb.js";
import { MAX_MISMATCH_RETRIES, type SealedPart } from "../e2ee.js";
import type { OutboxItem, SendResult } from "../types.js";
import { newClientMsgId, type OutgoingBody, outboxEncoding } from "./bodies.js";
import { SendWindow } from "./congestion.js";
import type { ClientContext } from "./context.js";
import { ownEntry } from "./own-entry.js";
import type { StreamLoop } from "./stream.js";

const DEFAULT_MAX_IN_FLIGHT = 64;

/** One send from the app until the server answers it. */
export interface PendingSend {
  item: OutboxItem;
  outgoing: OutgoingEntry;
  /** sealing: the plaintext intent is (being) written to the outbox and waits to be encrypted;
   * persisting: being written to the outbox; queued: waiting for a slot; inflight: sent on the
   * current stream; waiting: retrying after the server asked us to. */
  state: "sealing" | "persisting" | "queued" | "inflight" | "waiting";
  /** An encrypted send's sealing is on the sealing chain (or on a timer after a transient failure). */
  sealScheduled?: boolean;
  retries: number;
  /** Re-encryptions after refusals for mismatched devices. */
  mismatchRetries: number;
  /** Group sends: the devices this send hands our sender key to (not kept across restarts). */
  distributed?: SealedPart["distributed"];
  timer: NodeJS.Timeout | undefined;
  promise: Promise<SendResult>;
  resolve(result: SendResult): void;
  reject(error: ConnectError): void;
}

/**
 * The sends in the profile's outbox, in the order the app made them: written before they leave,
 * put on the stream up to the server's in-flight limit, retried with the same idempotency key
 * when the server asks, settled by its answer.
 */
export class SendQueue {
  /** In order: a Map iterates in insertion order, and sends leave in that order. */
  readonly sends = new Map<string, PendingSend>();
  /** Sends this client lets be in flight, within the server's max_sends_in_flight (congestion.ts). */
  private readonly window = new SendWindow();

  constructor(
    private readonly ctx: ClientContext,
    private readonly stream: StreamLoop,
    /** A refusal for mismatched devices of an encrypted send: encrypt again (Sealer.reencrypt). */
    private readonly mismatched: (p: PendingSend, mismatch: DeviceMismatch) => void,
  ) {}

  /** Sends not yet answered by the server. */
  pending(): Array<{ clientMsgId: string; conversationId: string }> {
    return [...this.sends.values()].map((p) => ({
      clientMsgId: p.item.clientMsgId,
      conversationId: p.item.conversationId,
    }));
  }

  /** Writes a send to the outbox and queues it; a send with a known clientMsgId is that send. */
  async enqueue(
    conversationId: string,
    body: OutgoingBody,
    clientMsgId: string = newClientMsgId(),
    plaintext?: Uint8Array,
  ): Promise<SendResult> {
    if (this.ctx.closed) throw this.ctx.closedError();
    const existing = this.sends.get(clientMsgId);
    if (existing !== undefined) return existing.promise;
    const outgoing = create(OutgoingEntrySchema, { clientMsgId, conversationId, body });
    const item: OutboxItem = {
      clientMsgId,
      conversationId,
      outgoing: outboxEncoding(outgoing),
      createdAtMs: Date.now(),
      ...(plaintext !== undefined && { plaintext: Buffer.from(plaintext).toString("base64") }),
    };
    const pending = await this.add(item, outgoing, "persisting");
    if (pending.state === "persisting") pending.state = "queued";
    this.pump();
    return pending.promise;
  }

  /** Registers a new send and writes it to the outbox; a failed write forgets it again. */
  async add(item: OutboxItem, outgoing: OutgoingEntry, state: PendingSend["state"]): Promise<PendingSend> {
    const pending = newPending(item, outgoing, state);
    // Registered before the write so that sends leave in the order the app made them.
    this.sends.set(item.clientMsgId, pending);
    try {
      await this.ctx.profile.addToOutbox(item);
    } catch (err) {
      this.sends.delete(item.clientMsgId);
      throw ConnectError.from(err, Code.Internal);
    }
    return pending;
  }

  /** Takes a send of an earlier run back from the outbox. */
  restore(item: OutboxItem): void {
    let outgoing: OutgoingEntry;
    try {
      outgoing = fromBinary(OutgoingEntrySchema, Buffer.from(item.outgoing, "base64"));
    } catch {
      void this.ctx.profile.removeFromOutbox(item.clientMsgId).catch(() => {});
      return;
    }
    if (item.sealed === false && this.ctx.e2ee === undefined) return; // kept for an encrypted open
    const pending = newPending(item, outgoing, item.sealed === false ? "sealing" : "queued");
    // Nobody awaits a send from a previous run; its outcome arrives as "sent" or "sendFailed".
    pending.promise.catch(() => {});
    this.sends.set(item.clientMsgId, pending);
  }

  /** Puts queued sends on the stream, up to the server's in-flight limit. */
  pump(): void {
    const s = this.stream.ready;
    if (s === undefined) return;
    const limit = this.window.limit(this.maxInFlight());
    let inFlight = 0;
    for (const p of this.sends.values()) if (p.state === "inflight") inFlight += 1;
    // Conversations with a send waiting out a retry: their later sends wait behind it, so a
    // retried send is not overtaken (other conversations go on).
    let held: Set<string> | undefined;
    for (const p of this.sends.values()) {
      if (inFlight >= limit) return;
      // Sends leave in order: nothing overtakes one still being encrypted or written.
      if (p.state === "sealing" || p.state === "persisting") return;
      if (p.state === "waiting") {
        held ??= new Set();
        held.add(p.item.conversationId);
        continue;
      }
      if (p.state !== "queued" || held?.has(p.item.conversationId)) continue;
      p.state = "inflight";
      inFlight += 1;
      this.stream.push(s, { case: "send", value: p.outgoing });
    }
  }

  /** The stream ended: what was on it goes out again on the next one. */
  requeueInFlight(): void {
    for (const p of this.sends.values()) if (p.state === "inflight") p.state = "queued";
  }

  /** The server stored a send. */
  /**
   * The server took a send: settles it, and returns its log entry for this device to file (the
   * server does not echo it: the stream asks for omit_own_sends), or undefined for an answer to
   * a send this queue no longer holds.
   */
  acked(ack: SendAckFrame): Entry | undefined {
    const p = this.sends.get(ack.clientMsgId);
    if (p === undefined) return undefined;
    this.forget(p);
    this.window.acked(this.maxInFlight());
    const result: SendResult = {
      clientMsgId: ack.clientMsgId,
      conversationId: p.item.conversationId,
      seq: ack.seq,
      serverTimeMs: ack.serverTimeMs,
    };
    if (p.distributed !== undefined && this.ctx.e2ee !== undefined) {
      this.ctx.e2ee.keyDistributed(p.distributed).catch((err: unknown) => this.ctx.backgroundFailed(err));
    }
    p.resolve(result);
    this.ctx.events.emit("sent", result);
    this.pump();
    return ownEntry(p.outgoing, ack, this.ctx.profile.credentials.userId, this.ctx.deviceId);
  }

  /** The server refused a send: encrypt again, retry later, or fail it. */
  refused(err: SendErrorFrame): void {
    const p = this.sends.get(err.clientMsgId);
    if (p === undefined) {
      this.ctx.events.emit("error", {
        error: new ConnectError(`send refused: ${err.message}`, err.code as Code),
        fatal: false,
      });
      return;
    }
    if (
      err.code === Code.FailedPrecondition &&
      err.mismatch !== undefined &&
      this.ctx.e2ee !== undefined &&
      p.item.plaintext !== undefined &&
      p.mismatchRetries < MAX_MISMATCH_RETRIES
    ) {
      p.mismatchRetries += 1;
      p.state = "waiting";
      this.mismatched(p, err.mismatch);
      this.pump();
      return;
    }
    const retryable =
      err.code === Code.Unavailable || (err.code === Code.ResourceExhausted && err.retryAfterMs > 0);
    if (err.code === Code.Unavailable && err.message.startsWith("server overloaded")) {
      let inFlight = 0;
      for (const x of this.sends.values()) if (x.state === "inflight" && x !== p) inFlight += 1;
      this.window.overloaded(inFlight);
    }
    if (retryable) {
      this.retryLater(p, err.retryAfterMs);
      return;
    }
    this.fail(p, new ConnectError(err.message, err.code as Code));
  }

  /** Fails a send for good: out of the outbox, its promise rejected, "sendFailed" emitted. */
  fail(p: PendingSend, error: ConnectError): void {
    this.forget(p);
    p.reject(error);
    this.ctx.events.emit("sendFailed", {
      clientMsgId: p.item.clientMsgId,
      conversationId: p.item.conversationId,
      error,
    });
    this.pump();
  }

  /** Settles every unanswered send's promise; the sends stay in the outbox for the next run. */
  abandon(error: ConnectError): void {
    for (const p of this.sends.values()) {
      if (p.timer !== undefined) clearTimeout(p.timer);
      p.reject(error);
    }
    this.sends.clear();
  }

  /** The server's cap on sends in flight per stream, from its ready frame. */
  private maxInFlight(): number {
    return this.ctx.limits?.maxSendsInFlight || DEFAULT_MAX_IN_FLIGHT;
  }

  /** Resends after the delay the server asked for, or after a jittered backoff. */
  private retryLater(p: PendingSend, retryAfterMs: number): void {
    p.state = "waiting";
    p.retries += 1;
    const delay =
      retryAfterMs > 0 ? retryAfterMs : Math.floor(Math.random() * Math.min(30_000, 250 * 2 ** p.retries));
    p.timer = setTimeout(() => {
      p.timer = undefined;
      if (p.state !== "waiting") return;
      p.state = "queued";
      this.pump();
    }, delay);
    this.pump();
  }

  /** Takes an answered (or failed) send out of the queue and the outbox. */
  private forget(p: PendingSend): void {
    const clientMsgId = p.item.clientMsgId;
    this.sends.delete(clientMsgId);
    if (p.timer !== undefined) clearTimeout(p.timer);
    void this.ctx.profile.removeFromOutbox(clientMsgId).catch(() => {});
  }
}

function newPending(item: OutboxItem, outgoing: OutgoingEntry, state: PendingSend["state"]): PendingSend {
  let resolve!: (r: SendResult) => void;
  let reject!: (e: ConnectError) => void;
  const promise = new Promise<SendResult>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return {
    item,
    outgoing,
    state,
    retries: 0,
    mismatchRetries: 0,
    timer: undefined,
    promise,
    resolve,
    reject,
  };
}
