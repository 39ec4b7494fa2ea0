/**
 * The write thread's worker (write-thread.ts): applies the conversation port's write units to the
 * LMDB environments the engines of this process opened, each unit as a child transaction of
 * lmdb-js's group commit, in the order they arrive, and answers each "units" message once all of
 * its units are committed and flushed.
 */
import { format } from "node:util";
import { parentPort } from "node:worker_threads";
import type { RootDatabase } from "lmdb";
import { StoreError } from "../errors.js";
import { applyUnit, type ConversationDbs, conversationDbs } from "./conversation-writes.js";
import { openEnvironment } from "./environment.js";
import { isIoFailure } from "./storage-fault.js";
import type { ConsoleArg, Failure, FromWorker, ToWorker, UnitResult } from "./write-thread.js";

/** How long a failed commit's cause may take to arrive before the failure is reported without it. */
const CAUSE_WAIT_MS = 1_000;

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

/** An environment open here: its root, its sub-databases, and its answers still on their way. */
interface OpenEnvironment {
  root: RootDatabase;
  dbs: ConversationDbs;
  answering: Set<Promise<void>>;
}
const environments = new Map<number, OpenEnvironment>();
/** Environments whose open failed here, with why: their units are refused. */
const unopened = new Map<number, string>();

port.on("message", (msg: ToWorker) => {
  switch (msg.type) {
    case "open": {
      try {
        const root = openEnvironment(msg.path, msg.mapSizeBytes);
        environments.set(msg.env, { root, dbs: conversationDbs(root), answering: new Set() });
      } catch (err) {
        // The engine opened it on its own thread first, so this is rare (the directory removed in
        // between); its writes are refused, and the other environments here go on.
        unopened.set(msg.env, `the store could not be opened for writing: ${(err as Error).message}`);
      }
      return;
    }
    case "units": {
      const open = environments.get(msg.env);
      if (open === undefined) {
        const message = unopened.get(msg.env) ?? `environment ${msg.env} is not open for writing`;
        const failure: Failure = { kind: "storage", message };
        const results = msg.units.map(({ id }): UnitResult => ({ id, ok: false, failure }));
        port.postMessage({ type: "results", env: msg.env, results } satisfies FromWorker);
        return;
      }
      const { root, dbs, answering } = open;
      // Queued in one synchronous pass, so they share the next transaction (and its one fsync).
      const results = msg.units.map(({ id, unit }) =>
        root
          .childTransaction(() => applyUnit(dbs, unit))
          .then(
            (value): UnitResult => ({ id, ok: true, value }),
            async (err: unknown): Promise<UnitResult> => ({ id, ok: false, failure: await failureOf(err) }),
          ),
      );
      const answered = Promise.all(results).then((r) =>
        port.postMessage({ type: "results", env: msg.env, results: r } satisfies FromWorker),
      );
      answering.add(answered);
      void answered.finally(() => answering.delete(answered));
      return;
    }
    case "close":
      void close(msg.env);
  }
});

async function close(env: number): Promise<void> {
  unopened.delete(env);
  const open = environments.get(env);
  if (open !== undefined) {
    environments.delete(env);
    const { root, answering } = open;
    await Promise.allSettled(answering);
    // As LmdbStoreEngine.close: a failed transaction's flush promise never settles, and close()
    // waits for the latest one; an empty transaction replaces it with one that does.
    await root.childTransaction(() => {}).catch(() => {});
    await root.flushed;
    await root.close();
  }
  port?.postMessage({ type: "closed", env } satisfies FromWorker);
}

/** A unit's failure as plain data (write-thread.ts makes the error again on the other side). */
async function failureOf(err: unknown): Promise<Failure> {
  if (err instanceof StoreError) return { kind: "store", storeKind: err.kind, message: err.message };
  if (isIoFailure(err)) {
    const { commitError } = err as { commitError?: Promise<never> };
    // lmdb-js rejects the cause separately, once its write thread reports it; it must be observed
    // here, or it would be an unhandled rejection, which ends the worker.
    const detail =
      commitError === undefined
        ? undefined
        : await Promise.race([
            commitError.then(
              () => undefined,
              (cause: unknown) => (cause instanceof Error ? cause.message : String(cause)),
            ),
            new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), CAUSE_WAIT_MS).unref()),
          ]);
    return { kind: "storage", message: err.message, ...(detail !== undefined && { detail }) };
  }
  if (err instanceof Error) return { kind: "error", name: err.name, message: err.message };
  return { kind: "error", name: "Error", message: String(err) };
}
