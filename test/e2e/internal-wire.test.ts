import assert from "node:assert/strict";
import { mkdtemp } from "node:fs/promises";
import type * as http2 from "node:http2";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import {
  DirectoryService,
  GetUserDevicesRequestSchema,
} from "../../gen/switchboard/internal/v1/directory_pb.js";
import { newSecret } from "../../services/common/ids.js";
import { INTERNAL_HEADER, internalCredential } from "../../services/common/internal-auth.js";
import { Mesh } from "../../services/mesh/launcher.js";
import { meshPrerequisites } from "../helpers/backends.js";
import { TestDevice, uniqueName } from "../helpers/device.js";
import { envelope, rawGrpc } from "../helpers/raw-grpc.js";
import { removeDir } from "../helpers/server.js";

const protoRoot = new URL("../../proto", import.meta.url).pathname;
const PATH = "/switchboard.internal.v1.DirectoryService/GetUserDevices";

/**
 * Unary calls between Switchboard processes, served by the fast path (services/server/
 * internal-unary.ts) instead of connect-node: stock @grpc/grpc-js and connect-es clients get
 * the same answers, and for the requests a stock client never sends (broken envelopes, a message
 * over the limit, a bad deadline) a raw HTTP/2 client gets the answer connect-node gives. A
 * request that declares `grpc-encoding: gzip` (with an uncompressed message, which gRPC allows)
 * is still served by connect-node, so each raw request is asked of both paths; connect-node's
 * answers carry `grpc-accept-encoding`, the fast path's do not, which tells them apart.
 */
describe("internal unary calls over gRPC at the wire", { skip: meshPrerequisites().skip }, () => {
  let dir: string;
  let mesh: Mesh;
  let accountsUrl: string;
  const key = newSecret(32);
  const credential = internalCredential(Buffer.from(key, "base64url"));
  let device: TestDevice;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "sb-internal-wire-"));
    mesh = await Mesh.start({
      dir,
      gateways: 1,
      sequencers: 1,
      fanouts: 1,
      relay: false,
      env: { SWITCHBOARD_TOKEN_KEY: key },
    });
    accountsUrl = mesh.processes.get("accounts")!.url;
    device = await TestDevice.register(mesh.gatewayUrls[0]!, uniqueName("wire"));
  });
  after(async () => {
    await device?.close();
    await mesh?.stop();
    if (dir) await removeDir(dir);
  });

  const raw = (body: Buffer, headers: http2.OutgoingHttpHeaders = {}) =>
    rawGrpc(accountsUrl, PATH, body, { [INTERNAL_HEADER]: credential, ...headers });

  /** The same request answered by the fast path and by connect-node. */
  async function bothPaths(body: Buffer, headers: http2.OutgoingHttpHeaders = {}) {
    const fast = await raw(body, headers);
    const connect = await raw(body, { ...headers, "grpc-encoding": "gzip" });
    assert.equal(fast.headers["grpc-encoding"], undefined, "answered by the fast path");
    assert.equal(connect.headers["grpc-encoding"], "gzip", "answered by connect-node");
    return { fast, connect };
  }

  const request = (userIds: string[]) =>
    Buffer.from(toBinary(GetUserDevicesRequestSchema, create(GetUserDevicesRequestSchema, { userIds })));

  it("answers a stock @grpc/grpc-js client", async () => {
    const definition = await protoLoader.load(["switchboard/internal/v1/directory.proto"], {
      includeDirs: [protoRoot],
    });
    const internal = (
      (grpc.loadPackageDefinition(definition).switchboard as grpc.GrpcObject).internal as grpc.GrpcObject
    ).v1 as grpc.GrpcObject;
    const Ctor = internal.DirectoryService as grpc.ServiceClientConstructor;
    const client = new Ctor(new URL(accountsUrl).host, grpc.credentials.createInsecure());
    const call = (metadata: grpc.Metadata) =>
      new Promise<{ users: Array<{ userId: string; deviceIds: string[] }> }>((resolve, reject) => {
        (
          client as unknown as Record<
            string,
            (
              r: object,
              m: grpc.Metadata,
              o: grpc.CallOptions,
              cb: (e: grpc.ServiceError | null, v: never) => void,
            ) => void
          >
        ).GetUserDevices!.call(
          client,
          { userIds: [device.userId] },
          metadata,
          { deadline: Date.now() + 10_000 },
          (e, v) => (e ? reject(e) : resolve(v)),
        );
      });
    try {
      const metadata = new grpc.Metadata();
      metadata.set(INTERNAL_HEADER, credential);
      const answer = await call(metadata);
      assert.deepEqual(answer.users, [{ userId: device.userId, deviceIds: [device.deviceId] }]);
      // Without the credential the edge refuses it before any handler (and before its body).
      const refused = await call(new grpc.Metadata()).then(
        () => assert.fail("answered without the internal credential"),
        (e: grpc.ServiceError) => e,
      );
      assert.equal(refused.code, grpc.status.UNAUTHENTICATED, refused.details);
    } finally {
      client.close();
    }
  });

  it("answers a connect-es gRPC client, deadlines included", async () => {
    const client = createClient(
      DirectoryService,
      createGrpcTransport({
        baseUrl: accountsUrl,
        interceptors: [
          (next) => (req) => {
            req.header.set(INTERNAL_HEADER, credential);
            return next(req);
          },
        ],
      }),
    );
    const answer = await client.getUserDevices({ userIds: [device.userId, "u_00000000000000000000000000"] });
    assert.deepEqual(
      answer.users.map((u) => [u.userId, u.deviceIds]),
      [
        [device.userId, [device.deviceId]],
        ["u_00000000000000000000000000", []],
      ],
    );
    // A deadline that has passed before the call is answered: DEADLINE_EXCEEDED, as ever.
    await assert.rejects(
      client.getUserDevices({ userIds: [device.userId] }, { timeoutMs: 1 }),
      (e: unknown) => e instanceof ConnectError && e.code === Code.DeadlineExceeded,
    );
  });

  it("answers what a stock client never sends as connect-node does", async () => {
    const cases: Array<[string, Buffer, http2.OutgoingHttpHeaders?]> = [
      ["a valid request", envelope(request([device.userId]))],
      ["bytes that are not the message", envelope(Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f]))],
      ["a truncated envelope", envelope(request([device.userId]), 0, 200)],
      ["two envelopes", Buffer.concat([envelope(request(["u_a"])), envelope(request(["u_b"]))])],
      ["no envelope at all", Buffer.from([0, 0])],
      ["a message over the limit, refused on its header", envelope(Buffer.alloc(16), 0, 100 * 1024 * 1024)],
      ["a deadline that is not one", envelope(request([device.userId])), { "grpc-timeout": "soon" }],
    ];
    for (const [what, body, headers] of cases) {
      const { fast, connect } = await bothPaths(body, headers);
      assert.equal(
        fast.status,
        connect.status,
        `${what}: status (fast "${fast.message}", connect-node "${connect.message}")`,
      );
      assert.equal(fast.message, connect.message, `${what}: grpc-message`);
      assert.deepEqual(fast.body, connect.body, `${what}: the answer's message`);
      if (what === "a valid request") assert.equal(fast.status, 0);
      else assert.notEqual(fast.status, 0, what);
    }
  });
});
