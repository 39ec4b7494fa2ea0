import type { EdgeLimits } from "../common/config.js";

/**
 * What a stream thread (stream-thread.ts) and the main thread (stream-threads.ts) tell each
 * other. Each side gathers what it has to say during one turn of its event loop into one
 * message: a flat list of operations, four numbers each (kind, stream id, a, b), the few
 * arguments that are not numbers (headers, trailers, refusals) beside it, and one buffer holding
 * the bytes the operations carry. The operations and the bytes are transferred rather than
 * copied. A post per turn, not per frame, is what makes the hand-off cheap: at 10,000 devices one
 * carries hundreds of streams' reads (docs/benchmarks.md, twenty-fourth pass).
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

/**
 * One turn's operations and their bytes. `ops` holds four numbers per operation: kind, stream
 * id, a, b. An operation whose argument is not a number (FROM_THREAD.open and refused,
 * TO_THREAD.respond and end) has b = ARGUMENT and a = the argument's index in `args`.
 *
 * Why a Float64Array and not an array: a structured clone rebuilds an array value by value on
 * the receiving thread, and the array is garbage there once handled; a transferred typed array
 * is one buffer, outside the JS heap. Reading a batch of four hundred operations took the
 * receiving thread 31-35 µs and takes 19-24 µs (bench/stream-handoff.ts; docs/benchmarks.md,
 * twenty-ninth pass).
 */
export interface Batch {
  type: "batch";
  ops: Float64Array;
  args: unknown[];
  data: Uint8Array;
  /** When the batch was posted (`sharedNow`): what the receiving side measures its wait from. */
  postedAt: number;
}

/**
 * Now, in milliseconds on the system's monotonic clock, which every thread of the process reads
 * alike. Each thread's `performance.now()` counts from that thread's own start, and
 * `performance.timeOrigin` is the wall clock read then: a stream thread started again after the
 * wall clock was stepped back would see every batch as waiting that much longer on the main
 * thread, and the admission would refuse every send.
 */
export function sharedNow(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

/** b's value in an operation whose a is an index into the batch's `args`. */
const ARGUMENT = -1;

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
 * falls behind holds the devices back, not a queue of batches between the threads. This bounds
 * the memory; 8 MiB of small sends is seconds of a main thread's work, so what bounds the wait is
 * the gateway's admission, which counts each batch's wait (InboxHooks.begun) and pushes senders
 * back once sends wait past its target.
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
  private ops: number[] = [];
  private args: unknown[] = [];
  private chunks: Uint8Array[] = [];
  private bytes = 0;
  private scheduled = false;

  constructor(private readonly post: (batch: Batch, transfer: ArrayBuffer[]) => void) {}

  /** An operation without bytes; `a` is a number, or an argument that crosses by structured clone. */
  op(kind: number, id: number, a: unknown = 0): void {
    if (typeof a === "number") {
      this.ops.push(kind, id, a, 0);
    } else {
      this.ops.push(kind, id, this.args.length, ARGUMENT);
      this.args.push(a);
    }
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
    const ops = new Float64Array(this.ops);
    const batch: Batch = { type: "batch", ops, args: this.args, data, postedAt: sharedNow() };
    this.ops = [];
    this.args = [];
    this.chunks = [];
    this.bytes = 0;
    this.post(batch, [ops.buffer, data.buffer]);
  }
}

/**
 * How much of its own time a thread spends on the other side's operations before its event loop
 * runs anything else (timers, the store's answers, the other port's batches, its sockets).
 */
const SLICE_MS = 5;

/** Operations between two looks at the clock (a look costs about as much as a cheap operation). */
const OPS_PER_LOOK = 16;

/** What an Inbox tells its owner besides each operation. */
export interface InboxHooks {
  /**
   * A batch's first operation is about to be handled, `waitedMs` after the other side posted it:
   * its wait in the port and behind the batches before it. The main thread counts it as part of
   * the wait of every send the batch carries (admission.ts), since the gateway reads them only now.
   */
  begun?: (batch: Batch, waitedMs: number) => void;
  /** A batch's last operation was handled. */
  finished?: (batch: Batch) => void;
  /** The longest the inbox handles operations before its thread's event loop runs anything else. */
  sliceMs?: number;
}

/**
 * The other side's batches, handled in order, in slices of at most SLICE_MS. A thread that falls
 * behind finds several batches waiting (up to IN_FLIGHT_BYTES of reads on the main thread; a
 * turn's writes to thousands of streams on a stream thread), and Node hands a port's waiting
 * messages over in one turn. Handled as they came, a main thread that fell behind at 10,000
 * devices went up to 963 ms between two turns of its timers, 573 ms of it its own work, while the
 * store's answers, and so the acks, waited; in slices, at most 87 ms of its own work
 * (docs/benchmarks.md, "Twenty-eighth pass"). The backlog is bounded by what the sides already
 * bound (IN_FLIGHT_BYTES, each stream's WRITE_HIGH_WATER); this only decides when its operations
 * run.
 */
export class Inbox {
  private readonly queue: Batch[] = [];
  /** The next operation's slot in queue[0]. */
  private next = 0;
  private scheduled = false;
  private readonly continue = () => {
    this.scheduled = false;
    this.handle(performance.now() + this.sliceMs);
  };

  private readonly finished: (batch: Batch) => void;
  private readonly begun: (batch: Batch, waitedMs: number) => void;
  private readonly sliceMs: number;

  /** @param each handles one operation of `batch`: a is its number or its argument */
  constructor(
    private readonly each: (kind: number, id: number, a: unknown, b: number, batch: Batch) => void,
    hooks: InboxHooks = {},
  ) {
    this.finished = hooks.finished ?? (() => {});
    this.begun = hooks.begun ?? (() => {});
    this.sliceMs = hooks.sliceMs ?? SLICE_MS;
  }

  /** Handles the batch now if nothing waits before it, for up to a slice; the rest in later turns. */
  push(batch: Batch): void {
    this.queue.push(batch);
    if (!this.scheduled) this.handle(performance.now() + this.sliceMs);
  }

  /** Handles everything waiting now, however long it takes (before the thread closes). */
  drain(): void {
    this.handle(Number.POSITIVE_INFINITY);
  }

  /** Drops everything waiting (the other side is gone). */
  clear(): void {
    this.queue.length = 0;
    this.next = 0;
  }

  /** Batches waiting, the one in hand included. */
  get waiting(): number {
    return this.queue.length;
  }

  private handle(until: number): void {
    const { queue, each } = this;
    while (queue.length > 0) {
      const batch = queue[0]!;
      const { ops } = batch;
      let i = this.next;
      if (i === 0) this.begun(batch, sharedNow() - batch.postedAt);
      while (i < ops.length) {
        const stop = Math.min(ops.length, i + 4 * OPS_PER_LOOK);
        for (; i < stop; i += 4) {
          const b = ops[i + 3]!;
          if (b === ARGUMENT) each(ops[i]!, ops[i + 1]!, batch.args[ops[i + 2]!], 0, batch);
          else each(ops[i]!, ops[i + 1]!, ops[i + 2]!, b, batch);
        }
        if (i < ops.length && performance.now() >= until) break;
      }
      // An operation may have cleared the queue (the other side stopped).
      if (queue[0] !== batch) return;
      if (i < ops.length) {
        this.next = i;
        break;
      }
      queue.shift();
      this.next = 0;
      this.finished(batch);
      if (performance.now() >= until) break;
    }
    if (queue.length > 0 && !this.scheduled) {
      this.scheduled = true;
      setImmediate(this.continue);
    }
  }
}
