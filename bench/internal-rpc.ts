/**
 * CPU per internal unary call, server side and client side: connect-node's handler and client
 * against the mesh's own halves (services/server/internal-unary.ts serving,
 * services/server/internal-client.ts calling).
 *
 *   npx tsx bench/internal-rpc.ts [calls] [concurrency]
 *
 * The server runs in a child process (a trivial PresenceService.LookupRoutes that answers at
 * once) and reports its own CPU time; the client runs here. Each pairing is measured twice,
 * alternating, since this VM's speed drifts.
 */
import { fork } from "node:child_process";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { connectNodeAdapter, createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { LookupRoutesRequestSchema, PresenceService } from "../gen/switchboard/internal/v1/presence_pb.js";
import { INTERNAL_READ_MAX_BYTES } from "../services/server/grpc-wire.js";
import { createInternalTransport } from "../services/server/internal-client.js";
import { internalUnaryFastPath } from "../services/server/internal-unary.js";

type Kind = "connect-node" | "fast path";
type ClientKind = "connect-node" | "internal";

async function serve(kind: Kind): Promise<void> {
  const impl = { lookupRoutes: async () => ({ routes: [] }) };
  const connect = connectNodeAdapter({ routes: (router) => router.service(PresenceService, impl) });
  const handler =
    kind === "fast path"
      ? internalUnaryFastPath(connect, {
          services: [{ service: PresenceService, impl }],
          interceptors: [],
          readMaxBytes: 1 << 20,
        })
      : connect;
  const server = http2.createServer(handler);
  server.listen(0, "127.0.0.1", () => process.send?.({ port: (server.address() as AddressInfo).port }));
  process.on("message", () => {
    const used = process.cpuUsage();
    process.send?.({ cpuMicros: used.user + used.system });
  });
}

async function measure(
  kind: Kind,
  clientKind: ClientKind,
  calls: number,
  concurrency: number,
): Promise<string> {
  const child = fork(new URL(import.meta.url).pathname, ["--serve", kind], {
    execArgv: process.execArgv,
  });
  const next = () =>
    new Promise<Record<string, number>>((resolve) => child.once("message", resolve as never));
  const { port } = await next();
  const baseUrl = `http://127.0.0.1:${port}`;
  const sessionManager = new Http2SessionManager(baseUrl);
  const grpcTransport = createGrpcTransport({ baseUrl, sessionManager });
  const transport =
    clientKind === "internal"
      ? createInternalTransport({
          baseUrl,
          sessionManager,
          interceptors: [],
          defaultTimeoutMs: 15_000,
          readMaxBytes: INTERNAL_READ_MAX_BYTES,
          streams: grpcTransport,
        })
      : grpcTransport;
  const client = createClient(PresenceService, transport);
  const request = create(LookupRoutesRequestSchema, { userIds: ["u_1", "u_2"] });
  // Warm up both sides (JIT, the HTTP/2 connection), then measure from here.
  for (let i = 0; i < 500; i++) await client.lookupRoutes(request);
  child.send("cpu");
  const before = (await next()).cpuMicros!;
  const clientBefore = process.cpuUsage();
  const started = performance.now();
  let issued = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (issued++ < calls) await client.lookupRoutes(request);
    }),
  );
  const elapsed = performance.now() - started;
  const clientUsed = process.cpuUsage(clientBefore);
  child.send("cpu");
  const after = (await next()).cpuMicros!;
  child.kill();
  sessionManager.abort();
  const per = (micros: number) => (micros / calls).toFixed(0);
  return `server ${kind.padEnd(12)} client ${clientKind.padEnd(12)} ${calls} calls in ${elapsed.toFixed(0)} ms: server ${per(after - before)} µs CPU per call, client ${per(clientUsed.user + clientUsed.system)} µs`;
}

if (process.argv[2] === "--serve") {
  await serve(process.argv[3] as Kind);
} else {
  const calls = Number(process.argv[2] ?? 10_000);
  const concurrency = Number(process.argv[3] ?? 4);
  console.log(`node ${process.version}; ${concurrency} calls in flight`);
  const pairs: Array<[Kind, ClientKind]> = [
    ["connect-node", "connect-node"],
    ["fast path", "connect-node"],
    ["fast path", "internal"],
  ];
  for (let round = 0; round < 2; round++) {
    for (const [kind, clientKind] of pairs) console.log(await measure(kind, clientKind, calls, concurrency));
  }
}
