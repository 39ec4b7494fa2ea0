import type { BusEvent, DeliveryBatch } from "../../gen/switchboard/internal/v1/events_pb.js";

/** Stops a subscription; a consumer that finishes what it holds first resolves once it has. */
export type Unsubscribe = () => void | Promise<void>;

/**
 * The bus between the sequencer and fanout, and the broadcast channel to gateways.
 * Embedded: in-process queues. Distributed: NATS JetStream for committed events, partitioned by
 * conversation; NATS core for ephemeral ones and broadcasts.
 */
export interface EventBus {
  /**
   * Publishes committed entries and receipts, in order. Resolves when the bus has accepted them
   * (not when they are delivered). Rejecting never loses an entry: it is already in the store,
   * and the sequencer's recovery loop republishes.
   */
  publishCommitted(events: readonly BusEvent[]): Promise<void>;
  /**
   * Consumes committed events. Each call of the handler gets events in publish order per
   * conversation; the handler's promise settles the batch (acknowledged on resolve, redelivered
   * on reject where the engine supports it). Workers split the events by conversation: each
   * conversation's go to one worker at a time (NATS: by partition, on leases).
   */
  consumeCommitted(handler: (events: readonly BusEvent[]) => Promise<void>): Unsubscribe;
  /** Publishes ephemeral events (typing): fire and forget, never stored. */
  publishEphemeral(events: readonly BusEvent[]): void;
  /** Consumes ephemeral events. */
  consumeEphemeral(handler: (events: readonly BusEvent[]) => void): Unsubscribe;
  /** Sends events to every gateway (presence changes, device revocations). */
  broadcast(events: readonly BusEvent[]): void;
  /** Receives broadcasts. */
  onBroadcast(handler: (events: readonly BusEvent[]) => void): Unsubscribe;
  /** Stops consuming and flushes. */
  close(): Promise<void>;
}

/**
 * How fanout hands a batch to the gateway holding the devices' streams. Embedded: a direct
 * call. Distributed: a NATS core subject per gateway.
 */
export interface DeliveryChannel {
  /** Delivers a batch to a gateway; resolves when handed over (not when the devices got it). */
  deliver(gatewayId: string, batch: DeliveryBatch): Promise<void>;
  /** Receives this gateway's batches. */
  listen(gatewayId: string, handler: (batch: DeliveryBatch) => void): Unsubscribe;
}
