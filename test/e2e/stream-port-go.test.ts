import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  ConnectRequestSchema,
  type ConnectResponse,
  ConnectResponseSchema,
} from "../../gen/switchboard/v1/gateway_pb.js";
import { freePort } from "../../services/mesh/servers.js";
import { TestDevice, uniqueName } from "../helpers/device.js";
import { envelope } from "../helpers/raw-grpc.js";
import { removeDir, type ServerProcess, startServerProcess } from "../helpers/server.js";

/**
 * The stream port's HTTP/2 (services/server/h2) against Go's: the standard library's net/http
 * client, an HTTP/2 and HPACK written apart from the nghttp2 that node:http2, grpc-js and
 * connect-es share (test/interop/go-h2c). It needs the go command, which the project's machines
 * have; without it the suite is skipped, except under CI=true, where it fails.
 */

const source = join(dirname(fileURLToPath(import.meta.url)), "..", "interop", "go-h2c");
const PATH = "/switchboard.v1.GatewayService/Connect";

function goMissing(): string | undefined {
  const r = spawnSync("go", ["version"], { encoding: "utf8" });
  if (r.status === 0) return undefined;
  const why = "the go command is not installed (the project's machines have Go)";
  if (process.env.CI === "true") throw new Error(`${why}, and CI=true requires it`);
  return why;
}

/** The gRPC envelopes of a body, decoded. */
function frames(body: Buffer): ConnectResponse[] {
  const out: ConnectResponse[] = [];
  for (let at = 0; at < body.length; ) {
    const length = body.readUInt32BE(at + 1);
    out.push(fromBinary(ConnectResponseSchema, body.subarray(at + 5, at + 5 + length)));
    at += 5 + length;
  }
  return out;
}

const skip = goMissing();

describe("the stream port to Go's HTTP/2 client", { skip }, () => {
  let server: ServerProcess;
  let streamUrl = "";
  let client = "";
  const devices: TestDevice[] = [];

  before(async () => {
    const dir = await mkdtemp(join(tmpdir(), "sb-go-h2c-"));
    client = join(dir, "goh2c");
    // Standard library only: nothing is downloaded, and the local Go builds it.
    execFileSync("go", ["build", "-o", client, "."], {
      cwd: source,
      env: { ...process.env, GOTOOLCHAIN: "local", GOFLAGS: "-mod=mod", CGO_ENABLED: "0" },
      stdio: "pipe",
    });
    const port = await freePort();
    server = await startServerProcess({ env: { SWITCHBOARD_STREAM_PORT: String(port) } });
    streamUrl = `http://127.0.0.1:${port}`;
  });

  after(async () => {
    await Promise.all(devices.map((d) => d.close()));
    await server?.stop();
    if (server) await removeDir(server.dataDir);
    if (client) await removeDir(dirname(client));
  });

  function call(token: string, body: Buffer) {
    const r = spawnSync(client, [`${streamUrl}${PATH}`, token], {
      input: body,
      encoding: "utf8",
      timeout: 30_000,
    });
    const lines = new Map(
      (r.stdout ?? "")
        .trim()
        .split("\n")
        .map((l) => [l.slice(0, l.indexOf(" ")), l.slice(l.indexOf(" ") + 1)] as const),
    );
    assert.equal(lines.get("error"), undefined, `${r.stdout} ${r.stderr}`);
    return {
      proto: lines.get("proto"),
      grpcStatus: lines.get("grpc-status"),
      body: Buffer.from(lines.get("body") ?? "", "hex"),
    };
  }

  it("serves a device stream: sends of up to 60 KB, half-closed, each answered, then OK", async () => {
    const a = await TestDevice.register(server.url, uniqueName("go"));
    const b = await TestDevice.register(server.url, uniqueName("go"));
    devices.push(a, b);
    const { conversation } = await a.conversations.openDirect({ peerUserId: b.userId });
    const sizes = [10, 50_000, 60_000, 1, 40_000];
    const body = Buffer.concat(
      sizes.map((n, i) =>
        envelope(
          toBinary(
            ConnectRequestSchema,
            create(ConnectRequestSchema, {
              frame: {
                case: "send",
                value: {
                  clientMsgId: `go-${i}`,
                  conversationId: conversation!.conversationId,
                  body: { case: "message", value: { payload: new Uint8Array(n).fill(65 + i) } },
                },
              },
            }),
          ),
        ),
      ),
    );
    const answer = call(a.token, body);
    assert.equal(answer.proto, "HTTP/2.0");
    assert.equal(answer.grpcStatus, "0");
    const got = frames(answer.body);
    assert.equal(got[0]?.frame.case, "ready");
    const acks = got.filter((f) => f.frame.case === "sendAck");
    assert.equal(acks.length, sizes.length, got.map((f) => f.frame.case).join(" "));

    // The other device reads them back over the same client, whole.
    const read = frames(call(b.token, Buffer.alloc(0)).body);
    const payloads = read
      .flatMap((f) => (f.frame.case === "message" ? f.frame.value.entries : []))
      .flatMap((e) => (e.body.case === "message" ? [e.body.value.payload.length] : []));
    assert.deepEqual(payloads, sizes);
  });

  it("answers a stream without a token UNAUTHENTICATED", () => {
    const answer = call("-", Buffer.alloc(0));
    assert.equal(answer.proto, "HTTP/2.0");
    assert.equal(answer.grpcStatus, "16");
    assert.equal(answer.body.length, 0);
  });
});
