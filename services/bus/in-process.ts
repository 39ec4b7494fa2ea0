import type { BusEvent, DeliveryBatch } from "../../gen/switchboard/internal/v1/events_pb.js";
import type { Logger } from "../common/log.js";
import type { DeliveryChannel, EventBus, Unsubscribe } from "./types.js";

type Handler<T> = (value: T) => void;

function subscribe<T>(set: Set<Handler<T>>, handler: Handler<T>): Unsubscribe {
  set.add(handler);
  return () => {
    set.delete(handler);
  };
}

/**
 * The embedded bus. Committed events are handed to the consumer in publish order, one batch at
 * a time, coalescing whatever was published while the previous batch was being handled; the
 * queue is bounded by the sequencer's own group commit (it publishes after each commit).
 *
 * A batch runs from the bus to the sockets in one event-loop task (the consumers answer in
 * microtasks), thousands of events past capacity. Slicing it, with a turn of the loop between
 * slices, shortened the loop's longest delay but let new sends and acks run ahead of the backlog:
 * deliveries fell seconds behind acks and half the 10,000 msgs/s went unacked
 * (docs/benchmarks.md, eighteenth pass). Whole, it holds intake back while deliveries drain.
 */
export class InProcessBus implements EventBus {
  private readonly committedHandlers: Array<(events: readonly BusEvent[]) => Promise<void>> = [];
  private readonly ephemeralHandlers = new Set<Handler<readonly BusEvent[]>>();
  private readonly broadcastHandlers = new Set<Handler<readonly BusEvent[]>>();
  private queue: BusEvent[] = [];
  private draining = false;
  private next = 0;
  private closed = false;

  constructor(private readonly log: Logger) {}

  async publishCommitted(events: readonly BusEvent[]): Promise<void> {
    if (this.closed) return;
    this.queue.push(...events);
    if (!this.draining) void this.drain();
  }

  consumeCommitted(handler: (events: readonly BusEvent[]) => Promise<void>): Unsubscribe {
    this.committedHandlers.push(handler);
    if (this.queue.length > 0 && !this.draining) void this.drain();
    return () => {
      const i = this.committedHandlers.indexOf(handler);
      if (i >= 0) this.committedHandlers.splice(i, 1);
    };
  }

  publishEphemeral(events: readonly BusEvent[]): void {
    for (const handler of this.ephemeralHandlers) handler(events);
  }

  consumeEphemeral(handler: (events: readonly BusEvent[]) => void): Unsubscribe {
    return subscribe(this.ephemeralHandlers, handler);
  }

  broadcast(events: readonly BusEvent[]): void {
    for (const handler of this.broadcastHandlers) handler(events);
  }

  onBroadcast(handler: (events: readonly BusEvent[]) => void): Unsubscribe {
    return subscribe(this.broadcastHandlers, handler);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.queue = [];
  }

  private async drain(): Promise<void> {
    this.draining = true;
    try {
      while (this.queue.length > 0 && this.committedHandlers.length > 0 && !this.closed) {
        const batch = this.queue;
        this.queue = [];
        // One consumer per batch keeps per-conversation order; several consumers take turns.
        const handler = this.committedHandlers[this.next++ % this.committedHandlers.length]!;
        try {
          await handler(batch);
        } catch (err) {
          // In one process a failing handler is a bug, not a transient fault; redelivering the
          // same batch forever would wedge the bus. Devices still get the entries from the log.
          this.log.error({ err, events: batch.length }, "fanout failed for a committed batch");
        }
      }
    } finally {
      this.draining = false;
    }
  }
}

/** The embedded delivery channel: fanout calls the gateway directly. */
export class DirectDelivery implements DeliveryChannel {
  private readonly gateways = new Map<string, Handler<DeliveryBatch>>();

  async deliver(gatewayId: string, batch: DeliveryBatch): Promise<void> {
    this.gateways.get(gatewayId)?.(batch);
  }

  listen(gatewayId: string, handler: (batch: DeliveryBatch) => void): Unsubscribe {
    this.gateways.set(gatewayId, handler);
    return () => {
      if (this.gateways.get(gatewayId) === handler) this.gateways.delete(gatewayId);
    };
  }
}
