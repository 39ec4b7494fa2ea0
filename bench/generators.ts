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
}

export function inlineGenerator(input: LoadInput): Generator {
  const load = new Load(input);
  return { connect: () => load.connect(), run: (plan) => load.run(plan), close: () => load.close() };
}

export function workerGenerator(input: LoadInput): Generator {
  const worker = moduleWorker(new URL("./worker.ts", import.meta.url), { workerData: input });
  let pending: { resolve: (v: unknown) => void; reject: (e: Error) => void } | undefined;
  let dead: Error | undefined;
  const fail = (err: Error) => {
    dead ??= err;
    const p = pending;
    pending = undefined;
    p?.reject(err);
  };
  worker.on("message", (msg: { type: string; result?: unknown; error?: string }) => {
    const p = pending;
    pending = undefined;
    if (msg.error !== undefined) p?.reject(new Error(`worker: ${msg.error}`));
    else p?.resolve(msg.result);
  });
  worker.on("error", fail);
  worker.on("exit", (code) => fail(new Error(`load worker exited with code ${code}`)));
  const call = <T>(req: WorkerRequest): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      if (dead !== undefined) {
        reject(dead);
        return;
      }
      pending = { resolve: resolve as (v: unknown) => void, reject };
      worker.postMessage(req);
    });
  return {
    connect: () => call({ type: "connect" }),
    run: (plan) => call({ type: "run", plan }),
    async close() {
      if (dead === undefined) await call({ type: "close" }).catch(() => {});
      await worker.terminate();
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
    }));
}
