import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  type ConnectRequest,
  ConnectRequestSchema,
  type ConnectResponse,
} from "../../gen/switchboard/v1/gateway_pb.js";
import { Backoff } from "../backoff.js";
import { FrameQueue, isCredentialRejected, isNetworkFailure } from "../transport.js";
import type { ClientContext } from "./context.js";

/** How close() waits for the server to end the stream after the client half-closed it. */
const CLOSE_GRACE_MS = 1_000;

/** A frame the client puts on the stream. */
export type RequestFrame = NonNullable<MessageInitShape<typeof ConnectRequestSchema>["frame"]>;

/** One connection of the stream (a new one after every reconnect). */
export interface ActiveStream {
  queue: FrameQueue<ConnectRequest>;
  abort: AbortController;
  /** True once the server accepted the stream (its ready frame). */
  ready: boolean;
  /** When the server accepted it, in milliseconds since the epoch. */
  readyAtMs: number | undefined;
  /** Why the client ended the stream, when it did. */
  endReason: ConnectError | undefined;
  /** Sync requests sent on this stream and not answered yet, by request id. */
  syncRequests: Map<number, { conversationId: string; afterSeq: bigint }>;
}

/** What the stream loop asks of the rest of the client. */
export interface StreamHooks {
  /** A frame from the server on stream s. */
  frame(s: ActiveStream, frame: ConnectResponse): void;
  /** A promise to wait on before reading on when the app is far behind (back-pressure). */
  backPressure(): Promise<void> | undefined;
  /** Stream s ended: what was on it goes back to wait for the next one. */
  ended(s: ActiveStream): void;
  /** The client stops for good: unanswered sends are settled with the error. */
  stopped(error: ConnectError): void;
}

interface FirstReady {
  promise: Promise<void>;
  resolve(): void;
  reject(err: ConnectError): void;
}

/**
 * Keeps one stream up: connects, resumes after failures with backoff (at once after an expired
 * token), pings, presumes a silent stream dead, and stops for good on refusals a reconnect cannot
 * fix (revoked device, a newer stream of this device elsewhere).
 */
export class StreamLoop {
  private stream: ActiveStream | undefined;
  private loop: Promise<void> | undefined;
  private wakeSleep: (() => void) | undefined;
  private firstReady: FirstReady | undefined;
  private readonly backoff: Backoff;

  constructor(
    private readonly ctx: ClientContext,
    private readonly hooks: StreamHooks,
  ) {
    this.backoff = new Backoff(ctx.tuning.backoffBaseMs, ctx.tuning.backoffCapMs);
  }

  /** The current stream, when the server has accepted it. */
  get ready(): ActiveStream | undefined {
    return this.stream?.ready === true ? this.stream : undefined;
  }

  /** True once connect() has been called (the first connection is under way or made). */
  get started(): boolean {
    return this.firstReady !== undefined;
  }

  /** Settles when the server accepts the first stream, or the client stops first. */
  get firstAccepted(): Promise<void> | undefined {
    return this.firstReady?.promise;
  }

  /** Creates the promise of the first acceptance (before the profile is locked). */
  prepare(): void {
    let resolve!: () => void;
    let reject!: (err: ConnectError) => void;
    const promise = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    promise.catch(() => {});
    this.firstReady = { promise, resolve, reject };
  }

  /** Starts the loop (after prepare() and the profile's lock). */
  start(): void {
    this.loop = this.runLoop();
  }

  /** The server accepted stream s (its ready frame). */
  accepted(s: ActiveStream): void {
    s.ready = true;
    s.readyAtMs = Date.now();
  }

  /** Lets connect() callers waiting for the first acceptance go on. */
  resolveFirst(): void {
    this.firstReady?.resolve();
  }

  /** Puts a frame on stream s. */
  push(s: ActiveStream, frame: RequestFrame): void {
    s.queue.push(create(ConnectRequestSchema, { frame }));
  }

  /** Drops the current stream and connects again at once. */
  reconnect(): void {
    this.backoff.reset();
    const s = this.stream;
    if (s !== undefined) this.endStream(s, new ConnectError("reconnect requested", Code.Unavailable));
    this.wakeSleep?.();
  }

  /** Cuts a backoff wait short (the client is closing). */
  wake(): void {
    this.wakeSleep?.();
  }

  /**
   * Ends the loop for close(): half-closes the stream first so the last acks reach the server, and
   * aborts it if the server does not end it in time.
   */
  async finish(): Promise<void> {
    const s = this.stream;
    if (s !== undefined) {
      s.endReason ??= new ConnectError("client closed", Code.Canceled);
      s.queue.end();
      const ended = await Promise.race([
        this.loop?.then(() => true),
        new Promise<false>((resolve) => setTimeout(() => resolve(false), CLOSE_GRACE_MS).unref()),
      ]);
      if (ended !== true) this.endStream(s, s.endReason);
    }
    await this.loop;
  }

  /** Rejects connect() callers still waiting for the first acceptance. */
  rejectFirst(error: ConnectError): void {
    this.firstReady?.reject(error);
  }

  private async runLoop(): Promise<void> {
    let unauthenticatedInARow = 0;
    while (!this.ctx.closed) {
      const s: ActiveStream = {
        queue: new FrameQueue(),
        abort: new AbortController(),
        ready: false,
        readyAtMs: undefined,
        endReason: undefined,
        syncRequests: new Map(),
      };
      this.stream = s;
      let error: ConnectError | undefined;
      try {
        await this.runStream(s);
        error = s.endReason ?? new ConnectError("the server ended the stream", Code.Unavailable);
      } catch (err) {
        error = s.endReason ?? ConnectError.from(err);
      }
      this.streamEnded(s);
      if (this.ctx.closed) {
        this.ctx.events.emit("disconnected", { error: undefined, retryInMs: undefined });
        break;
      }
      // Only refusals with no accepted stream in between count as "the device is refused".
      if (s.ready) unauthenticatedInARow = 0;
      const fatal = fatalError(error, unauthenticatedInARow);
      if (fatal !== undefined) {
        this.stop(fatal);
        break;
      }
      let delay: number;
      if (error.code === Code.Unauthenticated) {
        unauthenticatedInARow += 1;
        // The token may simply have expired: get a new one and try again right away.
        this.ctx.conn.tokens?.invalidate();
        delay = 0;
      } else {
        const stable = s.readyAtMs !== undefined && Date.now() - s.readyAtMs >= this.ctx.tuning.stableAfterMs;
        if (stable) this.backoff.reset();
        delay = this.backoff.next();
      }
      this.ctx.events.emit("disconnected", { error, retryInMs: delay });
      await this.sleep(delay);
    }
  }

  private stop(error: ConnectError): void {
    const ctx = this.ctx;
    ctx.fatal = error;
    ctx.closed = true;
    this.hooks.stopped(error);
    ctx.events.emit("disconnected", { error, retryInMs: undefined });
    ctx.events.emit("error", { error, fatal: true });
    this.firstReady?.reject(error);
    ctx.conn.close();
    void ctx.profile.unlock();
  }

  private sleep(ms: number): Promise<void> {
    if (ms <= 0 || this.ctx.closed) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.wakeSleep = () => {
        this.wakeSleep = undefined;
        done();
      };
    });
  }

  private async runStream(s: ActiveStream): Promise<void> {
    const { pingIntervalMs, deadAfterMs } = this.ctx.tuning;
    let lastFrameAtMs = Date.now();
    let lastPingAtMs = Date.now();
    let nonce = 0n;
    const tick = Math.max(10, Math.min(1_000, pingIntervalMs / 2, deadAfterMs / 4));
    const watchdog = setInterval(() => {
      const now = Date.now();
      if (now - lastFrameAtMs >= deadAfterMs) {
        this.endStream(
          s,
          new ConnectError("no frame from the server in time; stream presumed dead", Code.Unavailable),
        );
        return;
      }
      if (s.ready && now - lastPingAtMs >= pingIntervalMs) {
        lastPingAtMs = now;
        nonce += 1n;
        this.push(s, { case: "ping", value: { nonce } });
      }
    }, tick);
    try {
      const responses = this.ctx.conn.gateway.connect(s.queue, { signal: s.abort.signal, timeoutMs: 0 });
      for await (const frame of responses) {
        lastFrameAtMs = Date.now();
        this.hooks.frame(s, frame);
        // Back-pressure: a slow app slows the stream rather than growing memory.
        const behind = this.hooks.backPressure();
        if (behind !== undefined) await behind;
      }
    } finally {
      clearInterval(watchdog);
      s.queue.end();
    }
  }

  private endStream(s: ActiveStream, reason: ConnectError): void {
    s.endReason ??= reason;
    s.queue.end();
    s.abort.abort(reason);
  }

  private streamEnded(s: ActiveStream): void {
    if (this.stream === s) this.stream = undefined;
    s.ready = false;
    this.hooks.ended(s);
  }
}

/** The refusals that end the client for good rather than call for a reconnect. */
function fatalError(error: ConnectError, unauthenticatedInARow: number): ConnectError | undefined {
  if (isCredentialRejected(error)) return error;
  // Another process streams as this device and the server closed our (older) stream for it;
  // reconnecting would only push that one out in turn, back and forth. A connection reset also
  // arrives as ABORTED (from connect-node, when a gateway dies); that one calls for a reconnect.
  if (error.code === Code.Aborted && !isNetworkFailure(error)) {
    return new ConnectError(
      `this device opened a newer stream elsewhere: ${error.rawMessage}`,
      Code.Aborted,
      undefined,
      undefined,
      error,
    );
  }
  // A second refusal right after a fresh token: the device itself is no longer accepted.
  if (error.code === Code.Unauthenticated && unauthenticatedInARow >= 1) return error;
  return undefined;
}
