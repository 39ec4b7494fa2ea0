import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { removeDir, type ServerProcess, startServerProcess } from "../helpers/server.js";

const protoRoot = new URL("../../proto", import.meta.url).pathname;

type Callback<T> = (err: grpc.ServiceError | null, value: T) => void;
type Unary<Res> = (req: object, metadata: grpc.Metadata, cb: Callback<Res>) => void;
interface Frame {
  frame: string;
  [key: string]: unknown;
}
interface Registered {
  user: { userId: string };
  credential: { deviceId: string; deviceSecret: string };
}

/**
 * A native-style client: @grpc/grpc-js with stubs loaded at run time from proto/, no generated
 * TypeScript and no Connect, as a partner or a mobile team using another gRPC stack would.
 */
describe("plain @grpc/grpc-js client loaded from the .proto files", () => {
  let server: ServerProcess;
  let v1: grpc.GrpcObject;
  const clients: grpc.Client[] = [];

  before(async () => {
    server = await startServerProcess();
    const definition = await protoLoader.load(
      ["switchboard/v1/accounts.proto", "switchboard/v1/conversations.proto", "switchboard/v1/gateway.proto"],
      { includeDirs: [protoRoot], longs: String, enums: String, defaults: true, oneofs: true },
    );
    v1 = (grpc.loadPackageDefinition(definition).switchboard as grpc.GrpcObject).v1 as grpc.GrpcObject;
  });
  after(async () => {
    for (const c of clients) c.close();
    await server.stop();
    await removeDir(server.dataDir);
  });

  function client(service: string): grpc.Client {
    const Ctor = v1[service] as grpc.ServiceClientConstructor;
    const c = new Ctor(new URL(server.url).host, grpc.credentials.createInsecure());
    clients.push(c);
    return c;
  }

  /** Calls a unary method of a stub built at run time, as dynamic gRPC stacks do. */
  function rpc<Res>(stub: grpc.Client, method: string, req: object, token?: string): Promise<Res> {
    const fn = (stub as unknown as Record<string, Unary<Res>>)[method]!;
    const metadata = new grpc.Metadata();
    if (token) metadata.set("authorization", `Bearer ${token}`);
    return new Promise((resolve, reject) =>
      fn.call(stub, req, metadata, (err, res) => (err ? reject(err) : resolve(res))),
    );
  }

  function stream(stub: grpc.Client, token: string): grpc.ClientDuplexStream<object, Frame> {
    const metadata = new grpc.Metadata();
    metadata.set("authorization", `Bearer ${token}`);
    const connect = (
      stub as unknown as Record<string, (m: grpc.Metadata) => grpc.ClientDuplexStream<object, Frame>>
    ).Connect!;
    return connect.call(stub, metadata);
  }

  it("registers, opens a direct conversation and exchanges messages over a bidi stream", async () => {
    const accounts = client("AccountService");
    const conversations = client("ConversationService");
    const gateway = client("GatewayService");
    const suffix = Math.random().toString(36).slice(2, 8);
    const a = await rpc<Registered>(accounts, "Register", {
      username: `native_a_${suffix}`,
      deviceName: "grpc",
    });
    const b = await rpc<Registered>(accounts, "Register", {
      username: `native_b_${suffix}`,
      deviceName: "grpc",
    });
    const token = async (cred: Registered["credential"]) =>
      (await rpc<{ accessToken: string }>(accounts, "CreateToken", cred)).accessToken;
    const tokenA = await token(a.credential);
    const tokenB = await token(b.credential);
    const opened = await rpc<{ conversation: { conversationId: string } }>(
      conversations,
      "OpenDirect",
      { peerUserId: b.user.userId },
      tokenA,
    );
    const id = opened.conversation.conversationId;

    const streamB = stream(gateway, tokenB);
    const framesB: Frame[] = [];
    const received = new Promise<Frame>((resolve) => {
      streamB.on("data", (f: Frame) => {
        framesB.push(f);
        const entries =
          (f as Frame & { message?: { entries: Array<{ seq: string }> } }).message?.entries ?? [];
        if (entries.some((e) => e.seq === "2")) resolve(f);
      });
    });
    const streamA = stream(gateway, tokenA);
    const acked = new Promise<Frame>((resolve) =>
      streamA.on("data", (f: Frame) => f.frame === "sendAck" && resolve(f)),
    );
    streamA.write({
      send: {
        clientMsgId: "native-1",
        conversationId: id,
        message: { payload: Buffer.from("hello from grpc-js") },
      },
    });
    // The send_ack, the entry and the receipt are encoded by hand on the server
    // (services/common/hot-encoding.ts); protobufjs, another implementation, reads every field.
    const ack = (await acked) as Frame & {
      sendAck: { seq: string; clientMsgId: string; conversationId: string; serverTimeMs: string };
    };
    assert.equal(ack.sendAck.seq, "2");
    assert.equal(ack.sendAck.clientMsgId, "native-1");
    assert.equal(ack.sendAck.conversationId, id);
    assert.ok(Math.abs(Number(ack.sendAck.serverTimeMs) - Date.now()) < 60_000);
    const message = (await received) as Frame & {
      message: { entries: Array<{ seq: string; message: { payload: Buffer }; senderUserId: string }> };
    };
    const entry = message.message.entries.find((e) => e.seq === "2") as
      | ((typeof message.message.entries)[number] & {
          clientMsgId: string;
          conversationId: string;
          serverTimeMs: string;
        })
      | undefined;
    assert.equal(entry?.senderUserId, a.user.userId);
    assert.equal(entry?.clientMsgId, "native-1");
    assert.equal(entry?.conversationId, id);
    assert.equal(entry?.serverTimeMs, ack.sendAck.serverTimeMs);
    assert.equal(Buffer.from(entry!.message.payload).toString(), "hello from grpc-js");
    assert.equal(framesB[0]?.frame, "ready");
    streamB.write({ ack: { cursors: [{ conversationId: id, seq: "2" }] } });
    const receipt = await new Promise<Frame>((resolve) =>
      streamA.on("data", (f: Frame) => f.frame === "receipt" && resolve(f)),
    );
    const r = (
      receipt as Frame & {
        receipt: { upToSeq: string; conversationId: string; userId: string; kind: string };
      }
    ).receipt;
    assert.equal(r.upToSeq, "2");
    assert.equal(r.conversationId, id);
    assert.equal(r.userId, b.user.userId);
    assert.equal(r.kind, "RECEIPT_KIND_DELIVERED");

    // Errors arrive as gRPC status codes a native client understands.
    await assert.rejects(
      rpc(conversations, "GetHistory", { conversationId: id }),
      (err: grpc.ServiceError) => err.code === grpc.status.UNAUTHENTICATED,
    );
    // The server ends the streams when it stops; that is expected here.
    streamA.on("error", () => {});
    streamB.on("error", () => {});
    streamA.end();
    streamB.end();
  });
});
