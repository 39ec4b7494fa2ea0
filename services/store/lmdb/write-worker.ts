/**
 * The write thread's worker (write-thread.ts): applies the conversation port's write units to the
 * LMDB environments the engines of this process opened. The units that reach it while it is busy
 * are applied together, in the order they arrived, each as a child transaction of one synchronous
 * write transaction on this thread, and each environment's units are answered once that
 * transaction is committed and on disk. One exception to the order: a transaction takes cursor
 * units up to CURSOR_ROWS_PER_TRANSACTION rows, and the rest wait, in their order, for the next
 * one, while the other units behind them go ahead (conversation-writes.ts, takeUnits).
 *
 * Why synchronous: this thread exists to do the writes, so it may block on them. lmdb-js's
 * asynchronous transactions would hand each batch to a thread of libuv's pool, which hands the
 * callbacks back to this thread and waits for them, commits and syncs, and wakes this thread
 * again: four hand-offs between threads per batch, each a context switch, which cost more CPU than
 * the writes themselves at a thousand commits a second (docs/benchmarks.md, thirteenth pass).
 */
import { format } from "node:util";
import { parentPort } from "node:worker_threads";
import type { RootDatabase } from "lmdb";
import { StoreError } from "../errors.js";
import { applyUnit, type ConversationDbs, conversationDbs, takeUnits } from "./conversation-writes.js";
import { openEnvironment } from "./environment.js";
import { isIoFailure } from "./storage-fault.js";
import type { ConsoleArg, Failure, FromWorker, ToWorker, UnitResult } from "./write-thread.js";

type QueuedUnit = Extract<ToWorker, { type: "units" }>["units"][number];

const port = parentPort;
if (port === null) throw new Error("write-worker.ts runs as a worker thread (write-thread.ts)");

// What libraries write to the console goes to the main thread's console (write-thread.ts,
// relayConsole), which the server routes through its log.
for (const level of ["error", "warn"] as const) {
  console[level] = (...args: unknown[]) =>
    port.postMessage({ type: "console", level, args: args.map(consoleArg) } satisfies FromWorker);
}

function consoleArg(arg: unknown): ConsoleArg {
  if (!(arg instanceof Error)) return { text: typeof arg === "string" ? arg : format(arg) };
  const { code } = arg as { code?: unknown };
  return {
    error: {
      name: arg.name,
      message: arg.message,
      ...(arg.stack !== undefined && { stack: arg.stack }),
      ...((typeof code === "string" || typeof code === "number") && { code }),
    },
  };
}

/** An environment open here: its root and its sub-databases. */
interface OpenEnvironment {
  root: RootDatabase;
  dbs: ConversationDbs;
}
const environments = new Map<number, OpenEnvironment>();
/** Environments whose open failed here, with why: their units are refused. */
const unopened = new Map<number, string>();
/**
 * Units received and not yet applied, by environment, in arrival order. They wait for the next
 * turn of this thread's event loop, so that everything that arrived while it was committing
 * shares the next transaction and its one fsync: the group commit.
 */
const waiting = new Map<number, QueuedUnit[]>();
let drainScheduled = false;

port.on("message", (msg: ToWorker) => {
  switch (msg.type) {
    case "open": {
      try {
        const root = openEnvironment(msg.path, msg.mapSizeBytes);
        environments.set(msg.env, { root, dbs: conversationDbs(root) });
      } catch (err) {
        // The engine opened it on its own thread first, so this is rare (the directory removed in
        // between); its writes are refused, and the other environments here go on.
        unopened.set(msg.env, `the store could not be opened for writing: ${(err as Error).message}`);
      }
      return;
    }
    case "units": {
      const queue = waiting.get(msg.env);
      if (queue === undefined) waiting.set(msg.env, msg.units);
      else for (const unit of msg.units) queue.push(unit);
      if (!drainScheduled) {
        drainScheduled = true;
        setImmediate(drain);
      }
      return;
    }
    case "close":
      close(msg.env);
      return;
    case "crash":
      // Thrown from the message handler, outside any transaction: an uncaught error, which ends
      // this thread as a bug here would (write-thread.ts, crashWriteWorker).
      throw new Error("the write thread was told to crash");
  }
});

/** Applies and answers every environment's waiting units. */
function drain(): void {
  drainScheduled = false;
  for (const env of [...waiting.keys()]) answer(env);
}

/**
 * Applies one environment's waiting units in one transaction and answers them, all but the cursor
 * units the transaction has no room for (takeUnits): those wait for the next turn's transaction,
 * with what arrives meanwhile queued behind them.
 */
function answer(env: number): void {
  const queued = waiting.get(env);
  if (queued === undefined) return;
  const { units, deferred } = takeUnits(queued);
  if (deferred.length === 0) waiting.delete(env);
  else {
    waiting.set(env, deferred);
    if (!drainScheduled) {
      drainScheduled = true;
      setImmediate(drain);
    }
  }
  const open = environments.get(env);
  const results =
    open === undefined
      ? refuseAll(units, {
          kind: "storage",
          message: unopened.get(env) ?? `environment ${env} is not open for writing`,
        })
      : commit(open, units);
  port?.postMessage({ type: "results", env, results } satisfies FromWorker);
}

/**
 * One write transaction: each unit a child transaction, so a refused unit (a seq conflict) is
 * rolled back alone. transactionSync returns once mdb_txn_commit has, which is after the fsync:
 * with overlappingSync (lmdb-js's default) or without, LMDB syncs a transaction opened without
 * MDB_NOSYNC before it writes its meta page.
 */
function commit({ root, dbs }: OpenEnvironment, units: readonly QueuedUnit[]): UnitResult[] {
  const results: UnitResult[] = [];
  try {
    root.transactionSync(() => {
      for (const { id, unit } of units) {
        try {
          const value = root.childTransaction(() => applyUnit(dbs, unit));
          results.push({ id, ok: true, value });
        } catch (err) {
          results.push({ id, ok: false, failure: failureOf(err) });
        }
      }
    });
  } catch (err) {
    // The commit failed (the disk is full, an fsync failed): nothing of the transaction was
    // stored, so every unit of it is refused, those that applied without error included.
    return refuseAll(units, failureOf(err));
  }
  return results;
}

function refuseAll(units: readonly QueuedUnit[], failure: Failure): UnitResult[] {
  return units.map(({ id }) => ({ id, ok: false, failure }));
}

/** Answers what was handed over before the close, then closes the environment. */
function close(env: number): void {
  while (waiting.has(env)) answer(env);
  unopened.delete(env);
  const open = environments.get(env);
  environments.delete(env);
  // Every write here was synchronous and has returned: nothing is left to flush.
  const closed = open === undefined ? Promise.resolve() : open.root.close();
  void closed
    .catch((err: unknown) => console.error("closing the store on the write thread failed", err))
    .finally(() => port?.postMessage({ type: "closed", env } satisfies FromWorker));
}

/** A unit's failure as plain data (write-thread.ts makes the error again on the other side). */
function failureOf(err: unknown): Failure {
  if (err instanceof StoreError) return { kind: "store", storeKind: err.kind, message: err.message };
  if (isIoFailure(err)) return { kind: "storage", message: err.message };
  if (err instanceof Error) return { kind: "error", name: err.name, message: err.message };
  return { kind: "error", name: "Error", message: String(err) };
}
