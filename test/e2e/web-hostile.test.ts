import assert from "node:assert/strict";
import * as net from "node:net";
import { describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { outgoingText, uniqueName } from "../helpers/device.js";
import { serverFixture } from "../helpers/fixture.js";
import { eventually } from "../helpers/inbox.js";
import { loggedLine } from "../helpers/server.js";
import { WebDevice } from "../helpers/web-client.js";

/** A raw TCP client: what it wrote, everything the server answered, and whether it closed. */
function rawSocket(url: string, first: string): { text: () => string; closed: Promise<void> } {
  const { hostname, port } = new URL(url);
  const socket = net.connect(Number(port), hostname, () => {
    if (first !== "") socket.write(first);
  });
  let text = "";
  socket.setEncoding("latin1").on("data", (chunk: string) => {
    text += chunk;
  });
  socket.on("error", () => {});
  const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
  return { text: () => text, closed };
}

/**
 * The bounds of the network face on HTTP/1.1 and on the web binding, against a server process
 * with short timeouts: silent and slow connections are closed, a Subscribe stream outlives every
 * request timeout, unary frames spend the device's frame budget, bad requests get precise codes.
 */
describe("web clients: bounds on HTTP/1.1 and the web binding", () => {
  const fx = serverFixture({
    SWITCHBOARD_HANDSHAKE_TIMEOUT_MS: "1000",
    SWITCHBOARD_REQUEST_BODY_TIMEOUT_MS: "1000",
    SWITCHBOARD_IDLE_CONNECTION_TIMEOUT_MS: "1500",
    SWITCHBOARD_FRAMES_PER_SECOND: "1",
    SWITCHBOARD_FRAME_BURST: "5",
  });

  async function webUser(protocol: "connect" | "grpc-web" = "connect"): Promise<WebDevice> {
    const device = new WebDevice(fx.server.url, protocol);
    await device.register(uniqueName("webh"));
    return device;
  }

  it("closes silent connections, slow headers and stalled bodies", async () => {
    const silent = rawSocket(fx.server.url, "");
    const slowHeaders = rawSocket(
      fx.server.url,
      "POST /switchboard.v1.GatewayService/Send HTTP/1.1\r\nHost: x\r\n",
    );
    const stalledBody = rawSocket(
      fx.server.url,
      "POST /switchboard.v1.AccountService/CreateToken HTTP/1.1\r\nHost: x\r\n" +
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    );
    await Promise.all([silent.closed, slowHeaders.closed, stalledBody.closed]);
    assert.equal(silent.text(), "");
    assert.match(slowHeaders.text(), /^HTTP\/1\.1 408/);
    await loggedLine(fx.server, (l) => l.includes('"refusal":"handshake_timeout"'), "handshake_timeout");
    await loggedLine(
      fx.server,
      (l) => l.includes('"refusal":"request_body_timeout"'),
      "request_body_timeout",
    );
  });

  it("a Subscribe stream outlives the header, body and idle timeouts and keeps receiving", async () => {
    const alice = await webUser("grpc-web");
    const bob = await webUser("connect");
    const { conversation } = await alice.conversations.openDirect({ peerUserId: bob.userId });
    const conversationId = conversation!.conversationId;
    bob.subscribe();
    await bob.waitFor("caught_up", (fs) => fs.find((f) => f.frame.case === "caughtUp"));
    // Longer than every timeout this server has (1, 1 + 1 and 1.5 s).
    await new Promise((r) => setTimeout(r, 2500));
    const { seq } = await alice.gateway.send({ entry: outgoingText(conversationId, "late", "still there?") });
    await bob.waitFor("the message on the same stream", () =>
      bob.entries(conversationId).find((e) => e.seq === seq),
    );
    assert.equal(bob.frames.filter((f) => f.frame.case === "ready").length, 1, "never reopened");
    bob.unsubscribe();
  });

  it("a Subscribe whose client goes away is closed on the server at once", async () => {
    for (const protocol of ["connect", "grpc-web"] as const) {
      const device = await webUser(protocol);
      device.subscribe();
      const ready = await device.waitFor("ready", (fs) =>
        fs[0]?.frame.case === "ready" ? fs[0].frame.value : undefined,
      );
      device.unsubscribe();
      await loggedLine(
        fx.server,
        (l) => l.includes('"msg":"stream closed"') && l.includes(ready.sessionId),
        `stream ${ready.sessionId} (${protocol}) closed`,
      );
    }
  });

  it("a third Subscribe of one device closes the oldest with ABORTED", async () => {
    const device = await webUser();
    const second = new WebDevice(fx.server.url, "grpc-web");
    const third = new WebDevice(fx.server.url, "connect");
    for (const d of [second, third]) d.token = device.token;
    device.subscribe();
    await device.waitFor("ready", (fs) => fs.find((f) => f.frame.case === "ready"));
    second.subscribe();
    await second.waitFor("ready", (fs) => fs.find((f) => f.frame.case === "ready"));
    third.subscribe();
    await third.waitFor("ready", (fs) => fs.find((f) => f.frame.case === "ready"));
    await eventually(
      () => device.ended !== undefined,
      () => "the oldest stream ended",
    );
    assert.equal(device.ended?.error?.code, Code.Aborted);
    second.unsubscribe();
    third.unsubscribe();
  });

  it("Ack and SetTyping spend the device's frame budget: RESOURCE_EXHAUSTED with retry-after-ms", async () => {
    const alice = await webUser();
    const bob = await webUser();
    const { conversation } = await alice.conversations.openDirect({ peerUserId: bob.userId });
    const conversationId = conversation!.conversationId;
    let refusal: ConnectError | undefined;
    // A burst of 5, one more a second: 20 calls at once cannot all fit.
    for (let i = 0; i < 20 && refusal === undefined; i++) {
      try {
        await (i % 2 === 0
          ? alice.gateway.ack({ delivered: [{ conversationId, seq: 1n }] })
          : alice.gateway.setTyping({ conversationId, active: true }));
      } catch (err) {
        refusal = err as ConnectError;
      }
    }
    assert.ok(refusal instanceof ConnectError, "a call past the budget is refused");
    assert.equal(refusal.code, Code.ResourceExhausted, refusal.rawMessage);
    assert.match(refusal.rawMessage, /too many frames: at most 1 per second per device/);
    assert.ok(Number(refusal.metadata.get("retry-after-ms")) > 0, "retry-after-ms hint");
    // Another device's budget is its own.
    await bob.gateway.ack({ delivered: [{ conversationId, seq: 1n }] });
  });

  it("a malformed Subscribe request is INVALID_ARGUMENT on gRPC-Web and Connect", async () => {
    const device = await webUser();
    const garbage = Uint8Array.from([0x0a, 0xff, 0xff, 0xff]);
    const envelope = new Uint8Array(5 + garbage.length);
    new DataView(envelope.buffer).setUint32(1, garbage.length);
    envelope.set(garbage, 5);
    const grpcWeb = await fetch(`${fx.server.url}/switchboard.v1.GatewayService/Subscribe`, {
      method: "POST",
      headers: { "content-type": "application/grpc-web+proto", authorization: `Bearer ${device.token}` },
      body: envelope,
    });
    const body = Buffer.from(await grpcWeb.arrayBuffer()).toString("latin1");
    const status = grpcWeb.headers.get("grpc-status") ?? /grpc-status: ?(\d+)/.exec(body)?.[1];
    assert.equal(status, String(Code.InvalidArgument), `answer: ${body}`);
    assert.match(body, /malformed request: not a valid Subscribe message/);
    const connect = await fetch(`${fx.server.url}/switchboard.v1.GatewayService/Subscribe`, {
      method: "POST",
      headers: { "content-type": "application/connect+proto", authorization: `Bearer ${device.token}` },
      body: envelope,
    });
    const end = Buffer.from(await connect.arrayBuffer()).toString("latin1");
    assert.match(end, /"code":"invalid_argument"/, `answer: ${end}`);
    assert.match(end, /malformed request: not a valid Subscribe message/);
  });
});
