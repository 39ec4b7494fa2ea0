import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { SpanKind, trace } from "@opentelemetry/api";
import { InMemorySpanExporter, type ReadableSpan, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { NodeTracerProvider } from "@opentelemetry/sdk-trace-node";
import { type RunningServer, startServer } from "../../services/server/index.js";
import { pingNats, requireNats, testNatsUrl } from "../helpers/backends.js";
import { deliveredText, type TestDevice } from "../helpers/device.js";

/**
 * One server process's roles in this test process with NATS JetStream as the bus, and
 * OpenTelemetry's in-memory span exporter as the tracer's only exporter: a send crosses the real
 * bus (publish, JetStream, the durable consumer) into fanout, and every span it causes is here.
 */

function parentOf(span: ReadableSpan): string | undefined {
  return span.parentSpanContext?.spanId;
}

async function eventually<T>(what: string, probe: () => T | undefined, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

describe("trace context over the NATS bus into fanout and its calls", () => {
  const exporter = new InMemorySpanExporter();
  const provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  const run = randomUUID().replaceAll("-", "").slice(0, 12);
  const stream = `SBTRACE_${run}`;
  const devices: TestDevice[] = [];
  let server: RunningServer | undefined;
  let dir = "";

  before(async () => {
    const natsUrl = testNatsUrl();
    // Without NATS the test below skips (or, under CI=true, fails naming the package).
    if (!(await pingNats(natsUrl))) return;
    // Registered before the server starts: its services take the global tracer on every span.
    provider.register();
    dir = await mkdtemp(join(tmpdir(), "sb-bus-trace-"));
    server = await startServer({
      dataDir: dir,
      port: 0,
      logLevel: "silent",
      accountLimits: { registrationsPerAddressPerHour: 0, registrationsPerHour: 0 },
      mesh: {
        bus: "nats",
        nats: {
          servers: [natsUrl],
          stream,
          subjectPrefix: `sbtrace.${run}`,
          replicas: 1,
          maxAgeMs: 600_000,
          maxBytes: 64 * 1024 * 1024,
        },
      },
      env: { ...process.env, SWITCHBOARD_MEDIA_PORT: "0" },
    });
  });

  after(async () => {
    for (const d of devices) d.close();
    await server?.close();
    await provider.shutdown();
    trace.disable();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("keeps the publish, the consume, fanout's route lookup and the delivery in the send's trace", async (t) => {
    if (server === undefined) {
      await requireNats(t);
      return;
    }
    const { id, seq: acked } = await deliveredText(
      { alice: server.url, bob: server.url },
      "bus-traced-1",
      "over the bus",
      (d) => devices.push(d),
    );
    const seq = Number(acked);

    const spans = await eventually("the send's trace through fanout", () => {
      const all = exporter.getFinishedSpans();
      const send = all.find(
        (s) =>
          s.name === "gateway.send" &&
          s.attributes["switchboard.conversation_id"] === id &&
          Number(s.attributes["switchboard.seq"]) === seq,
      );
      if (send === undefined) return undefined;
      const traced = all.filter((s) => s.spanContext().traceId === send.spanContext().traceId);
      const names = new Set(traced.map((s) => s.name));
      const wanted = [
        `send ${stream}`,
        `process ${stream}`,
        "fanout.entryCommitted",
        "switchboard.internal.v1.PresenceService/LookupRoutes",
        `send sbtrace.${run}.gateway`,
        "gateway.deliver",
      ];
      return wanted.every((n) => names.has(n)) ? traced : undefined;
    }).catch((err: Error) => {
      const seen = exporter
        .getFinishedSpans()
        .map((s) => `${s.spanContext().traceId.slice(0, 6)}:${s.name}`)
        .join(", ");
      throw new Error(`${err.message}; spans: ${seen}`);
    });
    const byId = new Map(spans.map((s) => [s.spanContext().spanId, s]));
    const one = (name: string) => {
      const found = spans.filter((s) => s.name === name);
      assert.equal(found.length, 1, `one ${name} in the trace`);
      return found[0]!;
    };

    // The publish: a PRODUCER span under the sequencer's bus.publish, named by the conventions.
    const publish = one(`send ${stream}`);
    assert.equal(publish.kind, SpanKind.PRODUCER);
    assert.equal(byId.get(parentOf(publish) ?? "")?.name, "bus.publish");
    assert.equal(publish.attributes["messaging.system"], "nats");
    assert.equal(publish.attributes["messaging.operation.type"], "send");
    assert.equal(publish.attributes["messaging.message.id"], `${id}:${seq}`);
    assert.match(
      String(publish.attributes["messaging.destination.name"]),
      new RegExp(`^sbtrace\\.${run}\\.events\\.`),
    );
    assert.ok(Number(publish.attributes["messaging.message.body.size"]) > 0, "body size recorded");

    // The consume: a CONSUMER span whose parent is the publish, carried in the NATS headers.
    const consume = one(`process ${stream}`);
    assert.equal(consume.kind, SpanKind.CONSUMER);
    assert.equal(parentOf(consume), publish.spanContext().spanId, "consumed as the publish's child");
    assert.equal(consume.attributes["messaging.operation.type"], "process");
    assert.equal(consume.attributes["messaging.consumer.group.name"], "fanout");
    assert.equal(consume.attributes["messaging.message.id"], `${id}:${seq}`);

    // Fanout continues from the consume, and its calls are inside the trace, not roots.
    const fanout = one("fanout.entryCommitted");
    assert.equal(parentOf(fanout), consume.spanContext().spanId);
    const lookup = spans.find((s) => s.name === "switchboard.internal.v1.PresenceService/LookupRoutes")!;
    const ancestors: string[] = [];
    for (let p = byId.get(parentOf(lookup) ?? ""); p !== undefined; p = byId.get(parentOf(p) ?? ""))
      ancestors.push(p.name);
    assert.ok(
      ancestors.includes("fanout.entryCommitted"),
      `route lookup under fanout: ${ancestors.join(" < ")}`,
    );
    assert.equal(lookup.attributes["rpc.method"], "switchboard.internal.v1.PresenceService/LookupRoutes");
    assert.equal(lookup.attributes["rpc.response.status_code"], "OK");

    // The hand-over to the gateway's core subject: a PRODUCER span in fanout's context.
    const handOver = one(`send sbtrace.${run}.gateway`);
    assert.equal(handOver.kind, SpanKind.PRODUCER);
    assert.equal(handOver.attributes["messaging.system"], "nats");
    assert.match(
      String(handOver.attributes["messaging.destination.name"]),
      new RegExp(`^sbtrace\\.${run}\\.gateway\\.`),
    );
    assert.ok(Number(handOver.attributes["messaging.batch.message_count"]) >= 1);
    assert.equal(parentOf(handOver), fanout.spanContext().spanId, "published in fanout's context");

    // One connected trace: the only span without a parent in it is the device's send.
    const roots = spans.filter((s) => parentOf(s) === undefined || !byId.has(parentOf(s)!));
    assert.deepEqual(
      roots.map((s) => s.name),
      ["gateway.send"],
      `one root; spans: ${spans.map((s) => s.name).join(", ")}`,
    );
  });
});
