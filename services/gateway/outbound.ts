import { create } from "@bufbuild/protobuf";
import type { Entry } from "../../gen/switchboard/v1/entry_pb.js";
import {
  type ConnectResponse,
  ConnectResponseSchema,
  type ReceiptFrame,
} from "../../gen/switchboard/v1/gateway_pb.js";
import { entryBytes } from "../common/entry-bytes.js";
import { encodedSizeBound } from "../common/wire-size.js";

/** The bounds of one stream's queue. */
export interface OutboundLimits {
  /** Frames queued before offers are refused and producers wait. */
  frames: number;
  /** Bytes (encoded size bound of the frames) queued before offers are refused and producers wait. */
  bytes: number;
  /** Bytes of entries per message frame: joined live entries stop there. */
  frameBytes: number;
  /** Entries per message frame. */
  frameEntries: number;
  /**
   * Milliseconds a producer may wait for room with no frame read meanwhile; past it `onStall`
   * is called (the session ends the stream). 0 waits without a deadline.
   */
  stallMs?: number;
}

/** Bytes a message frame costs without its entries (tag, length, type). */
const MESSAGE_FRAME_OVERHEAD = 32;

/** An entry's field tag and length prefix inside a message frame, at most (1 + a 32-bit varint). */
const ENTRY_PREFIX_BYTES = 6;

/** framesReady's answers when it need not wait: one promise each, shared by every stream. */
const FRAMES_READY = Promise.resolve(true);
const ENDED = Promise.resolve(false);

/** Receipts one `receipts` frame carries at most (gateway.proto). */
const RECEIPTS_PER_FRAME = 256;

/**
 * The frames waiting to be written to one device, bounded in frames and in bytes.
 *
 * - `offer` (live pushes, receipts, typing, presence) refuses when either bound is reached;
 *   the caller falls back to the log, or drops the event.
 * - `put` (backlog and sync pages) waits until the frame fits, so a device that does not read
 *   stops the server producing for it instead of growing the queue.
 * - `force` (small answers to the device's own requests: acks, pongs, errors) may pass the
 *   bounds by as much again (a device that stops reading for a moment still gets its answers
 *   in order); past that the device is not reading, and `force` reports it by returning false:
 *   the caller ends the stream.
 */
export class Outbound {
  private readonly items: ConnectResponse[] = [];
  /** Encoded size bound of each queued frame, in the order of items. */
  private readonly sizes: number[] = [];
  private queuedBytes = 0;
  private wakeReader: (() => void) | undefined;
  private spaceWaiters: Array<() => void> = [];
  private ended = false;
  /** What the stream ends with (a domain error or a ConnectError; the boundary makes it a code). */
  private error: Error | undefined;
  /** When the reader last took a frame (or the queue was made), in performance.now() ms. */
  private lastReadAt = performance.now();
  /** The device asked for receipts in `receipts` frames (StreamOptionsFrame.batch_receipts). */
  batchReceipts = false;

  /**
   * @param onStall called when a producer has waited `stallMs` for room and the device read
   *   nothing meanwhile; it is expected to end the queue.
   */
  constructor(
    private readonly limits: OutboundLimits,
    private readonly onStall?: () => void,
  ) {}

  /** Frames waiting. */
  get size(): number {
    return this.items.length;
  }

  /** Bytes waiting (the encoded size bound of the frames). */
  get bytes(): number {
    return this.queuedBytes;
  }

  /** True once end() was called. */
  get closed(): boolean {
    return this.ended;
  }

  /** Queues a frame if there is room. */
  offer(frame: ConnectResponse): boolean {
    if (this.ended) return true;
    const size = encodedSizeBound(frame);
    if (!this.fits(size, 1)) return false;
    this.push(frame, size);
    return true;
  }

  /**
   * Queues a receipt if there is room: as its own `receipt` frame, or, for a device that asked
   * for batches, joined to the last queued `receipts` frame while it has room (it has not been
   * written yet), as offerEntries joins entries.
   */
  offerReceipt(receipt: ReceiptFrame): boolean {
    if (this.ended) return true;
    if (!this.batchReceipts)
      return this.offer(create(ConnectResponseSchema, { frame: { case: "receipt", value: receipt } }));
    return this.offerJoined(
      encodedSizeBound(receipt),
      (last) => {
        if (last.frame.case !== "receipts" || last.frame.value.receipts.length >= RECEIPTS_PER_FRAME)
          return false;
        last.frame.value.receipts.push(receipt);
        return true;
      },
      () => create(ConnectResponseSchema, { frame: { case: "receipts", value: { receipts: [receipt] } } }),
    );
  }

  /**
   * Queues entries, joining them to the last queued message frame while it has room (it has not
   * been written yet, so it can still grow): under load many entries share one frame, which
   * saves a protobuf envelope, an HTTP/2 DATA frame and a trip through the stream machinery per
   * entry. Returns false when the entries did not fit.
   */
  offerEntries(entries: Entry[]): boolean {
    if (this.ended) return true;
    // Each entry's exact encoding (and its tag and length prefix in the frame): encoded once per
    // entry object for every stream it goes to (entry-bytes.ts), and written as these bytes. A
    // bound walked over the object again for each of a group's 99 recipients cost more.
    let size = 0;
    for (const e of entries) size += entryBytes(e).length + ENTRY_PREFIX_BYTES;
    return this.offerJoined(
      size,
      (last, lastSize) => {
        if (
          last.frame.case !== "message" ||
          last.frame.value.entries.length + entries.length > this.limits.frameEntries ||
          lastSize + size > this.limits.frameBytes + MESSAGE_FRAME_OVERHEAD
        )
          return false;
        last.frame.value.entries.push(...entries);
        return true;
      },
      () => create(ConnectResponseSchema, { frame: { case: "message", value: { entries } } }),
    );
  }

  /**
   * Joins `size` bytes of content to the last queued frame when `join` can (within the byte
   * bound), else queues the frame `make` builds if it fits. Returns false when neither fits.
   */
  private offerJoined(
    size: number,
    join: (last: ConnectResponse, lastSize: number) => boolean,
    make: () => ConnectResponse,
  ): boolean {
    const lastIndex = this.items.length - 1;
    const last = this.items[lastIndex];
    if (
      last !== undefined &&
      this.queuedBytes + size <= this.limits.bytes &&
      join(last, this.sizes[lastIndex]!)
    ) {
      this.sizes[lastIndex]! += size;
      this.queuedBytes += size;
      return true;
    }
    if (!this.fits(size + MESSAGE_FRAME_OVERHEAD, 1)) return false;
    this.push(make(), size + MESSAGE_FRAME_OVERHEAD);
    return true;
  }

  /**
   * Queues a frame once it fits within the bounds (at once when the queue is empty, whatever its
   * size), waiting for the device to read otherwise. The check and the push happen together, so
   * producers woken at once cannot overfill the queue. Resolves false if the queue ended first.
   */
  async put(frame: ConnectResponse): Promise<boolean> {
    const size = encodedSizeBound(frame);
    while (!this.ended && !this.fits(size, 1)) await this.waitForRoom();
    if (this.ended) return false;
    this.push(frame, size);
    return true;
  }

  /**
   * Queues an answer to the device's own request, past the bounds by at most as much again.
   * Returns false (queuing nothing) when even that is full: the device is not reading.
   */
  force(frame: ConnectResponse): boolean {
    if (this.ended) return true;
    const size = encodedSizeBound(frame);
    if (
      this.items.length > 0 &&
      (this.items.length + 1 > 2 * this.limits.frames || this.queuedBytes + size > 2 * this.limits.bytes)
    ) {
      return false;
    }
    this.push(frame, size);
    return true;
  }

  /** Resolves when there is room for a frame of `bytes`, or the queue ended. */
  async space(bytes = 0): Promise<void> {
    while (!this.ended && !this.fits(bytes, 1)) await this.waitForRoom();
  }

  /** Waits for the reader to take a frame, at most stallMs; reports a stall past it. */
  private async waitForRoom(): Promise<void> {
    const stallMs = this.limits.stallMs ?? 0;
    await new Promise<void>((resolve) => {
      const timer = stallMs > 0 ? setTimeout(resolve, stallMs) : undefined;
      timer?.unref();
      this.spaceWaiters.push(() => {
        if (timer !== undefined) clearTimeout(timer);
        resolve();
      });
    });
    if (!this.ended && stallMs > 0 && performance.now() - this.lastReadAt >= stallMs) this.onStall?.();
  }

  /** Ends the stream: frames already queued are written first, then the error (if any) is sent. */
  end(error?: Error): void {
    if (this.ended) return;
    this.ended = true;
    this.error = error;
    this.wake();
    for (const w of this.spaceWaiters.splice(0)) w();
  }

  /** Ends at once, dropping queued frames. */
  abort(error: Error): void {
    this.items.length = 0;
    this.sizes.length = 0;
    this.queuedBytes = 0;
    this.end(error);
  }

  /** Yields frames until end(); then throws the end error if there is one. */
  async *drain(): AsyncGenerator<ConnectResponse> {
    for (;;) {
      const frame = this.items.shift();
      if (frame !== undefined) {
        this.queuedBytes -= this.sizes.shift() ?? 0;
        this.lastReadAt = performance.now();
        if (this.spaceWaiters.length > 0) {
          for (const w of this.spaceWaiters.splice(0)) w();
        }
        yield frame;
        continue;
      }
      if (this.ended) break;
      await new Promise<void>((resolve) => {
        this.wakeReader = resolve;
      });
    }
    if (this.error !== undefined) throw this.error;
  }

  /**
   * For a writer that encodes and writes every frame queued at the time together (one await per
   * batch instead of one per frame): resolves true once frames are queued, false once the queue
   * has ended with none left (throwing the end error if there is one). The writer then takes
   * them with takeBatch. Not a generator like drain: a suspended generator keeps the batch it
   * last yielded in its registers, and with it every entry and payload of that batch, for as long
   * as the stream stays quiet (megabytes per stream after a burst; test/e2e/sequencer-memory.test.ts).
   */
  framesReady(): Promise<boolean> {
    if (this.items.length > 0) return FRAMES_READY;
    if (this.ended) return this.error === undefined ? ENDED : Promise.reject(this.error);
    // Not an async function: an idle stream waits here for hours, and a suspended async function
    // keeps a generator, its registers and a context besides the promise (about 250 bytes a
    // stream, in a heap snapshot of 4,000 idle streams).
    return new Promise<void>((resolve) => {
      this.wakeReader = resolve;
    }).then(() => this.framesReady());
  }

  /** Takes the frames queued now, at most `max`, oldest first (after framesReady said true). */
  takeBatch(max: number): ConnectResponse[] {
    const n = Math.min(max, this.items.length);
    const frames = this.items.splice(0, n);
    for (const size of this.sizes.splice(0, n)) this.queuedBytes -= size;
    this.lastReadAt = performance.now();
    if (this.spaceWaiters.length > 0) {
      for (const w of this.spaceWaiters.splice(0)) w();
    }
    return frames;
  }

  /** True when `frames` more frames of `bytes` in all stay within the bounds (or the queue is empty). */
  private fits(bytes: number, frames: number): boolean {
    if (this.items.length === 0) return true;
    return this.items.length + frames <= this.limits.frames && this.queuedBytes + bytes <= this.limits.bytes;
  }

  private push(frame: ConnectResponse, size: number): void {
    this.items.push(frame);
    this.sizes.push(size);
    this.queuedBytes += size;
    this.wake();
  }

  private wake(): void {
    const wake = this.wakeReader;
    this.wakeReader = undefined;
    wake?.();
  }
}
