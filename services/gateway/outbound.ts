import { create } from "@bufbuild/protobuf";
import type { ConnectError } from "@connectrpc/connect";
import type { Entry } from "../../gen/switchboard/v1/entry_pb.js";
import { type ConnectResponse, ConnectResponseSchema } from "../../gen/switchboard/v1/gateway_pb.js";

/**
 * The frames waiting to be written to one device. Bounded: `offer` refuses when full, and the
 * caller falls back to the log (the device catches up later). Answers to the device's own
 * requests use `force`, which is bounded by the per-stream limit on requests in flight.
 */
export class Outbound {
  private readonly items: ConnectResponse[] = [];
  private wakeReader: (() => void) | undefined;
  private spaceWaiters: Array<() => void> = [];
  private ended = false;
  private error: ConnectError | undefined;

  constructor(private readonly capacity: number) {}

  /** Frames waiting. */
  get size(): number {
    return this.items.length;
  }

  /** True once end() was called. */
  get closed(): boolean {
    return this.ended;
  }

  /** Queues a frame if there is room. */
  offer(frame: ConnectResponse): boolean {
    if (this.ended) return true;
    if (this.items.length >= this.capacity) return false;
    this.push(frame);
    return true;
  }

  /**
   * Queues entries, joining them to the last queued message frame while it has room (it has not
   * been written yet, so it can still grow): under load many entries share one frame, which
   * saves a protobuf envelope, an HTTP/2 DATA frame and a trip through the stream machinery per
   * entry. Returns false when the entries did not fit.
   */
  offerEntries(entries: Entry[], maxPerFrame: number): boolean {
    if (this.ended) return true;
    const last = this.items[this.items.length - 1];
    if (last?.frame.case === "message" && last.frame.value.entries.length + entries.length <= maxPerFrame) {
      last.frame.value.entries.push(...entries);
      return true;
    }
    return this.offer(create(ConnectResponseSchema, { frame: { case: "message", value: { entries } } }));
  }

  /** Queues a frame regardless of room. */
  force(frame: ConnectResponse): void {
    if (!this.ended) this.push(frame);
  }

  /** Resolves when there is room for at least one frame, or the queue ended. */
  async space(): Promise<void> {
    while (!this.ended && this.items.length >= this.capacity) {
      await new Promise<void>((resolve) => this.spaceWaiters.push(resolve));
    }
  }

  /** Ends the stream: frames already queued are written first, then the error (if any) is sent. */
  end(error?: ConnectError): void {
    if (this.ended) return;
    this.ended = true;
    this.error = error;
    this.wake();
    for (const w of this.spaceWaiters.splice(0)) w();
  }

  /** Ends at once, dropping queued frames. */
  abort(error: ConnectError): void {
    this.items.length = 0;
    this.end(error);
  }

  /** Yields frames until end(); then throws the end error if there is one. */
  async *drain(): AsyncGenerator<ConnectResponse> {
    for (;;) {
      const frame = this.items.shift();
      if (frame !== undefined) {
        if (this.spaceWaiters.length > 0 && this.items.length < this.capacity) {
          for (const w of this.spaceWaiters.splice(0)) w();
        }
        yield frame;
        continue;
      }
      if (this.ended) break;
      await new Promise<void>((resolve) => {
        this.wakeReader = resolve;
      });
    }
    if (this.error !== undefined) throw this.error;
  }

  private push(frame: ConnectResponse): void {
    this.items.push(frame);
    this.wake();
  }

  private wake(): void {
    const wake = this.wakeReader;
    this.wakeReader = undefined;
    wake?.();
  }
}
