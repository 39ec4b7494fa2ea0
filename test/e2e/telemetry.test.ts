import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { AccountService } from "../../gen/switchboard/v1/accounts_pb.js";
import { Mesh } from "../../services/mesh/launcher.js";
import { freePort, meshPrerequisites } from "../helpers/backends.js";
import { deliveredText, type TestDevice } from "../helpers/device.js";
import { OtlpReceiver, type ReceivedSpan, roots } from "../helpers/otlp.js";
import { removeDir, type ServerProcess, startServerProcess } from "../helpers/server.js";

/** Every hop a message takes, as spans: the stream frame to the recipient's stream. */
const MESSAGE_PATH = [
  "gateway.send",
  "switchboard.internal.v1.SequencerService/Append",
  "sequencer.append",
  "store.commit",
  "bus.publish",
  "fanout.entryCommitted",
  "gateway.deliver",
];

/** The receipt's hops: the recipient's ack to the sender's stream. */
const RECEIPT_PATH = [
  "switchboard.internal.v1.SequencerService/UpdateCursors",
  "bus.publish",
  "fanout.receiptIssued",
  "gateway.deliver",
];

async function eventually<T>(what: string, probe: () => T | undefined, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** The trace of the send of `seq` in `conversationId`, once all of `names` arrived. */
function traceOfSend(receiver: OtlpReceiver, conversationId: string, seq: number, names: string[]) {
  const send = receiver.spans.find(
    (s) =>
      s.name === "gateway.send" &&
      s.attributes["switchboard.conversation_id"] === conversationId &&
      Number(s.attributes["switchboard.seq"]) === seq,
  );
  if (send === undefined) return undefined;
  const spans = receiver.trace(send.traceId);
  return names.every((n) => spans.some((s) => s.name === n)) ? spans : undefined;
}

function describeSpans(spans: readonly ReceivedSpan[]): string {
  return spans
    .filter((s) => !s.name.includes("AccountService") && !s.name.includes("DirectoryService"))
    .map((s) => `${s.traceId.slice(0, 6)}:${s.name}@${s.instance}${JSON.stringify(s.attributes)}`)
    .join("\n");
}

function assertConnected(spans: ReceivedSpan[], rootName: string): void {
  const top = roots(spans);
  assert.deepEqual(
    top.map((s) => s.name),
    [rootName],
    `one connected trace rooted at ${rootName}; spans: ${spans.map((s) => `${s.name}@${s.instance}`).join(", ")}`,
  );
}

/** A 1:1 exchange with an ack, returning what the assertions need. */
async function exchange(aliceUrl: string, bobUrl: string, track: (d: TestDevice) => TestDevice) {
  const { alice, bob, id, seq } = await deliveredText(
    { alice: aliceUrl, bob: bobUrl },
    "traced-1",
    "hello",
    track,
  );
  bob.write({ case: "ack", value: { cursors: [{ conversationId: id, seq }] } as never });
  await alice.waitFor(() => alice.ofCase("receipt").find((r) => r.upToSeq === seq), "delivered receipt");
  return { id, seq: Number(seq) };
}

describe("telemetry in one process: traces over every hop, metrics on the admin port", () => {
  let receiver: OtlpReceiver;
  let server: ServerProcess;
  let adminUrl: string;
  const devices: TestDevice[] = [];

  before(async () => {
    receiver = await OtlpReceiver.start();
    const adminPort = await freePort();
    adminUrl = `http://127.0.0.1:${adminPort}`;
    server = await startServerProcess({
      env: {
        SWITCHBOARD_OTLP_ENDPOINT: receiver.url,
        SWITCHBOARD_TRACE_SAMPLE_RATIO: "1",
        SWITCHBOARD_ADMIN_PORT: String(adminPort),
      },
    });
  });

  after(async () => {
    for (const d of devices) d.close();
    await server?.stop();
    if (server) await removeDir(server.dataDir);
    await receiver?.close();
  });

  it("turns one send into one connected trace through every hop, and the receipt into another", async () => {
    const { id, seq } = await exchange(server.url, server.url, (d) => {
      devices.push(d);
      return d;
    });
    const spans = await eventually("the send's spans", () =>
      traceOfSend(receiver, id, seq, MESSAGE_PATH),
    ).catch((err: Error) => {
      throw new Error(`${err.message}; received: ${describeSpans(receiver.spans)}`);
    });
    assertConnected(spans, "gateway.send");
    const commit = spans.find((s) => s.name === "store.commit")!;
    const append = spans.find((s) => s.name === "sequencer.append")!;
    assert.equal(commit.parentSpanId, append.spanId, "the store write is a child of the append");

    const receipt = await eventually("the receipt's spans", () => {
      const fan = receiver.spans.find((s) => s.name === "fanout.receiptIssued");
      const all = fan && receiver.trace(fan.traceId);
      return all && RECEIPT_PATH.every((n) => all.some((s) => s.name === n)) ? all : undefined;
    });
    assertConnected(receipt, "switchboard.internal.v1.SequencerService/UpdateCursors");
  });

  it("serves Prometheus metrics an operator alerts on", async () => {
    // A refused registration: a caller's error, counted with its code but not as a server error.
    // Sent with the Connect protocol, so the metric shows both systems.
    const connectClient = createClient(
      AccountService,
      createConnectTransport({ baseUrl: server.url, httpVersion: "2" }),
    );
    await assert.rejects(connectClient.register({ username: "", deviceName: "test" }), (err) => {
      assert.equal(ConnectError.from(err).code, Code.InvalidArgument);
      return true;
    });
    // A GC histogram has series only once the server collected garbage at least once: calls
    // (each allocates) until it has, for a bounded time, so a quiet fresh process is not a flake.
    let text = "";
    for (let tries = 0; ; tries++) {
      const res = await fetch(`${adminUrl}/metrics`);
      assert.equal(res.status, 200);
      text = await res.text();
      if (text.includes("v8js_gc_duration_seconds_bucket{") || tries >= 100) break;
      await Promise.all(
        Array.from({ length: 20 }, () =>
          connectClient.register({ username: "", deviceName: "gc" }).catch(() => {}),
        ),
      );
      await new Promise((r) => setTimeout(r, 200));
    }
    const series = (name: string) => text.split("\n").filter((line) => line.startsWith(`${name}{`));
    for (const name of [
      "switchboard_gateway_send_ack_duration_seconds_bucket",
      "switchboard_delivery_lag_seconds_bucket",
      "switchboard_gateway_streams",
      "switchboard_gateway_rejections_total",
      "switchboard_store_commit_duration_seconds_bucket",
      "switchboard_bus_publish_duration_seconds_bucket",
      "switchboard_sequencer_outbox_events",
      "switchboard_push_wakeups_total",
      // The runtime: event loop, heap, GC, CPU and memory, under the OpenTelemetry conventions.
      "nodejs_eventloop_delay_p99_seconds",
      "nodejs_eventloop_utilization_ratio",
      "v8js_memory_heap_used_bytes",
      "v8js_gc_duration_seconds_bucket",
      "process_cpu_time_seconds_total",
      "process_memory_usage_bytes",
    ]) {
      assert.ok(series(name).length > 0, `${name} in /metrics:\n${text.slice(0, 2000)}`);
    }
    assert.match(text, /switchboard_gateway_send_ack_duration_seconds_count\{[^}]*outcome="ok"[^}]*\} [1-9]/);
    // A quiet gateway: nothing in flight, and the answer-rate bound at its floor under the fixed one.
    assert.match(text, /\nswitchboard_gateway_sends_in_flight\{[^}]*\} 0\n/);
    assert.match(text, /\nswitchboard_gateway_sends_in_flight_bound\{[^}]*\} 2048\n/);
    assert.ok(series("process_cpu_time_seconds_total").some((l) => l.includes('cpu_mode="user"')));

    // rpc.server.call.duration with the conventions' attributes: the devices' calls over gRPC,
    // the internal ones (in this process, Connect's in-memory transport) as connectrpc.
    const calls = series("rpc_server_call_duration_seconds_count");
    const register = calls.find(
      (l) =>
        l.includes('rpc_method="switchboard.v1.AccountService/Register"') &&
        l.includes('rpc_system_name="grpc"') &&
        l.includes('rpc_response_status_code="OK"'),
    );
    assert.ok(register, `gRPC registrations counted:\n${calls.join("\n")}`);
    assert.ok(!register.includes("error_type="), "a success has no error.type");
    const invalid = calls.find(
      (l) =>
        l.includes('rpc_method="switchboard.v1.AccountService/Register"') &&
        l.includes('rpc_system_name="connectrpc"') &&
        l.includes('rpc_response_status_code="invalid_argument"'),
    );
    assert.ok(invalid, `the refused registration counted by its code:\n${calls.join("\n")}`);
    assert.ok(!invalid.includes("error_type="), "a caller's error is not the server's: no error.type");
    assert.ok(
      calls.some((l) => l.includes('rpc_method="switchboard.internal.v1.SequencerService/Append"')),
      "internal calls counted too",
    );
    assert.doesNotMatch(text, /rpc_grpc_status|rpc_service=/, "the deprecated attributes are gone");
    // Outcome values are snake_case on every metric.
    assert.ok(series("switchboard_push_wakeups_total").some((l) => l.includes('outcome="rate_limited"')));
    assert.doesNotMatch(text, /outcome="[a-z]+[A-Z]/, "no camelCase outcome label");
  });
});

const { missing, skip } = meshPrerequisites();

describe("telemetry across processes: one trace over gateways, sequencer and fanout", { skip }, () => {
  let receiver: OtlpReceiver;
  let mesh: Mesh | undefined;
  let dir = "";
  const devices: TestDevice[] = [];

  before(async () => {
    if (missing.length > 0) throw new Error(`CI=true and ${missing.join(" and ")} missing`);
    receiver = await OtlpReceiver.start();
    dir = await mkdtemp(join(tmpdir(), "sb-telemetry-mesh-"));
    mesh = await Mesh.start({
      dir,
      gateways: 2,
      sequencers: 1,
      fanouts: 1,
      env: { SWITCHBOARD_OTLP_ENDPOINT: receiver.url, SWITCHBOARD_TRACE_SAMPLE_RATIO: "1" },
      onLog: () => {},
    });
  });

  after(async () => {
    for (const d of devices) d.close();
    await mesh?.stop();
    await receiver?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("joins the spans of four processes into one trace per send, through gRPC and NATS headers", async () => {
    const [gw0, gw1] = mesh!.gatewayUrls;
    const { id, seq } = await exchange(gw0!, gw1!, (d) => {
      devices.push(d);
      return d;
    });
    // Across processes, fanout's own calls are in the trace too: not roots of traces of their own.
    const lookup = "switchboard.internal.v1.PresenceService/LookupRoutes";
    const spans = await eventually(
      "the send's spans",
      () => {
        // Every process exports in batches: the sender's gateway may export its delivery (the
        // echo to the sender) before the recipient's gateway has exported its own.
        const trace = traceOfSend(receiver, id, seq, [...MESSAGE_PATH, lookup]);
        return trace?.some((s) => s.name === "gateway.deliver" && s.instance === "gateway-1")
          ? trace
          : undefined;
      },
      30_000,
    ).catch((err: Error) => {
      throw new Error(`${err.message}; received: ${describeSpans(receiver.spans)}`);
    });
    assertConnected(spans, "gateway.send");
    assert.ok(
      spans.some((s) => s.name === lookup && s.instance === "fanout-0" && s.kind === 3),
      "fanout's route lookup (its client span) is in the send's trace",
    );
    // The bus hop under the messaging conventions: the sequencer's publish, fanout's consume.
    const sent = spans.find((s) => s.name.startsWith("send ") && s.instance === "sequencer-0");
    const processed = spans.find((s) => s.name.startsWith("process ") && s.instance === "fanout-0");
    assert.equal(sent?.attributes["messaging.system"], "nats");
    assert.equal(sent?.attributes["messaging.operation.type"], "send");
    assert.equal(processed?.attributes["messaging.operation.type"], "process");
    assert.equal(
      processed?.parentSpanId,
      sent?.spanId,
      "the consume continues the publish from the NATS headers",
    );
    const where = (name: string) => new Set(spans.filter((s) => s.name === name).map((s) => s.instance));
    assert.deepEqual([...where("gateway.send")], ["gateway-0"]);
    assert.deepEqual([...where("sequencer.append")], ["sequencer-0"]);
    assert.deepEqual([...where("fanout.entryCommitted")], ["fanout-0"]);
    assert.ok(where("gateway.deliver").has("gateway-1"), "delivered through the recipient's gateway");
    // The sequencer's span is a child of the gateway's RPC client span, carried in gRPC headers.
    const append = spans.find(
      (s) => s.name === "switchboard.internal.v1.SequencerService/Append" && s.kind === 2,
    );
    const client = spans.find((s) => s.spanId === append?.parentSpanId);
    assert.equal(client?.instance, "gateway-0");
  });
});
