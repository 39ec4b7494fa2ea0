import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { AccountService } from "../../gen/switchboard/v1/accounts_pb.js";
import { ReceiptKind } from "../../gen/switchboard/v1/gateway_pb.js";
import { outgoingText, uniqueName } from "../helpers/device.js";
import { rejectsWith } from "../helpers/expect.js";
import { removeDir, type ServerProcess, startServerProcess } from "../helpers/server.js";
import { WebDevice, type WebLibrary, type WebProtocol } from "../helpers/web-client.js";

const ALLOWED = "http://allowed.example:8080";

/**
 * The web binding against a real server process, over HTTP/1.1 as browsers speak it: Subscribe
 * for receiving, unary Send, Ack and SetTyping, on the port that also serves h2c; CORS for the
 * configured origin only.
 */
describe("web clients: Subscribe and unary calls over HTTP/1.1", () => {
  let server: ServerProcess;

  before(async () => {
    server = await startServerProcess({ env: { SWITCHBOARD_CORS_ORIGINS: ALLOWED } });
  });
  after(async () => {
    await server.stop();
    await removeDir(server.dataDir);
  });

  /** Two registered web devices in a direct conversation. */
  async function pair(protocol: WebProtocol, library: WebLibrary = "connect-node") {
    const alice = new WebDevice(server.url, protocol, library);
    const bob = new WebDevice(server.url, protocol, library);
    await alice.register(uniqueName("web_a"));
    await bob.register(uniqueName("web_b"));
    const { conversation } = await alice.conversations.openDirect({ peerUserId: bob.userId });
    return { alice, bob, conversationId: conversation!.conversationId };
  }

  const variants = [
    ["connect", "connect-node"],
    ["grpc-web", "connect-node"],
    ["connect", "connect-web"],
    ["grpc-web", "connect-web"],
  ] as const;
  for (const [protocol, library] of variants) {
    it(`${protocol} (${library}): sends, acks and resumes across a reconnect, receiving each entry once and in order`, async () => {
      const { alice, bob, conversationId } = await pair(protocol, library);
      bob.subscribe();
      const ready = await bob.waitFor("ready", (fs) =>
        fs[0]?.frame.case === "ready" ? fs[0].frame.value : undefined,
      );
      assert.equal(ready.deviceId, bob.deviceId);
      await bob.waitFor("caught_up", (fs) => fs.find((f) => f.frame.case === "caughtUp"));
      // Alice follows Bob's presence from the start: he is online (his stream is open).
      alice.subscribe([bob.userId]);
      await alice.waitFor("caught_up", (fs) => fs.find((f) => f.frame.case === "caughtUp"));
      await alice.waitFor("bob online", (fs) =>
        fs.find(
          (f) => f.frame.case === "presence" && f.frame.value.userId === bob.userId && f.frame.value.online,
        ),
      );

      const received: bigint[] = [];
      const sent: bigint[] = [];
      const send = async (i: number) => {
        const r = await alice.gateway.send({
          entry: outgoingText(conversationId, `m${protocol}${library}${i}`, `hello ${i}`),
        });
        sent.push(r.seq);
      };
      for (let i = 0; i < 3; i++) await send(i);
      // A retry with the same client_msg_id answers the original seq.
      const retry = await alice.gateway.send({
        entry: outgoingText(conversationId, `m${protocol}${library}0`, "hello 0"),
      });
      assert.equal(retry.seq, sent[0]);

      const first = await bob.waitFor("the first three messages", () => {
        const got = bob.entries(conversationId).filter((e) => e.body.case === "message");
        return got.length >= 3 ? got : undefined;
      });
      received.push(...first.map((e) => e.seq));
      await bob.gateway.ack({ delivered: [{ conversationId, seq: received.at(-1)! }] });
      const delivered = await alice.waitFor("the delivered receipt", (fs) =>
        fs.find(
          (f) =>
            f.frame.case === "receipt" &&
            f.frame.value.kind === ReceiptKind.DELIVERED &&
            f.frame.value.upToSeq === received.at(-1),
        ),
      );
      assert.equal(delivered.frame.case === "receipt" && delivered.frame.value.userId, bob.userId);

      // Bob goes away (a closed tab); what Alice sends meanwhile waits in the log.
      bob.unsubscribe();
      for (let i = 3; i < 5; i++) await send(i);
      bob.subscribe();
      await bob.waitFor("caught_up after the reconnect", (fs) => fs.find((f) => f.frame.case === "caughtUp"));
      const backlog = bob.entries(conversationId);
      received.push(...backlog.map((e) => e.seq));
      assert.deepEqual(received, sent, "every message exactly once, in seq order, across the reconnect");
      assert.deepEqual(
        backlog.map((e) =>
          new TextDecoder().decode(e.body.case === "message" ? e.body.value.payload : undefined),
        ),
        ["hello 3", "hello 4"],
      );

      // Read receipts and typing, through the unary calls.
      await bob.gateway.ack({ read: [{ conversationId, seq: sent.at(-1)! }] });
      await alice.waitFor("the read receipt", (fs) =>
        fs.find(
          (f) =>
            f.frame.case === "receipt" &&
            f.frame.value.kind === ReceiptKind.READ &&
            f.frame.value.upToSeq === sent.at(-1),
        ),
      );
      await bob.gateway.setTyping({ conversationId, active: true });
      await alice.waitFor("bob typing", (fs) =>
        fs.find(
          (f) => f.frame.case === "typing" && f.frame.value.userId === bob.userId && f.frame.value.active,
        ),
      );
      alice.unsubscribe();
      bob.unsubscribe();
    });
  }

  it("refuses bad input with precise codes", async () => {
    const { alice, bob, conversationId } = await pair("connect");
    const stranger = new WebDevice(server.url, "grpc-web");
    await stranger.register(uniqueName("web_s"));
    const cursors = Array.from({ length: 257 }, () => ({ conversationId, seq: 1n }));
    await rejectsWith(
      alice.gateway.ack({ delivered: cursors }),
      Code.InvalidArgument,
      /delivered: at most 256 cursors/,
    );
    await rejectsWith(alice.gateway.ack({}), Code.InvalidArgument, /at least one cursor/);
    await rejectsWith(
      alice.gateway.ack({ read: [{ conversationId: "nope", seq: 1n }] }),
      Code.InvalidArgument,
      /read\[0\]\.conversation_id/,
    );
    await rejectsWith(alice.gateway.setTyping({ conversationId: "x", active: true }), Code.InvalidArgument);
    await rejectsWith(
      stranger.gateway.setTyping({ conversationId, active: true }),
      Code.PermissionDenied,
      /not a member/,
    );
    const anonymous = new WebDevice(server.url, "grpc-web");
    anonymous.subscribe();
    await assert.rejects(
      anonymous.waitFor("nothing", () => undefined),
      /stream ended/,
    );
    assert.equal(anonymous.ended?.error?.code, Code.Unauthenticated);
    const tooMany = Array.from({ length: 257 }, (_, i) => `u_${String(i).padStart(26, "0")}`);
    bob.subscribe(tooMany);
    await assert.rejects(
      bob.waitFor("nothing", () => undefined),
      /stream ended/,
    );
    assert.equal(bob.ended?.error?.code, Code.InvalidArgument);
    assert.match(bob.ended?.error?.rawMessage ?? "", /presence_user_ids: at most 256/);
  });

  it("serves h2c on the same port, and the health paths on both protocols", async () => {
    const health = await fetch(`${server.url}/healthz`);
    assert.equal(health.status, 200);
    await health.text();
    const sessions = new Http2SessionManager(server.url);
    try {
      const accounts = createClient(
        AccountService,
        createGrpcTransport({ baseUrl: server.url, sessionManager: sessions }),
      );
      const r = await accounts.register({ username: uniqueName("h2c"), deviceName: "grpc" });
      assert.ok(r.user?.userId.startsWith("u_"));
    } finally {
      sessions.abort();
    }
  });

  it("answers CORS preflights for the configured origin only", async () => {
    const path = `${server.url}/switchboard.v1.GatewayService/Subscribe`;
    const preflight = (origin: string) =>
      fetch(path, {
        method: "OPTIONS",
        headers: {
          origin,
          "access-control-request-method": "POST",
          "access-control-request-headers": "authorization, content-type, connect-protocol-version",
        },
      });
    const ok = await preflight(ALLOWED);
    assert.equal(ok.status, 204);
    assert.equal(ok.headers.get("access-control-allow-origin"), ALLOWED);
    const allowHeaders = (ok.headers.get("access-control-allow-headers") ?? "").toLowerCase();
    for (const h of ["authorization", "content-type", "connect-protocol-version", "x-grpc-web"]) {
      assert.ok(allowHeaders.includes(h), `${h} allowed: ${allowHeaders}`);
    }
    assert.match(ok.headers.get("access-control-allow-methods") ?? "", /POST/);
    const refused = await preflight("http://evil.example");
    assert.equal(refused.status, 403);
    assert.equal(refused.headers.get("access-control-allow-origin"), null);
    await refused.text();

    // A call from the allowed origin carries the headers a browser needs to read it.
    const call = await fetch(`${server.url}/switchboard.v1.AccountService/CreateToken`, {
      method: "POST",
      headers: { origin: ALLOWED, "content-type": "application/json", "connect-protocol-version": "1" },
      body: JSON.stringify({ deviceId: "dv_nope", deviceSecret: "x" }),
    });
    assert.equal(call.headers.get("access-control-allow-origin"), ALLOWED);
    assert.match(call.headers.get("access-control-expose-headers") ?? "", /grpc-status/i);
    await call.text();
  });
});
