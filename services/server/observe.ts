import { meter } from "../common/telemetry.js";
import type { Notifier } from "../notification/index.js";
import type { Sequencer } from "../sequencer/index.js";
import type { BusEngine } from "./engines.js";

/**
 * Outcome label values are snake_case across every metric ("publish_failures", "rate_limited"),
 * whatever the counters' field names are in code.
 */
export function outcomeLabel(field: string): string {
  return field.replace(/([a-z0-9])([A-Z])/g, "$1_$2").toLowerCase();
}

/**
 * The process-level metrics that read counters the services already keep: registered once per
 * process, read only when Prometheus scrapes.
 */
export function observeProcess(parts: {
  bus: BusEngine;
  sequencer: Sequencer | undefined;
  notifier: Notifier | undefined;
  fanout: boolean;
  rateLimiter: { metrics?: { fallbacks: number } } | undefined;
}): void {
  const m = meter();
  const { bus, sequencer, notifier, rateLimiter } = parts;
  if (bus.metrics) {
    const metrics = bus.metrics;
    m.createObservableCounter("switchboard.bus.events", {
      description: "Bus events by what happened to them (published, redelivered, acked, nakked, ...)",
    }).addCallback((r) => {
      for (const [field, value] of Object.entries(metrics))
        r.observe(value, { outcome: outcomeLabel(field) });
    });
  }
  if (parts.fanout && bus.backlog) {
    const backlog = bus.backlog;
    m.createObservableGauge("switchboard.fanout.backlog", {
      description:
        "Committed events waiting for fanout: not yet delivered to a worker, or delivered and unacknowledged",
    }).addCallback(async (r) => {
      try {
        const b = await backlog();
        r.observe(b.pending, { state: "pending" });
        r.observe(b.unacknowledged, { state: "unacknowledged" });
      } catch {
        // No answer from NATS: no sample, which an alert on absence catches.
      }
    });
  }
  if (sequencer) {
    const outbox = sequencer.outbox;
    m.createObservableGauge("switchboard.sequencer.outbox.events", {
      description: "Committed events waiting for the bus (non-zero only during a bus outage)",
    }).addCallback((r) => r.observe(outbox.size));
    m.createObservableCounter("switchboard.sequencer.outbox.outcomes", {
      description: "Outbox events deferred, republished and given up, and failed publish attempts",
    }).addCallback((r) => {
      for (const [field, value] of Object.entries(outbox.metrics))
        r.observe(value, { outcome: outcomeLabel(field) });
    });
    const hot = sequencer.hotState;
    m.createObservableGauge("switchboard.sequencer.hot_state.bytes", {
      description: "Estimated bytes of the shards' in-memory state (tails, keys, members, cursors)",
      unit: "By",
    }).addCallback((r) => r.observe(hot.heldBytes));
    m.createObservableGauge("switchboard.sequencer.hot_state.budget_bytes", {
      description: "The byte budget of that state (SWITCHBOARD_SEQUENCER_CACHE_BYTES)",
      unit: "By",
    }).addCallback((r) => r.observe(hot.limitBytes));
    m.createObservableGauge("switchboard.sequencer.hot_state.conversations", {
      description: "Conversations whose state is in memory",
    }).addCallback((r) => r.observe(hot.conversations));
    m.createObservableCounter("switchboard.sequencer.hot_state.evictions", {
      description:
        "Evictions from the in-memory state: whole idle conversations, tail entries shed by conversations in use, and idle conversations' idempotency keys",
    }).addCallback((r) => {
      r.observe(hot.metrics.evictedConversations, { kind: "conversation" });
      r.observe(hot.metrics.evictedEntries, { kind: "entry" });
      r.observe(hot.metrics.evictedKeys, { kind: "key" });
    });
  }
  if (notifier) {
    const metrics = notifier.metrics;
    m.createObservableCounter("switchboard.push.wakeups", {
      description:
        "Push wake-ups by outcome (queued, collapsed, shed, delivered, gone, retried, failed, ...)",
    }).addCallback((r) => {
      for (const [field, value] of Object.entries(metrics))
        r.observe(value, { outcome: outcomeLabel(field) });
    });
  }
  if (rateLimiter?.metrics) {
    const metrics = rateLimiter.metrics;
    m.createObservableCounter("switchboard.ratelimit.fallbacks", {
      description:
        "Rate-limit takes answered by the gateway's local fallback because Redis failed or was slow",
    }).addCallback((r) => r.observe(metrics.fallbacks));
  }
}
