import type { EdgeLimits } from "../common/config.js";

/**
 * What a stream thread (stream-thread.ts) and the main thread (stream-threads.ts) tell each
 * other. Each side gathers what it has to say during one turn of its event loop into one
 * message: a flat list of operations, four slots each (kind, stream id, a, b), and one buffer
 * holding the bytes the operations carry, transferred rather than copied. A post per turn, not
 * per frame, is what makes the hand-off cheap: at 10,000 devices one carries hundreds of
 * streams' reads (docs/benchmarks.md, twenty-fourth pass).
 */

/** Operations from a stream thread. */
export const FROM_THREAD = {
  /** A device stream opened: a = [content type, authorization, grpc-timeout, peer address]. */
  open: 1,
  /** Bytes of the request body: a = offset in the batch's data, b = length. */
  data: 2,
  /** The device ended its side. */
  end: 3,
  /** The stream is gone (ended both ways, reset, or its connection lost). */
  close: 4,
  /** a = bytes of the main thread's writes that left the stream's buffer (back-pressure). */
  written: 5,
  /** A refusal at the thread's edge: a = [reason, message, fields]; the id is 0. */
  refused: 6,
} as const;

/** Operations from the main thread. */
export const TO_THREAD = {
  /** Answer headers: a = content type. */
  respond: 1,
  /** Bytes of the answer: a = offset in the batch's data, b = length. */
  write: 2,
  /** End the answer with these trailers: a = trailers. */
  end: 3,
  /** Stop reading the request body. */
  pause: 4,
  /** Read it (again). */
  resume: 5,
  /** a = bytes of request body the main thread has handled (the thread's bound on what it sends). */
  consumed: 6,
} as const;

/** One turn's operations and their bytes. */
export interface Batch {
  type: "batch";
  ops: unknown[];
  data: Uint8Array;
}

/** Other messages from a stream thread. */
export type ThreadEvent = Batch | { type: "listening"; port: number };

/** Other messages to a stream thread. */
export type ThreadCommand = Batch | { type: "close" } | { type: "crash" };

/** What a stream thread is started with. */
export interface StreamThreadData {
  host: string;
  port: number;
  /** The edge's bounds, as the main port has them. */
  limits: EdgeLimits;
}

/**
 * Request bytes a stream thread hands to the main thread and that are not yet reported
 * `consumed`, at most. Past it, a stream that brings more is paused (its HTTP/2 window then
 * holds the device back) until the main thread has caught up to half of it: a main thread that
 * falls behind holds the devices back, not a queue of batches between the threads.
 */
export const IN_FLIGHT_BYTES = 8 * 1024 * 1024;

/**
 * A batch posts at once past this many bytes rather than at the end of the turn, so that no
 * one message (and no one copy into it) grows without a bound.
 */
const BATCH_BYTES = 1024 * 1024;

/**
 * One side's operations for the other, gathered over a turn of the event loop and posted once
 * (setImmediate: after the turn's reads, so one post carries every stream they touched).
 */
export class Outbox {
  private ops: unknown[] = [];
  private chunks: Uint8Array[] = [];
  private bytes = 0;
  private scheduled = false;

  constructor(private readonly post: (batch: Batch, transfer: ArrayBuffer[]) => void) {}

  /** An operation without bytes. */
  op(kind: number, id: number, a: unknown = 0): void {
    this.ops.push(kind, id, a, 0);
    this.schedule();
  }

  /** An operation carrying bytes. */
  data(kind: number, id: number, chunk: Uint8Array): void {
    this.ops.push(kind, id, this.bytes, chunk.length);
    this.chunks.push(chunk);
    this.bytes += chunk.length;
    if (this.bytes >= BATCH_BYTES) this.flush();
    else this.schedule();
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.flush();
    });
  }

  /** Posts what is gathered (nothing when nothing is). */
  flush(): void {
    if (this.ops.length === 0) return;
    // One fresh buffer, exactly the size of the bytes: a pooled Buffer's ArrayBuffer would be
    // copied whole, and transferring it would detach the pool.
    const data = new Uint8Array(this.bytes);
    let at = 0;
    for (const c of this.chunks) {
      data.set(c, at);
      at += c.length;
    }
    const batch: Batch = { type: "batch", ops: this.ops, data };
    this.ops = [];
    this.chunks = [];
    this.bytes = 0;
    this.post(batch, [data.buffer]);
  }
}

/** Calls `each(kind, id, a, b)` for every operation of a batch, in order. */
export function forEachOp(
  batch: Batch,
  each: (kind: number, id: number, a: unknown, b: unknown) => void,
): void {
  const { ops } = batch;
  for (let i = 0; i < ops.length; i += 4)
    each(ops[i] as number, ops[i + 1] as number, ops[i + 2], ops[i + 3]);
}
