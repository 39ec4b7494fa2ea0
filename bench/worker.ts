import { parentPort, workerData } from "node:worker_threads";
import { Load, type LoadInput, type RunPlan } from "./load.js";

/** Messages from the parent; answered with the same `type` plus the result. */
export type WorkerRequest = { type: "connect" } | { type: "run"; plan: RunPlan } | { type: "close" };

const port = parentPort;
if (port === null) throw new Error("bench/worker.ts runs only as a worker thread");
const load = new Load(workerData as LoadInput);
port.on("message", (msg: WorkerRequest) => {
  const work =
    msg.type === "connect" ? load.connect() : msg.type === "run" ? load.run(msg.plan) : load.close();
  work.then(
    (result) => port.postMessage({ type: msg.type, result }),
    (err: unknown) =>
      port.postMessage({ type: msg.type, error: err instanceof Error ? err.stack : String(err) }),
  );
});
