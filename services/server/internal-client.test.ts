import assert from "node:assert/strict";
import * as http2 from "node:http2";
import type { AddressInfo, Socket } from "node:net";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { connectNodeAdapter, createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { type DeviceRoute, PresenceService } from "../../gen/switchboard/internal/v1/presence_pb.js";
import { isTransportFailure } from "../common/boundary.js";
import { createInternalTransport } from "./internal-client.js";

const protoRoot = new URL("../../proto", import.meta.url).pathname;
const ROUTE = { userId: "u_1", deviceId: "dv_1", gatewayId: "gateway-0", sessionId: "s_1" };

/** The error a call that must fail ends with. */
async function failureOf(call: Promise<unknown>): Promise<ConnectError> {
  const err = await call.then(
    () => assert.fail("answered"),
    (e: unknown) => e,
  );
  assert.ok(err instanceof ConnectError, String(err));
  return err;
}

/** What the test servers do for LookupRoutes, by the first user id asked for. */
type Behaviour = "answer" | "refuse" | "hang" | "big";

/** The routes of the "big" answer: about 24 KiB, over the readMaxBytes some tests give. */
const BIG = Array.from({ length: 400 }, (_, i) => ({ ...ROUTE, deviceId: `dv_${i}` }));

/** The internal client transport against `url`, with an interceptor that marks every call. */
function clientOf(url: string, interceptors: Interceptor[] = [], readMaxBytes = 1024 * 1024) {
  const sessionManager = new Http2SessionManager(url);
  const transport = createInternalTransport({
    baseUrl: url,
    sessionManager,
    interceptors,
    defaultTimeoutMs: 5_000,
    readMaxBytes,
    streams: createGrpcTransport({ baseUrl: url, sessionManager }),
  });
  return { client: createClient(PresenceService, transport), close: () => sessionManager.abort() };
}

/**
 * The client half of the mesh's internal calls (internal-client.ts) against stock servers:
 * @grpc/grpc-js's and connect-node's. Answers, statuses with their messages and metadata from
 * trailers and from trailers-only responses, deadlines, cancellation, and a peer that is not
 * there or goes away mid-call, which must read as a transport failure (boundary.ts) so that
 * callers retry.
 */
describe("internal client transport against stock gRPC servers", () => {
  let grpcServer: grpc.Server;
  let grpcUrl: string;
  let connectServer: http2.Http2Server;
  let connectUrl: string;
  const sockets = new Set<http2.ServerHttp2Session>();

  before(async () => {
    const definition = await protoLoader.load(["switchboard/internal/v1/presence.proto"], {
      includeDirs: [protoRoot],
    });
    const v1 = (
      (grpc.loadPackageDefinition(definition).switchboard as grpc.GrpcObject).internal as grpc.GrpcObject
    ).v1 as grpc.GrpcObject;
    grpcServer = new grpc.Server();
    grpcServer.addService((v1.PresenceService as grpc.ServiceClientConstructor).service, {
      LookupRoutes: (
        call: grpc.ServerUnaryCall<{ userIds: string[] }, unknown>,
        callback: grpc.sendUnaryData<unknown>,
      ) => {
        const behaviour = call.request.userIds[0] as Behaviour;
        if (behaviour === "refuse") {
          const metadata = new grpc.Metadata();
          metadata.set("retry-after-ms", "250");
          callback({ code: grpc.status.RESOURCE_EXHAUSTED, details: "too many: retry later é", metadata });
        } else if (behaviour === "answer") {
          callback(null, { routes: [ROUTE] });
        } else if (behaviour === "big") {
          callback(null, { routes: BIG });
        }
        // "hang": never answers.
      },
    });
    const port = await new Promise<number>((resolve, reject) =>
      grpcServer.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) =>
        e ? reject(e) : resolve(p),
      ),
    );
    grpcUrl = `http://127.0.0.1:${port}`;

    connectServer = http2.createServer(
      connectNodeAdapter({
        routes: (router) =>
          router.service(PresenceService, {
            lookupRoutes: async (req, ctx) => {
              const behaviour = req.userIds[0] as Behaviour;
              if (behaviour === "refuse") {
                throw new ConnectError("too many: retry later é", Code.ResourceExhausted, {
                  "retry-after-ms": "250",
                });
              }
              if (behaviour === "hang") await new Promise((r) => ctx.signal.addEventListener("abort", r));
              return { routes: behaviour === "big" ? BIG : [ROUTE] };
            },
          }),
      }),
    );
    connectServer.on("session", (s) => {
      sockets.add(s);
      s.once("close", () => sockets.delete(s));
    });
    await new Promise<void>((resolve) => connectServer.listen(0, "127.0.0.1", resolve));
    connectUrl = `http://127.0.0.1:${(connectServer.address() as AddressInfo).port}`;
  });
  after(async () => {
    grpcServer.forceShutdown();
    for (const s of sockets) s.destroy();
    await new Promise((r) => connectServer.close(r));
  });

  for (const server of ["grpc-js", "connect-node"] as const) {
    const url = () => (server === "grpc-js" ? grpcUrl : connectUrl);

    it(`${server}: answers, with the interceptors' headers on the wire`, async () => {
      const seen: string[] = [];
      const { client, close } = clientOf(url(), [
        (next) => async (req) => {
          req.header.set("x-test", "1");
          const res = await next(req);
          seen.push(res.header.get("content-type") ?? "");
          return res;
        },
      ]);
      try {
        const answer = await client.lookupRoutes({ userIds: ["answer"] });
        assert.deepEqual(
          answer.routes.map((r: DeviceRoute) => ({ ...r, $typeName: undefined })),
          [{ ...ROUTE, $typeName: undefined }],
        );
        assert.match(seen[0]!, /^application\/grpc/);
      } finally {
        close();
      }
    });

    it(`${server}: a refusal keeps its code, its message and its trailers`, async () => {
      const { client, close } = clientOf(url());
      try {
        const err = await failureOf(client.lookupRoutes({ userIds: ["refuse"] }));
        assert.equal(err.code, Code.ResourceExhausted);
        assert.equal(err.rawMessage, "too many: retry later é");
        assert.equal(err.metadata.get("retry-after-ms"), "250");
        assert.equal(isTransportFailure(err), false, "an answer, not a lost call");
      } finally {
        close();
      }
    });

    it(`${server}: a deadline ends the call DEADLINE_EXCEEDED, a signal CANCELED`, async () => {
      const { client, close } = clientOf(url());
      try {
        await assert.rejects(
          client.lookupRoutes({ userIds: ["hang"] }, { timeoutMs: 100 }),
          (e: unknown) => e instanceof ConnectError && e.code === Code.DeadlineExceeded,
        );
        const controller = new AbortController();
        const call = client.lookupRoutes({ userIds: ["hang"] }, { signal: controller.signal });
        setTimeout(() => controller.abort(), 50);
        await assert.rejects(call, (e: unknown) => e instanceof ConnectError && e.code === Code.Canceled);
        // The connection is still good for the next call.
        assert.equal((await client.lookupRoutes({ userIds: ["answer"] })).routes.length, 1);
      } finally {
        close();
      }
    });
    it(`${server}: an answer over readMaxBytes is RESOURCE_EXHAUSTED; the connection stays good`, async () => {
      const { client, close } = clientOf(url(), [], 4096);
      try {
        const err = await failureOf(client.lookupRoutes({ userIds: ["big"] }));
        assert.equal(err.code, Code.ResourceExhausted, err.message);
        assert.match(err.rawMessage, /^message size \d+ is larger than configured readMaxBytes 4096$/);
        assert.equal((await client.lookupRoutes({ userIds: ["answer"] })).routes.length, 1);
      } finally {
        close();
      }
      // Under the bound, the same answer is read whole.
      const roomy = clientOf(url(), [], 64 * 1024);
      try {
        assert.equal((await roomy.client.lookupRoutes({ userIds: ["big"] })).routes.length, BIG.length);
      } finally {
        roomy.close();
      }
    });
  }

  it("a peer that promises an endless answer is refused from its envelope, not buffered", async () => {
    // A bad peer: gRPC headers, then an envelope declaring 4 GiB - 1 and bytes for as long as the
    // stream stays open. The client must refuse at the envelope and cancel the stream.
    let written = 0;
    let cancelled!: () => void;
    const cancelledSeen = new Promise<void>((resolve) => {
      cancelled = resolve;
    });
    const endless = http2.createServer();
    endless.on("stream", (stream) => {
      stream.respond({ ":status": 200, "content-type": "application/grpc" });
      const header = Buffer.from([0, 0xff, 0xff, 0xff, 0xff]);
      stream.write(header);
      const chunk = Buffer.alloc(16 * 1024);
      const pump = () => {
        while (!stream.destroyed && written < 256 * 1024 * 1024) {
          written += chunk.length;
          if (!stream.write(chunk)) return void stream.once("drain", pump);
        }
      };
      pump();
      stream.on("close", () => cancelled());
      stream.on("error", () => {});
    });
    await new Promise<void>((resolve) => endless.listen(0, "127.0.0.1", resolve));
    const { client, close } = clientOf(`http://127.0.0.1:${(endless.address() as AddressInfo).port}`);
    try {
      const err = await failureOf(client.lookupRoutes({ userIds: ["answer"] }));
      assert.equal(err.code, Code.ResourceExhausted, err.message);
      assert.match(err.rawMessage, /message size 4294967295 is larger than configured readMaxBytes 1048576/);
      await cancelledSeen;
      // Flow control stops the peer within a window or two of the refusal, far from its 256 MiB.
      assert.ok(written < 8 * 1024 * 1024, `the peer wrote ${written} bytes`);
    } finally {
      close();
      await new Promise((r) => endless.close(r));
    }
  });

  it("a peer that is not there is UNAVAILABLE, and a transport failure", async () => {
    const closed = http2.createServer();
    await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((r) => closed.close(r));
    const { client, close } = clientOf(`http://127.0.0.1:${port}`);
    try {
      const err = await failureOf(client.lookupRoutes({ userIds: ["answer"] }));
      assert.equal(err.code, Code.Unavailable, err.message);
      assert.ok(isTransportFailure(err) || err.code === Code.Unavailable);
    } finally {
      close();
    }
  });

  it("a peer that dies after its answer's headers, before its status, is a failure the caller retries", async () => {
    // What a SIGKILLed sequencer can leave: the answer's headers sent (with a first message, or
    // before it), then the connection gone. The stream never ended, so its status never came:
    // that is the transport's failure (retried), not a peer's protocol error (INTERNAL).
    for (const partial of [Buffer.alloc(0), Buffer.from([0, 0, 0, 0, 9, 1, 2])]) {
      const dying = http2.createServer();
      const connections = new Set<Socket>();
      dying.on("connection", (socket: Socket) => connections.add(socket));
      dying.on("stream", (stream) => {
        stream.on("error", () => {});
        stream.respond({ ":status": 200, "content-type": "application/grpc" });
        if (partial.length > 0) stream.write(partial);
        // As the kernel does for a killed process: the TCP connection closes, no GOAWAY, no trailers.
        setTimeout(() => {
          for (const socket of connections) socket.destroy();
        }, 50);
      });
      await new Promise<void>((resolve) => dying.listen(0, "127.0.0.1", resolve));
      const { client, close } = clientOf(`http://127.0.0.1:${(dying.address() as AddressInfo).port}`);
      try {
        const err = await failureOf(client.lookupRoutes({ userIds: ["answer"] }));
        assert.ok(
          err.code === Code.Unavailable || isTransportFailure(err),
          `${partial.length} bytes of the answer, then the peer died: retried by callers, not ${Code[err.code]} ${err.message}`,
        );
      } finally {
        close();
        await new Promise((r) => dying.close(r));
      }
    }
  });

  it("a peer whose connection goes away mid-call is a failure the caller retries", async () => {
    const { client, close } = clientOf(connectUrl);
    try {
      const call = client.lookupRoutes({ userIds: ["hang"] });
      await new Promise((r) => setTimeout(r, 100));
      for (const s of sockets) s.destroy();
      const err = await failureOf(call);
      assert.ok(
        err.code === Code.Unavailable || isTransportFailure(err),
        `retried by callers: ${Code[err.code]} ${err.message}`,
      );
    } finally {
      close();
    }
  });
});
