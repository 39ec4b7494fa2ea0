/**
 * Subject names, and the core (non-JetStream) subjects: ephemeral events, broadcasts and
 * per-gateway delivery, all fire and forget.
 */
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  type BusEvent,
  BusEventSchema,
  type DeliveryBatch,
  DeliveryBatchSchema,
  DeliverySchema,
} from "../../../gen/switchboard/internal/v1/events_pb.js";
import type { Logger } from "../../common/log.js";
import { fnv1a, shardOf } from "../../common/shard.js";
import { endSpan } from "../../common/telemetry.js";
import type { Unsubscribe } from "../types.js";
import type { Link } from "./connection.js";
import { SAFE_TOKEN } from "./settings.js";
import { deliverySpan } from "./tracing.js";
import type { NatsBusMetrics } from "./types.js";
import { packRepeated, unpackEvents } from "./wire.js";

/** A subject token for a conversation id; ids that are not plain tokens get a stable hash instead. */
export function conversationToken(conversationId: string): string {
  if (SAFE_TOKEN.test(conversationId)) return conversationId;
  // Only routing depends on the subject (dedupe uses the message id), so a collision is harmless.
  return `_h${fnv1a(conversationId).toString(16)}`;
}

/** The conversation an event belongs to and its deduplication id, when it has one. */
export function committedIdentity(event: BusEvent): { conversationId: string; msgId?: string } | undefined {
  const e = event.event;
  if (e.case === "entryCommitted" && e.value.entry !== undefined) {
    const { conversationId, seq } = e.value.entry;
    return { conversationId, msgId: `${conversationId}:${seq}` };
  }
  if (e.case === "receiptIssued" && e.value.receipt !== undefined) {
    const r = e.value.receipt;
    // A member's cursor only moves forward, so (member, kind, up-to) names one receipt.
    return {
      conversationId: r.conversationId,
      msgId: `${r.conversationId}:r:${r.userId}:${r.kind}:${r.upToSeq}`,
    };
  }
  return undefined;
}

/**
 * The partitions of committed events: each conversation's events go to one, and one fanout
 * worker at a time consumes a partition (nats/leases.ts), so a conversation's events reach the
 * gateways in commit order whatever the number of workers. Fixed for the life of a deployment,
 * like the sequencer's shards: publishers and consumers of every version must agree on it. It
 * bounds the fanout workers that do work; 24 divides evenly among 1, 2, 3, 4, 6 and 8 workers.
 */
export const PARTITIONS = 24;

/** The partition of a conversation's events. */
export function partitionOf(conversationId: string): number {
  return shardOf(conversationId, PARTITIONS);
}

/**
 * The JetStream subject of a committed event: `<prefix>.events.<partition>.<conversation>`;
 * events without a conversation go to partition 0 as "_".
 */
export function committedSubject(prefix: string, identity: { conversationId: string } | undefined): string {
  if (identity === undefined) return `${prefix}.events.0._`;
  return `${prefix}.events.${partitionOf(identity.conversationId)}.${conversationToken(identity.conversationId)}`;
}

/** The filter subject of one partition's consumer. */
export function partitionSubject(prefix: string, partition: number): string {
  return `${prefix}.events.${partition}.>`;
}

/** Ephemeral events, broadcasts and deliveries over core NATS subjects. */
export class CoreSubjects {
  constructor(
    private readonly link: Link,
    private readonly prefix: string,
    private readonly metrics: NatsBusMetrics,
    private readonly log: Logger,
  ) {}

  /** Packs events into as few messages as the payload limit allows; drops them on failure. */
  publishEvents(subject: string, events: readonly BusEvent[], what: string): void {
    if (events.length === 0 || this.link.closing) return;
    try {
      const payloads = packRepeated(
        events.map((e) => toBinary(BusEventSchema, e)),
        this.link.maxPayload(),
      );
      for (const payload of payloads) {
        if (!this.link.admit(payload.length)) {
          this.metrics.dropped += events.length;
          return;
        }
        this.link.connection.publish(subject, payload);
      }
    } catch (err) {
      // Fire and forget by contract: the caller has nothing to retry.
      this.metrics.dropped += events.length;
      this.log.warn({ err, events: events.length }, `${what} publish failed`);
    }
  }

  /** Subscribes to packed events; with a queue group, each message goes to one subscriber. */
  subscribeEvents(
    subject: string,
    handler: (events: readonly BusEvent[]) => void,
    what: string,
    queue?: string,
  ): Unsubscribe {
    const sub = this.link.connection.subscribe(subject, {
      ...(queue !== undefined ? { queue } : {}),
      callback: (err, msg) => {
        if (err) {
          this.log.error({ err, subject }, `${what} subscription failed`);
          return;
        }
        let events: BusEvent[];
        try {
          events = unpackEvents(msg.data);
        } catch (decodeErr) {
          this.log.error({ err: decodeErr, subject }, `undecodable ${what} message dropped`);
          return;
        }
        try {
          handler(events);
        } catch (handlerErr) {
          this.log.error({ err: handlerErr }, `${what} handler failed`);
        }
      },
    });
    return () => {
      if (!sub.isClosed()) sub.unsubscribe();
    };
  }

  /** Hands a batch to a gateway's subject, split in order when it exceeds the payload limit. */
  async deliver(gatewayId: string, batch: DeliveryBatch): Promise<void> {
    const subject = this.gatewaySubject(gatewayId);
    if (this.link.closing) throw new Error("nats bus: closed");
    const limit = this.link.maxPayload();
    const whole = toBinary(DeliveryBatchSchema, batch);
    // A batch over the server's payload limit goes as several, in order.
    const payloads =
      whole.length <= limit
        ? [whole]
        : packRepeated(
            batch.deliveries.map((d) => toBinary(DeliverySchema, d)),
            limit,
          );
    const span = deliverySpan(
      `${this.prefix}.gateway`,
      subject,
      payloads.reduce((n, p) => n + p.length, 0),
      batch.deliveries.length,
    );
    try {
      for (const payload of payloads) {
        if (!this.link.admit(payload.length)) {
          this.metrics.dropped += batch.deliveries.length;
          throw new Error("nats bus: disconnected and the reconnect buffer is full");
        }
        this.link.connection.publish(subject, payload);
      }
    } catch (err) {
      if (span) endSpan(span, err);
      throw err;
    }
    if (span) endSpan(span);
  }

  /** Receives the batches delivered to a gateway. */
  listen(gatewayId: string, handler: (batch: DeliveryBatch) => void): Unsubscribe {
    const subject = this.gatewaySubject(gatewayId);
    const sub = this.link.connection.subscribe(subject, {
      callback: (err, msg) => {
        if (err) {
          this.log.error({ err, subject }, "delivery subscription failed");
          return;
        }
        let batch: DeliveryBatch;
        try {
          batch = fromBinary(DeliveryBatchSchema, msg.data);
        } catch (decodeErr) {
          this.log.error({ err: decodeErr, subject }, "undecodable delivery batch dropped");
          return;
        }
        try {
          handler(batch);
        } catch (handlerErr) {
          this.log.error({ err: handlerErr, gatewayId }, "delivery handler failed");
        }
      },
    });
    return () => {
      if (!sub.isClosed()) sub.unsubscribe();
    };
  }

  private gatewaySubject(gatewayId: string): string {
    if (!SAFE_TOKEN.test(gatewayId)) {
      throw new RangeError(`nats bus: gateway id ${JSON.stringify(gatewayId)} is not a subject token`);
    }
    return `${this.prefix}.gateway.${gatewayId}`;
  }
}
