import { parentPort, workerData } from "node:worker_threads";
import { Load, type LoadInput, type RunPlan } from "./load.js";

/** Messages from the parent; answered with the same `type` plus the result. */
export type WorkerRequest =
  | { type: "connect" }
  | { type: "run"; plan: RunPlan }
  | { type: "close" }
  /** A child process's first message: what a worker thread gets as its workerData. */
  | { type: "input"; input: LoadInput };

type Answer = { type: WorkerRequest["type"]; result?: unknown; error?: string | undefined };

// A load generator runs as a worker thread (generators.ts, workerGenerator) or, for more devices
// than one process may hold sockets for, as a child process (processGenerator): the same requests
// over the thread's port or the process's IPC channel.
const port = parentPort;
const send = process.send?.bind(process);
const channel =
  port !== null
    ? {
        on: (f: (msg: WorkerRequest) => void) => port.on("message", f),
        post: (a: Answer) => port.postMessage(a),
      }
    : send !== undefined
      ? { on: (f: (msg: WorkerRequest) => void) => process.on("message", f), post: (a: Answer) => send(a) }
      : undefined;
if (channel === undefined)
  throw new Error("bench/worker.ts runs only as a worker thread or a forked process");
// A child whose parent is gone (killed, crashed) has no one to answer: it goes too, closing its sockets.
if (port === null) process.on("disconnect", () => process.exit(0));

let load: Load | undefined = port !== null ? new Load(workerData as LoadInput) : undefined;
channel.on((msg) => {
  if (msg.type === "input") {
    load = new Load(msg.input);
    channel.post({ type: msg.type });
    return;
  }
  const l = load;
  if (l === undefined) {
    channel.post({ type: msg.type, error: "the load's input has not been sent" });
    return;
  }
  const work = msg.type === "connect" ? l.connect() : msg.type === "run" ? l.run(msg.plan) : l.close();
  work.then(
    (result) => channel.post({ type: msg.type, result }),
    (err: unknown) => channel.post({ type: msg.type, error: err instanceof Error ? err.stack : String(err) }),
  );
});
