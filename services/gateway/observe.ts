import type { Histogram } from "@opentelemetry/api";
import { meter } from "../common/telemetry.js";
import type { GatewayObserver, ObservedGateway } from "./types.js";

export type { GatewayObserver } from "./types.js";

const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/**
 * The gateway's metrics: three latency histograms recorded on the hot path, and gauges and counters
 * read from the gateway's own fields only when Prometheus scrapes, so they cost nothing between
 * scrapes.
 */
export function observeGateway(source: ObservedGateway): GatewayObserver {
  const m = meter();
  const sendAck: Histogram = m.createHistogram("switchboard.gateway.send_ack.duration_seconds", {
    description: "Time from a send frame's arrival to its send_ack (one tick) or send_error",
    unit: "s",
    advice: { explicitBucketBoundaries: LATENCY_BUCKETS },
  });
  const lag: Histogram = m.createHistogram("switchboard.delivery.lag_seconds", {
    description: "Time from an entry's commit to its hand-over to a recipient stream on this gateway",
    unit: "s",
    advice: { explicitBucketBoundaries: LATENCY_BUCKETS },
  });
  const cursorLag: Histogram = m.createHistogram("switchboard.gateway.cursor_lag_seconds", {
    description:
      "Time from a device's ack (or read) to the sequencer holding the cursor it moved: how far the server's cursors trail",
    unit: "s",
    advice: { explicitBucketBoundaries: LATENCY_BUCKETS },
  });
  const gateway = { "switchboard.gateway": source.id };
  m.createObservableGauge("switchboard.gateway.streams", {
    description: "Device streams open on this gateway",
  }).addCallback((r) => r.observe(source.streamCount, gateway));
  m.createObservableGauge("switchboard.gateway.devices", {
    description: "Devices with at least one stream on this gateway",
  }).addCallback((r) => r.observe(source.deviceCount, gateway));
  m.createObservableGauge("switchboard.gateway.sends_in_flight", {
    description: "Sends taken and not yet answered, all streams and unary calls together",
  }).addCallback((r) => r.observe(source.sendsInFlight, gateway));
  m.createObservableGauge("switchboard.gateway.sends_in_flight_bound", {
    description:
      "What the sends in flight may be at most now: the fixed bound, or what the gateway answers in the queue target",
  }).addCallback((r) => r.observe(source.sendsInFlightBound, gateway));
  m.createObservableCounter("switchboard.gateway.dropped_frames", {
    description: "Receipt, typing and presence frames dropped because a device was behind (slow consumer)",
  }).addCallback((r) => r.observe(source.metrics.droppedEvents, gateway));
  m.createObservableCounter("switchboard.gateway.rejections", {
    description: "Sends and streams refused by a limit, by reason",
  }).addCallback((r) => {
    r.observe(source.metrics.rejectedRate, { ...gateway, reason: "send_rate" });
    r.observe(source.metrics.rejectedInFlight, { ...gateway, reason: "sends_in_flight" });
    r.observe(source.metrics.floodClosures, { ...gateway, reason: "frame_flood" });
    r.observe(source.metrics.replacedStreams, { ...gateway, reason: "stream_replaced" });
    for (const [reason, n] of source.metrics.refusals) r.observe(n, { ...gateway, reason });
  });
  return {
    sendAck: (seconds, outcome) => sendAck.record(seconds, { outcome }),
    deliveryLag: (seconds) => lag.record(Math.max(0, seconds)),
    cursorLag: (seconds) => cursorLag.record(Math.max(0, seconds)),
  };
}
