import type { Worker } from "node:worker_threads";
import { UnavailableError } from "../../common/errors.js";
import { moduleWorker, siblingModule } from "../../common/module-worker.js";
import { StoreError, type StoreErrorKind } from "../errors.js";
import type { ConversationUnit } from "./conversation-writes.js";
import { StorageFault } from "./storage-fault.js";

/**
 * The conversation port's writes, applied on a thread of their own (write-worker.ts).
 *
 * Why: lmdb-js runs a write transaction's callbacks on the thread that queued them, and the
 * callbacks are where the work is (key checks, msgpack and ordered-binary encoding, the B-tree
 * puts). On the server's one JavaScript thread they were about 14 % of its busy time at 5,000
 * msgs/s, and at 10,000 devices single transactions held it for 117-145 ms (docs/benchmarks.md).
 * The worker opens the same LMDB environment (lmdb-js shares it between the threads of a process)
 * and applies each unit as the engine did, as a child transaction of a group commit (write-worker.ts).
 *
 * What stays the same: units are applied in call order (one FIFO, one thread), except that
 * cursor units a transaction has no room for wait for the next one while the commits behind them
 * go ahead (conversation-writes.ts, takeUnits); a unit's promise resolves only once its
 * transaction is committed and on disk; a refused unit (a seq conflict) is rolled back alone. What it takes to keep reads right: this thread's lmdb-js keeps its read
 * snapshot until a timer renews it, and that snapshot may predate the worker's commit, so
 * `onApplied` (the engine resets the read snapshot) runs before any result is handed back, and a
 * read made after a commit resolved sees it.
 *
 * Bounds. The units in flight are bounded by the callers (one commit in flight per sequencer shard,
 * the receipt batchers' cursors, the sweeps' slices), as they were on lmdb-js's own queue; a unit
 * crosses the thread boundary as a structured clone of plain data, entries already encoded. A unit
 * waits for its answer at most `unitDeadlineMs`: a disk whose fsync hangs (a stalled network
 * volume) holds the worker inside its commit, where nothing can stop it safely (crashWriteWorker),
 * and its callers are then refused as a storage fault whose outcome is unknown, since the commit
 * may still complete, instead of waiting with it.
 */
export class WriteThread {
  private readonly env = nextEnvId++;
  private readonly pending = new Map<number, Pending>();
  /** Units of this turn, posted together by the next microtask. */
  private queued: Array<{ id: number; unit: ConversationUnit }> = [];
  /** The worker this environment is open in, if any (a dead worker's successor opens it again). */
  private openIn: Worker | undefined;
  private closing: Promise<void> | undefined;
  /** Armed while units wait: fires when the oldest of them reaches its deadline. */
  private watchdog: ReturnType<typeof setTimeout> | undefined;

  constructor(
    private readonly path: string,
    private readonly mapSizeBytes: number | undefined,
    private readonly onApplied: () => void,
    private readonly unitDeadlineMs = UNIT_DEADLINE_MS,
  ) {}

  /** Applies a unit on the write thread; resolves with its result once committed and flushed. */
  run(unit: ConversationUnit): Promise<unknown> {
    if (this.closing !== undefined) return Promise.reject(new UnavailableError("the store is closing"));
    const id = nextUnitId++;
    const since = performance.now();
    const done = new Promise<unknown>((resolve, reject) => this.pending.set(id, { resolve, reject, since }));
    this.watchdog ??= this.armWatchdog(this.unitDeadlineMs);
    if (this.queued.length === 0) queueMicrotask(() => this.flush());
    this.queued.push({ id, unit });
    return done;
  }

  /** Lets every unit handed over finish, then closes the environment on the worker. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.flush();
      const worker = this.openIn;
      if (worker === undefined) return;
      const closed = new Promise<void>((resolve) => {
        this.pending.set(CLOSE_ID, {
          resolve: () => resolve(),
          reject: () => resolve(),
          since: performance.now(),
        });
      });
      busy(worker, +1);
      worker.postMessage({ type: "close", env: this.env } satisfies ToWorker);
      const deadline = setTimeout(() => this.settle(CLOSE_ID, undefined), CLOSE_DEADLINE_MS);
      try {
        await closed;
      } finally {
        clearTimeout(deadline);
        threads.delete(this.env);
      }
    })();
    return this.closing;
  }

  private flush(): void {
    if (this.queued.length === 0) return;
    const units = this.queued;
    this.queued = [];
    const worker = sharedWorker();
    if (this.openIn !== worker) {
      threads.set(this.env, this);
      worker.postMessage({
        type: "open",
        env: this.env,
        path: this.path,
        mapSizeBytes: this.mapSizeBytes,
      } satisfies ToWorker);
      this.openIn = worker;
    }
    try {
      worker.postMessage({ type: "units", env: this.env, units } satisfies ToWorker);
    } catch (err) {
      // A unit that cannot be cloned (a caller's bug) fails its batch, not the process: this runs
      // in a microtask, where a throw would be an uncaught exception.
      // Its DOMException carries a numeric code, which would pass for an errno: not a storage fault.
      const bug = new Error(`a write could not be handed to the write thread: ${(err as Error).message}`);
      for (const { id } of units) {
        this.pending.get(id)?.reject(bug);
        this.pending.delete(id);
      }
      return;
    }
    busy(worker, units.length);
  }

  /** The worker's answer for this environment. */
  answered(msg: Exclude<FromWorker, ConsoleLine>): void {
    if (msg.type === "closed") {
      this.settle(CLOSE_ID, undefined);
      return;
    }
    this.onApplied();
    for (const r of msg.results) {
      if (r.ok) this.settle(r.id, r.value);
      else this.settle(r.id, undefined, failureError(r.failure));
    }
  }

  /**
   * Refuses the units that have waited their deadline out, oldest first (the map keeps call
   * order), and watches the next oldest. The worker is left to finish: its late answers find no
   * one waiting. The close has its own deadline.
   */
  private expire(): void {
    this.watchdog = undefined;
    const now = performance.now();
    let oldest: number | undefined;
    for (const [id, p] of this.pending) {
      if (id === CLOSE_ID) continue;
      if (now - p.since < this.unitDeadlineMs) {
        oldest = p.since;
        break;
      }
      this.settle(
        id,
        undefined,
        new StorageFault(
          `the store's write thread has not answered a write in ${this.unitDeadlineMs} ms (is the disk stalled?)`,
          undefined,
          true,
        ),
      );
    }
    if (oldest !== undefined) this.watchdog = this.armWatchdog(oldest + this.unitDeadlineMs - now);
  }

  private armWatchdog(ms: number): ReturnType<typeof setTimeout> {
    // Unreferenced: units in flight keep the process alive through the worker (busy), not this.
    return setTimeout(() => this.expire(), Math.max(0, ms)).unref();
  }

  /** The worker died: what it held fails, and the next write opens the environment in another. */
  lost(failure: Error): void {
    this.openIn = undefined;
    for (const id of [...this.pending.keys()]) this.settle(id, undefined, failure);
  }

  private settle(id: number, value: unknown, err?: Error): void {
    const p = this.pending.get(id);
    if (p === undefined) return;
    this.pending.delete(id);
    if (this.openIn !== undefined) busy(this.openIn, -1);
    if (err === undefined) p.resolve(value);
    else p.reject(err);
  }
}

/**
 * One worker serves every engine of the process (one in a server; many, one after another, in
 * tests), so a worker's start-up is paid once, not per open.
 */
let worker: Worker | undefined;
/** Units (and closes) handed to the worker and not answered: while any are, it keeps the process alive. */
let inFlight = 0;
const threads = new Map<number, WriteThread>();
let nextEnvId = 1;
let nextUnitId = 1;
/** The pending entry that stands for an environment's close. */
const CLOSE_ID = 0;

function sharedWorker(): Worker {
  if (worker !== undefined) return worker;
  const started = moduleWorker(siblingModule(import.meta.url, "write-worker"), { stdin: false });
  started.on("message", (msg: FromWorker) => {
    if (msg.type === "console") relayConsole(msg);
    else threads.get(msg.env)?.answered(msg);
  });
  const died = (reason: string) => {
    if (worker !== started) return;
    worker = undefined;
    inFlight = 0;
    const failure = new StorageFault(`the store's write thread stopped: ${reason}`, undefined, true);
    for (const thread of threads.values()) thread.lost(failure);
  };
  started.on("error", (err) => died(err.message));
  started.on("exit", (code) => died(`exit code ${code}`));
  started.unref();
  worker = started;
  return started;
}

/**
 * Makes the shared worker die as an uncaught error on it would: between two transactions, with
 * whatever was handed to it and not yet applied lost with it. Its callers' side of that is tested
 * with it (lmdb.test.ts). Returns whether a worker was running.
 *
 * Not `worker.terminate()`: that stops the thread wherever it is, and inside `transactionSync`
 * it leaves lmdb-js's per-environment write lock (`writingLock` in its env.cpp) held by the
 * thread, whose own clean-up then waits for that lock, so the thread never exits and LMDB's
 * write mutex stays held. This module never terminates its worker for that reason; Node stops a
 * worker that way only when the worker's heap is exhausted, which its bounded units do not do.
 */
export function crashWriteWorker(): boolean {
  if (worker === undefined) return false;
  worker.postMessage({ type: "crash" } satisfies ToWorker);
  return true;
}

function busy(w: Worker, delta: number): void {
  if (w !== worker) return;
  const before = inFlight;
  inFlight += delta;
  // Idle, the worker must not keep the process alive; busy, it must (a caller awaits it).
  if (before === 0 && inFlight > 0) w.ref();
  else if (before > 0 && inFlight === 0) w.unref();
}

/** How long close waits for the worker to finish its writes and close the environment. */
const CLOSE_DEADLINE_MS = 30_000;
/**
 * How long a unit waits for the worker's answer. A commit takes milliseconds and, at its worst
 * measured (10,000 devices), 145 ms; a disk that has not synced in 30 s has stalled.
 */
const UNIT_DEADLINE_MS = 30_000;

interface Pending {
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  /** When it was handed over (performance.now()), for its deadline. */
  since: number;
}

/**
 * Messages to the worker, for one environment: open it; units to apply, in order; then, once,
 * close it. Or, from a test, die (crashWriteWorker).
 */
export type ToWorker =
  | { type: "open"; env: number; path: string; mapSizeBytes: number | undefined }
  | { type: "units"; env: number; units: Array<{ id: number; unit: ConversationUnit }> }
  | { type: "close"; env: number }
  | { type: "crash" };

/**
 * The worker's answer to one "units" message, or to "close" once the environment is closed; or
 * what a library there wrote with console.error or console.warn.
 */
export type FromWorker =
  | { type: "results"; env: number; results: UnitResult[] }
  | { type: "closed"; env: number }
  | ConsoleLine;

/** A console.error or console.warn call on the worker: its arguments, errors kept as errors. */
export interface ConsoleLine {
  type: "console";
  level: "error" | "warn";
  args: ConsoleArg[];
}

/** One argument of a console call: an error's fields, or anything else as util.format prints it. */
export type ConsoleArg =
  | { error: { name: string; message: string; stack?: string; code?: string | number } }
  | { text: string };

/**
 * Makes a worker's console call again with this thread's console. lmdb-js reports a failed commit
 * with console.error on the thread that wrote; the server routes this thread's console through its
 * log (captureConsole in common/log.ts), and a worker's console would bypass it, writing raw lines
 * to stderr.
 */
function relayConsole(line: ConsoleLine): void {
  const args = line.args.map((arg) => {
    if ("text" in arg) return arg.text;
    const { name, message, stack, code } = arg.error;
    const err = Object.assign(new Error(message), { name, stack });
    return code === undefined ? err : Object.assign(err, { code });
  });
  console[line.level](...args);
}

export type UnitResult =
  | { id: number; ok: true; value: unknown }
  | { id: number; ok: false; failure: Failure };

/** A unit's failure, as it crosses the thread boundary. */
export type Failure =
  | { kind: "store"; storeKind: StoreErrorKind; message: string }
  /** The disk refused the commit; `detail` is lmdb's cause when it gave one. */
  | { kind: "storage"; message: string; detail?: string }
  | { kind: "error"; name: string; message: string };

function failureError(f: Failure): Error {
  switch (f.kind) {
    case "store":
      return new StoreError(f.storeKind, f.message);
    case "storage":
      return new StorageFault(f.message, f.detail);
    case "error":
      return Object.assign(new Error(f.message), { name: f.name });
  }
}
