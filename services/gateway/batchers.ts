import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  type AppendItem,
  AppendItemSchema,
  type CursorUpdate,
  CursorUpdateSchema,
} from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import type { OutgoingEntry } from "../../gen/switchboard/v1/entry_pb.js";
import { type DeviceMismatch, DeviceMismatchSchema } from "../../gen/switchboard/v1/gateway_pb.js";
import { isTransportFailure } from "../common/boundary.js";
import { DEVICE_ENTRY_WIRE_BYTES } from "../common/config.js";
import { UnavailableError } from "../common/errors.js";
import type { Logger } from "../common/log.js";
import { context, extractContext, injectContext } from "../common/telemetry.js";
import { bodyBytes, devicePayloadsOf } from "../sequencer/index.js";
import type { SendAdmission } from "./admission.js";
import { checkedMembersOf } from "./device-set.js";

/** The sequencer calls the batchers need; routed to the owning replica by the caller. */
export interface SequencerCalls {
  /**
   * Appends a batch; one answer per item, in order: its seq and commit time (milliseconds since
   * the Unix epoch), or its refusal (a gRPC code, a message, and for a group send whose members
   * changed, the devices to drop).
   */
  append(items: AppendItem[]): Promise<
    Array<{
      seq: bigint;
      serverTimeMs: bigint;
      expiresAtMs?: bigint;
      errorCode: number;
      errorMessage: string;
      mismatch?: DeviceMismatch | undefined;
    }>
  >;
  /** Moves devices' delivered and read cursors (only ever forward). */
  updateCursors(updates: CursorUpdate[]): Promise<void>;
}

/** A committed send. */
export interface SendResult {
  /** The entry's seq. */
  seq: bigint;
  /** Commit time, in milliseconds since the Unix epoch. */
  serverTimeMs: bigint;
  /** When the entry disappears, in milliseconds since the Unix epoch; 0n for never. */
  expiresAtMs: bigint;
}

const MAX_APPEND_BATCH = 500;
/**
 * Half the internal request limit (64 MiB, services/server/network.ts). 500 direct sends at the
 * payload limit stay within it, but a group send can carry thousands of device ids besides, and
 * a batch the sequencer refused to parse would fail every send in it.
 */
const MAX_APPEND_BYTES = 32 * 1024 * 1024;

/** About what an append item takes on the wire, with the members its device set was checked against. */
function itemBytes(item: AppendItem): number {
  const entry = item.entry!;
  let checked = 0;
  for (const m of item.checkedMembers) checked += 32 + m.deviceIds.length * 32;
  return (
    256 + bodyBytes(entry.body) + devicePayloadsOf(entry.body).length * DEVICE_ENTRY_WIRE_BYTES + checked
  );
}

interface Waiting {
  item: AppendItem;
  resolve: (r: SendResult) => void;
  reject: (e: ConnectError | UnavailableError) => void;
}

/**
 * Collects sends from every stream on this gateway and appends them in batches: one RPC per
 * turn of the event loop (or per 500 sends, or 32 MiB) instead of one per message. The sequencer
 * group-commits each batch, so the hop costs one round trip per batch.
 */
export class SendBatcher {
  private queue: Waiting[] = [];
  private queuedBytes = 0;
  private scheduled = false;

  constructor(
    private readonly calls: SequencerCalls,
    private readonly log: Logger,
    /** Refuses sends past the gateway's capacity (admission.ts); every queued send is admitted. */
    private readonly admission?: SendAdmission,
  ) {}

  /**
   * Queues a send; `traceContext` is the trace it continues in the sequencer (the caller's by
   * default). Throws at once (OverloadError, UNAVAILABLE with a retry hint) when the gateway is
   * past its capacity (admission.ts), so a stream knows before it reads its next frame that its
   * later sends must wait for this one; the promise settles with the sequencer's answer.
   */
  append(
    userId: string,
    deviceId: string,
    entry: OutgoingEntry,
    traceContext: Record<string, string> = injectContext(),
  ): Promise<SendResult> {
    const item = create(AppendItemSchema, {
      senderUserId: userId,
      senderDeviceId: deviceId,
      entry,
      traceContext,
      // A group send's device check: the shard holds it against the members at its seq.
      checkedMembers: checkedMembersOf(entry),
    });
    const bytes = itemBytes(item);
    this.admission?.admit(bytes);
    const at = performance.now();
    return new Promise((resolve, reject) => {
      this.queue.push({
        item,
        resolve: (r) => {
          this.admission?.settled(bytes, performance.now() - at);
          resolve(r);
        },
        reject: (e) => {
          this.admission?.settled(bytes, performance.now() - at);
          reject(e);
        },
      });
      this.queuedBytes += bytes;
      if (this.queue.length >= MAX_APPEND_BATCH || this.queuedBytes >= MAX_APPEND_BYTES) this.flush();
      else if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  private flush(): void {
    this.scheduled = false;
    this.queuedBytes = 0;
    const batch = this.queue.splice(0, this.queue.length);
    for (let i = 0; i < batch.length; i += MAX_APPEND_BATCH)
      void this.send(batch.slice(i, i + MAX_APPEND_BATCH));
  }

  private async send(batch: Waiting[]): Promise<void> {
    if (batch.length === 0) return;
    try {
      // The call itself joins the first send's trace; every item carries its own context on.
      const results = await context.with(extractContext(batch[0]!.item.traceContext), () =>
        this.calls.append(batch.map((w) => w.item)),
      );
      batch.forEach((w, i) => {
        const r = results[i];
        // The sequencer's answers, relayed as the ConnectErrors they are (this is its client): a
        // broken answer stays INTERNAL, and a refusal keeps its code and its DeviceMismatch.
        if (r === undefined) w.reject(new ConnectError("sequencer returned too few results", Code.Internal));
        else if (r.errorCode !== 0) {
          // A group whose members changed since the check: the devices to drop ride along.
          const details = r.mismatch === undefined ? [] : [{ desc: DeviceMismatchSchema, value: r.mismatch }];
          w.reject(new ConnectError(r.errorMessage, r.errorCode as Code, undefined, details));
        } else w.resolve({ seq: r.seq, serverTimeMs: r.serverTimeMs, expiresAtMs: r.expiresAtMs ?? 0n });
      });
    } catch (err) {
      const e = ConnectError.from(err);
      this.log.warn({ err: e, sends: batch.length }, "append batch failed");
      // The send may or may not have committed; the client retries with the same id. A sequencer
      // killed mid-call shows up as ABORTED or CANCELED (see isTransportFailure), which the
      // client would take as a final refusal and drop an acceptable send.
      const unavailable = new UnavailableError(`sequencer unavailable: ${e.rawMessage}`);
      const retry = e.code === Code.Unavailable || e.code === Code.DeadlineExceeded || isTransportFailure(e);
      for (const w of batch) w.reject(retry ? unavailable : e);
    }
  }
}

/**
 * Coalesces cursor movements: for each (device, conversation) only the highest values since the
 * last flush are sent, every `intervalMs`. One flush is in flight at a time: what the devices ack
 * meanwhile coalesces and goes in the next, sent as soon as the sequencer answers, so a slow
 * sequencer gets fewer, larger calls and the server's cursors trail the acks by about one call,
 * not by a queue of calls that grows faster than it drains. A lost flush costs only a
 * re-delivery, which clients drop as a duplicate.
 */
export class CursorBatcher {
  private pending = new Map<string, CursorUpdate>();
  /** When each pending update was first noted, in milliseconds since the Unix epoch. */
  private notedAt = new Map<string, number>();
  private readonly timer: NodeJS.Timeout;
  /** The flush in flight (resolved when none is). */
  private flushing: Promise<void> = Promise.resolve();
  private inFlight = false;

  constructor(
    private readonly calls: SequencerCalls,
    private readonly log: Logger,
    intervalMs: number,
    /** Told, per update the sequencer took, how many seconds it trailed the device's ack. */
    private readonly onSaved: (lagSeconds: number) => void = () => {},
    private readonly now: () => number = Date.now,
  ) {
    // A tick during a flush does nothing: the flush sends what came meanwhile when it ends.
    this.timer = setInterval(() => {
      if (!this.inFlight) void this.flush();
    }, intervalMs);
    this.timer.unref();
  }

  /** Notes a device's cursors in a conversation (0n for one it does not move); the highest wins. */
  add(userId: string, deviceId: string, conversationId: string, delivered: bigint, read: bigint): void {
    const key = `${deviceId}\n${conversationId}`;
    const current = this.pending.get(key);
    if (current === undefined) {
      this.pending.set(
        key,
        create(CursorUpdateSchema, {
          userId,
          deviceId,
          conversationId,
          deliveredUpTo: delivered,
          readUpTo: read,
        }),
      );
      this.notedAt.set(key, this.now());
      return;
    }
    if (delivered > current.deliveredUpTo) current.deliveredUpTo = delivered;
    if (read > current.readUpTo) current.readUpTo = read;
  }

  /** Sends what is pending (after the flush in flight, if any); resolves when the sequencer has it. */
  async flush(): Promise<void> {
    while (this.inFlight) await this.flushing;
    if (this.pending.size === 0) return;
    const updates = [...this.pending.values()];
    const notedAt = [...this.notedAt.values()];
    this.pending = new Map();
    this.notedAt = new Map();
    this.inFlight = true;
    this.flushing = this.send(updates, notedAt).finally(() => {
      this.inFlight = false;
      if (this.pending.size > 0) void this.flush();
    });
    await this.flushing;
  }

  private async send(updates: CursorUpdate[], notedAt: number[]): Promise<void> {
    // Chunks in parallel: the router splits each by replica anyway, and one slow chunk should
    // not hold the others' cursors back.
    const chunks: Array<Promise<void>> = [];
    for (let i = 0; i < updates.length; i += 1000) {
      const slice = updates.slice(i, i + 1000);
      const noted = notedAt.slice(i, i + 1000);
      chunks.push(
        this.calls.updateCursors(slice).then(
          () => {
            const now = this.now();
            for (const at of noted) this.onSaved((now - at) / 1000);
          },
          (err: unknown) => this.log.warn({ err, updates: slice.length }, "cursor update failed"),
        ),
      );
    }
    await Promise.all(chunks);
  }

  /** Stops the timer and flushes what is pending. */
  async close(): Promise<void> {
    clearInterval(this.timer);
    await this.flush();
  }
}
