import { fork } from "node:child_process";
import { fileURLToPath } from "node:url";
import { moduleWorker } from "../services/common/module-worker.js";
import { Load, type LoadInput, type LoadStats, type RunPlan } from "./load.js";
import type { Options } from "./options.js";
import type { BenchConversation, setUp } from "./setup.js";
import type { WorkerRequest } from "./worker.js";

/** A load generator on the main thread or in a worker, behind one interface. */
export interface Generator {
  connect(): Promise<{ failed: number; reasons: string[] }>;
  run(plan: RunPlan): Promise<LoadStats>;
  close(): Promise<void>;
  /** The generator's process, when it runs in one of its own (its CPU is the bench client's too). */
  pid?: number;
}

export function inlineGenerator(input: LoadInput): Generator {
  const load = new Load(input);
  return { connect: () => load.connect(), run: (plan) => load.run(plan), close: () => load.close() };
}

export function workerGenerator(input: LoadInput): Generator {
  const worker = moduleWorker(new URL("./worker.ts", import.meta.url), { workerData: input });
  return remote({
    post: (req) => worker.postMessage(req),
    listen: (onMessage, onFail) => {
      worker.on("message", onMessage);
      worker.on("error", onFail);
      worker.on("exit", (code) => onFail(new Error(`load worker exited with code ${code}`)));
    },
    stop: async () => {
      await worker.terminate();
    },
  });
}

/**
 * A load generator in a child process of its own. One socket per device, and a process may open
 * at most its open-file limit (20,000 on the machine docs/benchmarks.md describes, which a process
 * without CAP_SYS_RESOURCE cannot raise): more devices than that need more processes.
 */
export async function processGenerator(input: LoadInput): Promise<Generator> {
  const child = fork(fileURLToPath(new URL("./worker.ts", import.meta.url)), [], {
    execArgv: ["--import", "tsx"],
    // Structured clone, as a worker thread's messages: the run's histograms are typed arrays.
    serialization: "advanced",
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  const generator = remote(
    {
      post: (req) => child.send(req),
      listen: (onMessage, onFail) => {
        child.on("message", onMessage);
        child.on("error", onFail);
        child.on("exit", (code, signal) =>
          onFail(new Error(`load process exited with ${signal ?? `code ${code}`}`)),
        );
      },
      stop: async () => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
        child.disconnect();
        // It exits when its channel closes; a child that does not within 5 s is killed.
        const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
        await exited;
        clearTimeout(timer);
      },
    },
    child.pid,
  );
  await generator.send({ type: "input", input });
  return generator;
}

interface Endpoint {
  post(req: WorkerRequest): void;
  listen(onMessage: (msg: WorkerAnswer) => void, onFail: (err: Error) => void): void;
  stop(): Promise<void>;
}

type WorkerAnswer = { type: string; result?: unknown; error?: string };

/** A generator in a worker thread or child process: one request at a time, answered in turn. */
function remote(endpoint: Endpoint, pid?: number): Generator & { send<T>(req: WorkerRequest): Promise<T> } {
  let pending: { resolve: (v: unknown) => void; reject: (e: Error) => void } | undefined;
  let dead: Error | undefined;
  const fail = (err: Error) => {
    dead ??= err;
    const p = pending;
    pending = undefined;
    p?.reject(err);
  };
  endpoint.listen((msg) => {
    const p = pending;
    pending = undefined;
    if (msg.error !== undefined) p?.reject(new Error(`load generator: ${msg.error}`));
    else p?.resolve(msg.result);
  }, fail);
  const send = <T>(req: WorkerRequest): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      if (dead !== undefined) {
        reject(dead);
        return;
      }
      pending = { resolve: resolve as (v: unknown) => void, reject };
      endpoint.post(req);
    });
  return {
    ...(pid !== undefined && { pid }),
    send,
    connect: () => send({ type: "connect" }),
    run: (plan) => send({ type: "run", plan }),
    async close() {
      if (dead === undefined) await send({ type: "close" }).catch(() => {});
      await endpoint.stop();
    },
  };
}

/** Splits whole conversations over generators so both ends of each share a clock. */
export function split(
  opts: Options,
  devices: Awaited<ReturnType<typeof setUp>>["devices"],
  conversations: BenchConversation[],
  urls: string[],
): LoadInput[] {
  const count = Math.max(1, opts.workers);
  const parts = Array.from({ length: count }, () => ({
    devices: [] as typeof devices,
    conversations: [] as BenchConversation[],
  }));
  conversations.forEach((c, i) => {
    const part = parts[i % count]!;
    const members = c.members.map((m) => {
      part.devices.push(devices[m]!);
      return part.devices.length - 1;
    });
    part.conversations.push({ conversationId: c.conversationId, members });
  });
  const connected = parts.reduce((n, p) => n + p.devices.length, 0);
  return parts
    .filter((p) => p.devices.length > 0)
    .map((p) => ({
      urls,
      client: opts.client,
      devices: p.devices,
      conversations: p.conversations,
      rate: opts.rate === 0 ? 0 : (opts.rate * p.devices.length) / connected,
      inflight: opts.inflight,
      payloadBytes: opts.payload,
      ackIntervalMs: opts.ackInterval,
      echo: opts.echo,
      idle: opts.mode === "idle",
      connectConcurrency: opts.connectConcurrency,
      nice: opts.benchNice,
    }));
}
