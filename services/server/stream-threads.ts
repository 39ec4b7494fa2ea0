import { EventEmitter } from "node:events";
import type * as http2 from "node:http2";
import type { Worker } from "node:worker_threads";
import type { EdgeLimits } from "../common/config.js";
import type { Logger } from "../common/log.js";
import { moduleWorker, siblingModule } from "../common/module-worker.js";
import type { RefusalFields, Refusals } from "../common/refusals.js";
import type { DeviceHttp2Stream, DeviceStreams } from "./device-stream.js";
import { DEVICE_STREAM_PATH } from "./device-stream-request.js";
import {
  FROM_THREAD,
  Inbox,
  Outbox,
  type StreamThreadData,
  type ThreadCommand,
  type ThreadEvent,
  TO_THREAD,
} from "./stream-thread-protocol.js";

/**
 * The stream port (SWITCHBOARD_STREAM_PORT): device streams served on a worker thread
 * (stream-thread.ts), so that at many connections the main thread does not spend its turns in
 * the sockets' reads and HTTP/2. That thread hands each stream's bytes here, where a stand-in
 * for node:http2's stream (ThreadStream) feeds the device stream's fast path (device-stream.ts)
 * unchanged: same authentication, frames, session, errors and trailers as on the main port.
 *
 * Measured in docs/benchmarks.md (twenty-fourth pass): a third less main-thread work per
 * message; 10,000 devices at 5,000 msgs/s taken where one thread fell into the pushed-back mode;
 * at 1,000 devices past capacity on 2 cores, less taken (two hand-offs per answer, and a third
 * busy thread on cores already full). So it is an option, not the default.
 */

/**
 * Bytes written to one stream and not yet taken off its buffer by the stream thread, past which
 * `write` returns false until they are (as node:http2's own stream does at its high-water mark).
 */
const WRITE_HIGH_WATER = 64 * 1024;
/** How long the thread has to start listening, and to close. */
const START_TIMEOUT_MS = 10_000;
const CLOSE_TIMEOUT_MS = 5_000;

export interface StreamPort {
  url: string;
  port: number;
  /** Stops accepting, ends the thread's connections and the thread. */
  close(): Promise<void>;
  /** For tests: makes the thread fail as an uncaught error would. */
  crash(): void;
}

export interface StreamPortOptions {
  host: string;
  port: number;
  limits: EdgeLimits;
  streams: DeviceStreams;
  refusals: Refusals;
  log: Logger;
  /** Called when the thread stops without being asked to: the port is gone. */
  failed: (reason: string) => void;
}

/**
 * A device stream served on the stream thread, as device-stream.ts sees it: the events and
 * methods of node:http2's server stream it uses, each carried to the thread in the next batch.
 */
class ThreadStream extends EventEmitter implements DeviceHttp2Stream {
  destroyed = false;
  closed = false;
  headersSent = false;
  readableEnded = false;
  readonly session: { socket: { remoteAddress: string | undefined } };
  private unwritten = 0;
  private wantsDrain = false;
  private reading = false;
  private trailers: http2.OutgoingHttpHeaders = {};

  constructor(
    private readonly outbox: Outbox,
    private readonly id: number,
    remoteAddress: string | undefined,
  ) {
    super();
    this.session = { socket: { remoteAddress } };
  }

  respond(headers: http2.OutgoingHttpHeaders): void {
    this.headersSent = true;
    this.outbox.op(TO_THREAD.respond, this.id, String(headers["content-type"]));
  }

  write(chunk: Uint8Array): boolean {
    if (this.closed) return false;
    this.unwritten += chunk.length;
    this.outbox.data(TO_THREAD.write, this.id, chunk);
    if (this.unwritten < WRITE_HIGH_WATER) return true;
    this.wantsDrain = true;
    return false;
  }

  sendTrailers(trailers: http2.OutgoingHttpHeaders): void {
    this.trailers = trailers;
  }

  /** Ends the answer: the trailers are asked for now, as node:http2 asks once the data is out. */
  end(): void {
    if (this.closed) return;
    this.headersSent = true;
    this.emit("wantTrailers");
    this.outbox.op(TO_THREAD.end, this.id, this.trailers);
  }

  pause(): void {
    if (!this.reading) return;
    this.reading = false;
    this.outbox.op(TO_THREAD.pause, this.id);
  }

  /** The thread reads the body once something here listens for it. */
  // biome-ignore lint/suspicious/noExplicitAny: EventEmitter's own listener type, overridden as is.
  override on(event: string | symbol, listener: (...args: any[]) => void): this {
    super.on(event, listener);
    if (event === "data" && !this.reading && !this.closed && !this.readableEnded) {
      this.reading = true;
      this.outbox.op(TO_THREAD.resume, this.id);
    }
    return this;
  }

  /** Body bytes from the thread. After reading stopped nothing listens, and none are wanted. */
  received(chunk: Buffer): void {
    if (this.reading) this.emit("data", chunk);
  }

  ended(): void {
    this.readableEnded = true;
    this.emit("end");
  }

  written(bytes: number): void {
    this.unwritten -= bytes;
    if (this.wantsDrain && this.unwritten < WRITE_HIGH_WATER) {
      this.wantsDrain = false;
      this.emit("drain");
    }
  }

  gone(): void {
    if (this.closed) return;
    this.closed = true;
    this.destroyed = true;
    this.reading = false;
    this.emit("close");
  }
}

/** Starts the stream thread and resolves once it listens. */
export async function startStreamPort(options: StreamPortOptions): Promise<StreamPort> {
  const { refusals, streams, log } = options;
  const workerData: StreamThreadData = { host: options.host, port: options.port, limits: options.limits };
  const worker: Worker = moduleWorker(siblingModule(import.meta.url, "stream-thread"), {
    workerData,
    stdin: false,
  });
  const outbox = new Outbox((batch, transfer) => worker.postMessage(batch satisfies ThreadCommand, transfer));
  const open = new Map<number, ThreadStream>();
  let closing = false;

  const inbox = new Inbox(
    (kind, id, a, b, batch) => {
      if (kind === FROM_THREAD.open) {
        const [contentType, authorization, timeout, address] = a as (string | null)[];
        const stream = new ThreadStream(outbox, id, address ?? undefined);
        open.set(id, stream);
        const headers: http2.IncomingHttpHeaders = {
          ":method": "POST",
          ":path": DEVICE_STREAM_PATH,
          "content-type": contentType ?? "application/grpc",
        };
        if (authorization !== null) headers.authorization = authorization;
        if (timeout !== null) headers["grpc-timeout"] = timeout;
        streams.serve(stream, headers);
        return;
      }
      if (kind === FROM_THREAD.refused) {
        const [reason, message, fields] = a as [string, string, RefusalFields];
        refusals.refuse(reason, message, fields);
        // Counted as a refusal, but a fault in the stream port's own HTTP/2, not the client's:
        // it goes to the error log too, unfolded.
        if (reason === "http2_internal_error") log.error({ ...fields, refusal: reason }, message);
        return;
      }
      const stream = open.get(id);
      if (stream === undefined) return;
      switch (kind) {
        case FROM_THREAD.data: {
          const { data } = batch;
          stream.received(Buffer.from(data.buffer, data.byteOffset + (a as number), b));
          break;
        }
        case FROM_THREAD.end:
          stream.ended();
          break;
        case FROM_THREAD.written:
          stream.written(a as number);
          break;
        case FROM_THREAD.close:
          open.delete(id);
          stream.gone();
          break;
      }
    },
    {
      // The sends it carries waited that long before the gateway could read them.
      begun: (_batch, waitedMs) => streams.handedOver(waitedMs),
      // Handled, all of it: the thread may send that much more.
      finished: ({ data }) => {
        if (data.byteLength > 0) outbox.op(TO_THREAD.consumed, 0, data.byteLength);
      },
    },
  );

  let listened = false;
  let listening: (port: number) => void = () => {};
  let stopped: (reason: string) => void = () => {};
  const started = new Promise<number>((resolve, reject) => {
    listening = resolve;
    stopped = (reason) => reject(new Error(`the stream thread stopped before it listened: ${reason}`));
  });
  const exited = new Promise<void>((resolve) => worker.once("exit", () => resolve()));
  let stopReason: string | undefined;
  const stop = (reason: string) => {
    if (stopReason !== undefined) return;
    stopReason = reason;
    stopped(reason);
    // Its streams are gone with it; their sessions end as a lost connection's do.
    inbox.clear();
    for (const stream of open.values()) stream.gone();
    open.clear();
    // A thread that never listened fails its start instead (the promise below).
    if (!closing && listened) options.failed(reason);
  };
  worker.on("message", (msg: ThreadEvent) => {
    if (msg.type === "batch") {
      inbox.push(msg);
    } else {
      listened = true;
      listening(msg.port);
    }
  });
  worker.on("error", (err) => {
    log.error({ err }, "the stream thread failed");
    stop(err.message);
  });
  worker.on("exit", (code) => stop(`exit code ${code}`));

  const deadline = setTimeout(() => void worker.terminate(), START_TIMEOUT_MS);
  let port: number;
  try {
    port = await started;
  } finally {
    clearTimeout(deadline);
  }
  const host = options.host.includes(":") ? `[${options.host}]` : options.host;
  return {
    url: `http://${host}:${port}`,
    port,
    async close() {
      if (stopReason !== undefined) return;
      closing = true;
      // What the thread read before it was told to close is handled, as it would have been.
      inbox.drain();
      outbox.flush();
      worker.postMessage({ type: "close" } satisfies ThreadCommand);
      const force = setTimeout(() => void worker.terminate(), CLOSE_TIMEOUT_MS);
      await exited;
      clearTimeout(force);
    },
    crash() {
      worker.postMessage({ type: "crash" } satisfies ThreadCommand);
    },
  };
}

/** How long after a failure the stream thread is started again. */
const RESTART_DELAY_MS = 1000;

/**
 * The stream port, kept up: a stream thread that fails (an uncaught error, its heap exhausted)
 * takes its connections with it, as a lost connection would (the devices reconnect and resume),
 * and is started again on the same port a second later, and again each second until it listens.
 */
export async function serveStreamPort(options: Omit<StreamPortOptions, "failed">): Promise<StreamPort> {
  const { log } = options;
  let closed = false;
  // Set once the first thread listens; a port that cannot be served at start fails the start.
  let current: StreamPort | undefined;
  let retry: NodeJS.Timeout | undefined;
  const failed = (reason: string) => {
    log.error({ reason, port: current?.port }, "the stream thread stopped; starting it again");
    schedule();
  };
  const schedule = () => {
    if (closed || current === undefined) return;
    const port = current.port;
    retry = setTimeout(() => {
      retry = undefined;
      startStreamPort({ ...options, port, failed }).then(
        (started) => {
          if (closed) void started.close();
          else {
            current = started;
            log.info({ url: started.url }, "the stream thread listens again");
          }
        },
        (err: unknown) => {
          log.error({ err, port }, "the stream thread could not start again");
          schedule();
        },
      );
    }, RESTART_DELAY_MS);
  };
  const first = await startStreamPort({ ...options, failed });
  current = first;
  return {
    url: first.url,
    port: first.port,
    async close() {
      closed = true;
      clearTimeout(retry);
      await current?.close();
    },
    crash() {
      current?.crash();
    },
  };
}
