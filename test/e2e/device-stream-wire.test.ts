import assert from "node:assert/strict";
import * as http2 from "node:http2";
import { after, before, describe, it } from "node:test";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import {
  ConnectRequestSchema,
  type ConnectResponse,
  ConnectResponseSchema,
  GatewayService,
} from "../../gen/switchboard/v1/gateway_pb.js";
import { freePort } from "../../services/mesh/servers.js";
import { TestDevice, uniqueName } from "../helpers/device.js";
import { removeDir, type ServerProcess, startServerProcess } from "../helpers/server.js";

const protoRoot = new URL("../../proto", import.meta.url).pathname;
const PATH = "/switchboard.v1.GatewayService/Connect";

interface Frame {
  frame: string;
  [key: string]: unknown;
}

/**
 * The device stream's gRPC fast path (services/server/device-stream.ts) at the wire, with stock
 * clients (@grpc/grpc-js, connect-es) and a raw HTTP/2 client for what stock clients never send:
 * deadlines, statuses in trailers, half-close, a frame too large refused on its header, a broken
 * envelope, compressed requests and the Connect protocol (both served by connect-node).
 */
for (const where of ["main port", "stream port"] as const) {
  describe(`device stream over gRPC at the wire (${where})`, () => {
    let server: ServerProcess;
    /** Where the streams go: the main port, or the stream port (SWITCHBOARD_STREAM_PORT, stream-threads.ts). */
    let streamUrl: string;
    let v1: grpc.GrpcObject;
    const clients: grpc.Client[] = [];
    const devices: TestDevice[] = [];

    before(async () => {
      if (where === "main port") {
        server = await startServerProcess();
        streamUrl = server.url;
      } else {
        const port = await freePort();
        server = await startServerProcess({ env: { SWITCHBOARD_STREAM_PORT: String(port) } });
        streamUrl = `http://127.0.0.1:${port}`;
      }
      const definition = await protoLoader.load(["switchboard/v1/gateway.proto"], {
        includeDirs: [protoRoot],
        longs: String,
        enums: String,
        defaults: true,
        oneofs: true,
      });
      v1 = (grpc.loadPackageDefinition(definition).switchboard as grpc.GrpcObject).v1 as grpc.GrpcObject;
    });
    after(async () => {
      for (const c of clients) c.close();
      await Promise.all(devices.map((d) => d.close()));
      await server.stop();
      await removeDir(server.dataDir);
    });

    async function device(): Promise<TestDevice> {
      const d = await TestDevice.register(server.url, uniqueName("wire"));
      devices.push(d);
      return d;
    }

    function gateway(options: grpc.ChannelOptions = {}): grpc.Client {
      const Ctor = v1.GatewayService as grpc.ServiceClientConstructor;
      const c = new Ctor(new URL(streamUrl).host, grpc.credentials.createInsecure(), options);
      clients.push(c);
      return c;
    }

    function open(stub: grpc.Client, token: string | undefined, options: grpc.CallOptions = {}) {
      const metadata = new grpc.Metadata();
      if (token !== undefined) metadata.set("authorization", `Bearer ${token}`);
      const connect = (
        stub as unknown as Record<
          string,
          (m: grpc.Metadata, o: grpc.CallOptions) => grpc.ClientDuplexStream<object, Frame>
        >
      ).Connect!;
      const s = connect.call(stub, metadata, options);
      const frames: Frame[] = [];
      const ended = new Promise<{ code: number; details: string; metadata: grpc.Metadata }>((resolve) => {
        s.on("data", (f: Frame) => frames.push(f));
        s.on("error", () => {});
        s.on("status", (st: grpc.StatusObject) => resolve(st));
      });
      return { s, frames, ended };
    }

    it("grpc-js: a stream past its deadline ends DEADLINE_EXCEEDED after its frames", async () => {
      const d = await device();
      const { frames, ended } = open(gateway(), d.token, { deadline: Date.now() + 700 });
      const status = await ended;
      assert.equal(status.code, grpc.status.DEADLINE_EXCEEDED, status.details);
      assert.equal(frames[0]?.frame, "ready");
    });

    it("grpc-js: no token is UNAUTHENTICATED in the trailers", async () => {
      const { frames, ended } = open(gateway(), undefined);
      const status = await ended;
      assert.equal(status.code, grpc.status.UNAUTHENTICATED);
      assert.equal(frames.length, 0);
    });

    it("grpc-js: a half-closed stream answers what was sent, then ends OK", async () => {
      const a = await device();
      const b = await device();
      const { conversation } = await a.conversations.openDirect({ peerUserId: b.userId });
      const { s, frames, ended } = open(gateway(), a.token);
      for (let i = 0; i < 5; i++) {
        s.write({
          send: {
            clientMsgId: `half-${i}`,
            conversationId: conversation!.conversationId,
            message: { payload: Buffer.from(`m${i}`) },
          },
        });
      }
      s.end();
      const status = await ended;
      assert.equal(status.code, grpc.status.OK, status.details);
      const acks = frames.filter((f) => f.frame === "sendAck");
      assert.equal(acks.length, 5, "every send answered before the end");
    });

    it("grpc-js with gzip (served by connect-node) and connect-es over the Connect protocol still work", {
      skip: where === "stream port" && "the stream port serves only uncompressed gRPC (tested below)",
    }, async () => {
      const d = await device();
      const gz = open(gateway({ "grpc.default_compression_algorithm": 2 }), d.token, {
        deadline: Date.now() + 1500,
      });
      const gzStatus = await gz.ended;
      assert.equal(gzStatus.code, grpc.status.DEADLINE_EXCEEDED);
      assert.equal(gz.frames[0]?.frame, "ready");

      const transport = createConnectTransport({ baseUrl: server.url, httpVersion: "2" });
      const client = createClient(GatewayService, transport);
      const abort = new AbortController();
      const received: ConnectResponse[] = [];
      const headers = new Headers({ authorization: `Bearer ${d.token}` });
      async function* nothing() {
        await new Promise((r) => setTimeout(r, 2000));
      }
      await assert.rejects(
        (async () => {
          for await (const f of client.connect(nothing(), { headers, signal: abort.signal, timeoutMs: 800 }))
            received.push(f);
        })(),
        (err: unknown) => ConnectError.from(err).code === Code.DeadlineExceeded,
      );
      assert.equal(received[0]?.frame.case, "ready");

      const grpcTransport = createGrpcTransport({ baseUrl: server.url });
      const viaGrpc: ConnectResponse[] = [];
      await assert.rejects(
        (async () => {
          for await (const f of createClient(GatewayService, grpcTransport).connect(nothing(), {
            headers,
            timeoutMs: 800,
          }))
            viaGrpc.push(f);
        })(),
        (err: unknown) => ConnectError.from(err).code === Code.DeadlineExceeded,
      );
      assert.equal(viaGrpc[0]?.frame.case, "ready");
    });

    /** A raw HTTP/2 request to the device stream; resolves with the frames, the status and the trailers. */
    function raw(token: string, body: Buffer, endRequest: boolean) {
      const session = http2.connect(streamUrl);
      const req = session.request({
        ":method": "POST",
        ":path": PATH,
        "content-type": "application/grpc",
        te: "trailers",
        authorization: `Bearer ${token}`,
      });
      const chunks: Buffer[] = [];
      let trailers: http2.IncomingHttpHeaders = {};
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("trailers", (t) => {
        trailers = t;
      });
      // The response is complete at its END_STREAM ('end', after the trailers).
      const done = new Promise<{ frames: ConnectResponse[]; trailers: http2.IncomingHttpHeaders }>(
        (resolve, reject) => {
          const timer = setTimeout(
            () => reject(new Error("the server did not end the stream within 10 s")),
            10_000,
          );
          req.on("end", () => {
            const all = Buffer.concat(chunks);
            const frames: ConnectResponse[] = [];
            for (let o = 0; o + 5 <= all.length; ) {
              const n = all.readUInt32BE(o + 1);
              frames.push(fromBinary(ConnectResponseSchema, all.subarray(o + 5, o + 5 + n)));
              o += 5 + n;
            }
            clearTimeout(timer);
            session.destroy();
            resolve({ frames, trailers });
          });
          req.resume();
        },
      );
      req.write(body);
      if (endRequest) req.end();
      return done;
    }

    function envelope(bytes: Uint8Array, flags = 0): Buffer {
      const out = Buffer.alloc(5 + bytes.length);
      out[0] = flags;
      out.writeUInt32BE(bytes.length, 1);
      out.set(bytes, 5);
      return out;
    }

    it("raw HTTP/2: several frames in one write are each answered; a broken frame is INVALID_ARGUMENT", async () => {
      const d = await device();
      const pings = Buffer.concat(
        [1, 2, 3].map((n) =>
          envelope(
            toBinary(
              ConnectRequestSchema,
              create(ConnectRequestSchema, { frame: { case: "ping", value: { nonce: BigInt(n) } } }),
            ),
          ),
        ),
      );
      const ok = await raw(d.token, pings, true);
      assert.equal(ok.trailers["grpc-status"], "0");
      assert.deepEqual(
        ok.frames
          .filter((f) => f.frame.case === "pong")
          .map((f) => (f.frame.value as { nonce: bigint }).nonce),
        [1n, 2n, 3n],
      );

      const broken = await raw(d.token, envelope(Buffer.from([0xff, 0xff, 0xff, 0xff])), false);
      assert.equal(broken.trailers["grpc-status"], String(Code.InvalidArgument));
      assert.match(decodeURIComponent(String(broken.trailers["grpc-message"])), /malformed frame/);
    });

    it("raw HTTP/2: a frame announced past the read limit is RESOURCE_EXHAUSTED before its body; a compressed flag without grpc-encoding is refused", async () => {
      const d = await device();
      const header = Buffer.alloc(5);
      header.writeUInt32BE(64 * 1024 * 1024, 1);
      const big = await raw(d.token, header, false);
      assert.equal(big.trailers["grpc-status"], String(Code.ResourceExhausted));
      assert.match(decodeURIComponent(String(big.trailers["grpc-message"])), /frame too large/);

      const ping = toBinary(
        ConnectRequestSchema,
        create(ConnectRequestSchema, { frame: { case: "ping", value: { nonce: 1n } } }),
      );
      const compressed = await raw(d.token, envelope(ping, 1), false);
      assert.equal(compressed.trailers["grpc-status"], String(Code.InvalidArgument));
      // Escaped as the gRPC specification says (":" and spaces as they are), as stock grpc-js reads it.
      assert.equal(
        compressed.trailers["grpc-message"],
        "malformed frame: protocol error: received compressed message without grpc-encoding",
      );
    });

    it("a device on this port and one on the main port reach each other", async () => {
      const a = await device();
      const b = await device();
      const { conversation } = await a.conversations.openDirect({ peerUserId: b.userId });
      b.connect();
      await b.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "b caught up");
      const { s, frames, ended } = open(gateway(), a.token);
      s.write({
        send: {
          clientMsgId: "across",
          conversationId: conversation!.conversationId,
          message: { payload: Buffer.from("across ports") },
        },
      });
      await b.waitFor(
        (f) =>
          f.some(
            (x) =>
              x.frame.case === "message" && x.frame.value.entries.some((e) => e.clientMsgId === "across"),
          ),
        "the entry at b",
      );
      s.end();
      assert.equal((await ended).code, grpc.status.OK);
      assert.ok(frames.some((f) => f.frame === "sendAck"));
    });
  });
}
