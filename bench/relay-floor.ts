/**
 * The latency floor under the 1:1 targets: a server that speaks the device protocol the bench
 * speaks, frame for frame, and does nothing else. It holds users, conversations and seqs in
 * memory; it stores nothing, syncs nothing, checks no token and no membership, bounds nothing;
 * every send is answered (send_ack) and relayed (a message frame to the other members' streams)
 * in the turn that reads it, and every ack turns into a receipts frame for the other members, as
 * the server's do with batch_receipts. It is what the bench's numbers would be if the server cost
 * nothing but its HTTP/2 and protobuf-es: run `npm run bench` against it and the difference from
 * a run against `switchboard start` is what Switchboard's own work costs, latency included.
 *
 *   node_modules/.bin/tsx bench/relay-floor.ts [port] [--h2 node|own]   # prints its URL and pid, then a line a second
 *   npm run bench -- --url URL --server-pid PID --devices 1000 --rate 5000 --duration 20
 *
 * `--h2 node` (the default) serves on node:http2, as the server's main port does. `--h2 own`
 * serves on the stream port's HTTP/2 (services/server/h2/connection.ts), the floor under
 * `--stream-port on`: it costs less a frame than node:http2, so the floor under the stream port is
 * its own, not node:http2's. Everything, setup calls included, is served on the one port and the
 * one thread either way.
 *
 * Written plainly on purpose: frames through protobuf-es's create and toBinary, one write per
 * stream per turn (as the server batches), unary calls answered on the raw HTTP/2 stream. Once a
 * second it prints its main thread's event-loop utilisation and its longest delay (10 ms
 * resolution), the figures the bench's probe reports for the real server. Nothing of services/
 * is loaded but, with `--h2 own`, its HTTP/2; gen/ is, for the schemas. Not for anything but
 * measuring: it serves anyone who asks.
 */
import * as http2 from "node:http2";
import { createServer as createNetServer } from "node:net";
import { monitorEventLoopDelay, performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import {
  create,
  type DescMessage,
  fromBinary,
  type MessageInitShape,
  type MessageShape,
  toBinary,
} from "@bufbuild/protobuf";
import {
  AccountService,
  CreateTokenRequestSchema,
  CreateTokenResponseSchema,
  RegisterRequestSchema,
  RegisterResponseSchema,
} from "../gen/switchboard/v1/accounts_pb.js";
import {
  ConversationService,
  CreateGroupRequestSchema,
  CreateGroupResponseSchema,
  OpenDirectRequestSchema,
  OpenDirectResponseSchema,
} from "../gen/switchboard/v1/conversations_pb.js";
import { EntrySchema } from "../gen/switchboard/v1/entry_pb.js";
import {
  type ConnectRequest,
  ConnectRequestSchema,
  ConnectResponseSchema,
  GatewayService,
  ReceiptKind,
} from "../gen/switchboard/v1/gateway_pb.js";
import { H2Connection, type H2ServerOptions, type H2Stream } from "../services/server/h2/connection.js";

interface Conversation {
  id: string;
  /** Member user ids. */
  members: string[];
  seq: bigint;
}

/** One device's open Connect stream and the frames it has waiting for this turn's write. */
interface Device {
  userId: string;
  deviceId: string;
  stream: RelayStream;
  pending: Uint8Array[];
  pendingBytes: number;
}

/** Users by device id; a device's id is also its access token here. */
const userOfDevice = new Map<string, string>();
const conversations = new Map<string, Conversation>();
/** Live streams by user (the bench gives each user one device). */
const live = new Map<string, Device>();
let nextId = 0;
const id = (prefix: string) => `${prefix}${(++nextId).toString(36)}`;

// ---- a request stream, on either HTTP/2 ----

/** What the relay does with a request stream; one adapter each for node:http2 and the own HTTP/2. */
interface RelayStream {
  /** Closed, or its answer ended: nothing more may be written. */
  readonly done: boolean;
  /** Starts taking the request's body ("data", then "end"). */
  read(onData: (chunk: Buffer) => void, onEnd: () => void): void;
  onClose(fn: () => void): void;
  /** Answers 200 with the gRPC content type; the trailers follow at finish(). */
  open(): void;
  write(bytes: Uint8Array): void;
  /** Ends the answer with grpc-status 0, after what was written. */
  finish(): void;
  /** A trailers-only answer with this grpc-status. */
  refuse(grpcStatus: number): void;
}

const GRPC_CONTENT_TYPE = "application/grpc+proto";

function nodeStream(stream: http2.ServerHttp2Stream): RelayStream {
  stream.on("error", () => {});
  return {
    get done() {
      return stream.closed || stream.writableEnded;
    },
    read(onData, onEnd) {
      stream.on("data", onData);
      stream.on("end", onEnd);
    },
    onClose: (fn) => stream.on("close", fn),
    open() {
      stream.respond({ ":status": 200, "content-type": GRPC_CONTENT_TYPE }, { waitForTrailers: true });
      stream.once("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
    },
    write: (bytes) => stream.write(bytes),
    finish: () => stream.end(),
    refuse(grpcStatus) {
      stream.respond(
        { ":status": 200, "content-type": GRPC_CONTENT_TYPE, "grpc-status": String(grpcStatus) },
        { endStream: true },
      );
    },
  };
}

function ownStream(stream: H2Stream): RelayStream {
  let finished = false;
  return {
    get done() {
      return stream.closed || finished;
    },
    read(onData, onEnd) {
      stream.on("data", onData);
      stream.on("end", onEnd);
      // An H2Stream holds its body until it is resumed.
      stream.resume();
    },
    onClose: (fn) => stream.on("close", fn),
    open: () => stream.respond(200, [["content-type", GRPC_CONTENT_TYPE]]),
    write: (bytes) => stream.write(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)),
    finish() {
      finished = true;
      stream.end([["grpc-status", "0"]]);
    },
    refuse(grpcStatus) {
      finished = true;
      stream.respond(
        200,
        [
          ["content-type", GRPC_CONTENT_TYPE],
          ["grpc-status", String(grpcStatus)],
        ],
        true,
      );
    },
  };
}

// ---- gRPC framing ----

function frame(body: Uint8Array): Uint8Array {
  const out = new Uint8Array(5 + body.length);
  new DataView(out.buffer).setUint32(1, body.length);
  out.set(body, 5);
  return out;
}

/** Splits whole length-prefixed messages off `buffer`; returns them and what is left. */
function messages(buffer: Buffer): { bodies: Buffer[]; rest: Buffer } {
  const bodies: Buffer[] = [];
  let offset = 0;
  while (buffer.length - offset >= 5) {
    const length = buffer.readUInt32BE(offset + 1);
    if (buffer.length - offset < 5 + length) break;
    bodies.push(buffer.subarray(offset + 5, offset + 5 + length));
    offset += 5 + length;
  }
  return { bodies, rest: buffer.subarray(offset) };
}

// ---- unary calls: just what the bench's setup asks ----

type Unary = (body: Buffer, caller: string | undefined) => Uint8Array;

function unary<I extends DescMessage, O extends DescMessage>(
  input: I,
  output: O,
  fn: (req: MessageShape<I>, caller: string | undefined) => MessageShape<O>,
): Unary {
  return (body, caller) => toBinary(output, fn(fromBinary(input, body), caller));
}

const UNARY = new Map<string, Unary>([
  [
    `/${AccountService.typeName}/Register`,
    unary(RegisterRequestSchema, RegisterResponseSchema, (req) => {
      const userId = id("u");
      const deviceId = id("d");
      userOfDevice.set(deviceId, userId);
      return create(RegisterResponseSchema, {
        user: { userId, username: req.username },
        credential: { userId, deviceId, deviceSecret: deviceId },
      });
    }),
  ],
  [
    `/${AccountService.typeName}/CreateToken`,
    unary(CreateTokenRequestSchema, CreateTokenResponseSchema, (req) =>
      create(CreateTokenResponseSchema, { accessToken: req.deviceId }),
    ),
  ],
  [
    `/${ConversationService.typeName}/OpenDirect`,
    unary(OpenDirectRequestSchema, OpenDirectResponseSchema, (req, caller) =>
      create(OpenDirectResponseSchema, {
        conversation: { conversationId: open([userOfDevice.get(caller ?? "") ?? "", req.peerUserId]) },
      }),
    ),
  ],
  [
    `/${ConversationService.typeName}/CreateGroup`,
    unary(CreateGroupRequestSchema, CreateGroupResponseSchema, (req, caller) =>
      create(CreateGroupResponseSchema, {
        conversation: {
          conversationId: open([userOfDevice.get(caller ?? "") ?? "", ...req.memberUserIds]),
        },
      }),
    ),
  ],
]);

function open(members: string[]): string {
  const c: Conversation = { id: id("c"), members, seq: 0n };
  conversations.set(c.id, c);
  return c.id;
}

function serveUnary(stream: RelayStream, fn: Unary, caller: string | undefined): void {
  const chunks: Buffer[] = [];
  stream.read(
    (chunk) => chunks.push(chunk),
    () => {
      const [body] = messages(Buffer.concat(chunks)).bodies;
      stream.open();
      stream.write(frame(fn(body ?? Buffer.alloc(0), caller)));
      stream.finish();
    },
  );
}

// ---- the device stream ----

const dirty = new Set<Device>();
let flushScheduled = false;

function queue(
  d: Device,
  response: NonNullable<MessageInitShape<typeof ConnectResponseSchema>["frame"]>,
): void {
  const bytes = frame(toBinary(ConnectResponseSchema, create(ConnectResponseSchema, { frame: response })));
  d.pending.push(bytes);
  d.pendingBytes += bytes.length;
  dirty.add(d);
  if (!flushScheduled) {
    flushScheduled = true;
    setImmediate(flush);
  }
}

/** One write per stream per turn, as the server's device streams write. */
function flush(): void {
  flushScheduled = false;
  for (const d of dirty) {
    if (!d.stream.done) d.stream.write(Buffer.concat(d.pending, d.pendingBytes));
    d.pending = [];
    d.pendingBytes = 0;
  }
  dirty.clear();
}

function serveDevice(stream: RelayStream, deviceId: string): void {
  const userId = userOfDevice.get(deviceId);
  if (userId === undefined) {
    stream.refuse(16);
    return;
  }
  const d: Device = { userId, deviceId, stream, pending: [], pendingBytes: 0 };
  live.set(userId, d);
  stream.open();
  queue(d, {
    case: "ready",
    value: { userId, deviceId, sessionId: id("s"), serverTimeMs: BigInt(Date.now()) },
  });
  queue(d, { case: "caughtUp", value: {} });
  let buffer = Buffer.alloc(0);
  stream.read(
    (chunk) => {
      const { bodies, rest } = messages(buffer.length === 0 ? chunk : Buffer.concat([buffer, chunk]));
      for (const body of bodies) onFrame(d, fromBinary(ConnectRequestSchema, body).frame);
      buffer = rest.length === 0 ? Buffer.alloc(0) : Buffer.from(rest);
    },
    () => stream.finish(),
  );
  stream.onClose(() => {
    if (live.get(userId) === d) live.delete(userId);
    dirty.delete(d);
  });
}

/** The open streams of a conversation's members other than `userId`. */
function othersOnline(c: Conversation, userId: string): Device[] {
  const out: Device[] = [];
  for (const member of c.members) {
    const to = member === userId ? undefined : live.get(member);
    if (to !== undefined) out.push(to);
  }
  return out;
}

function onFrame(d: Device, f: ConnectRequest["frame"]): void {
  switch (f.case) {
    case "send": {
      const c = conversations.get(f.value.conversationId);
      if (c === undefined) return;
      const seq = ++c.seq;
      const serverTimeMs = BigInt(Date.now());
      queue(d, {
        case: "sendAck",
        value: { clientMsgId: f.value.clientMsgId, conversationId: c.id, seq, serverTimeMs },
      });
      const entry = create(EntrySchema, {
        conversationId: c.id,
        seq,
        senderUserId: d.userId,
        senderDeviceId: d.deviceId,
        clientMsgId: f.value.clientMsgId,
        serverTimeMs,
        body: f.value.body.case === "message" ? f.value.body : { case: undefined },
      });
      for (const to of othersOnline(c, d.userId)) queue(to, { case: "message", value: { entries: [entry] } });
      return;
    }
    case "ack":
      for (const cursor of f.value.cursors) {
        const c = conversations.get(cursor.conversationId);
        if (c === undefined) continue;
        const receipt = {
          conversationId: c.id,
          userId: d.userId,
          kind: ReceiptKind.DELIVERED,
          upToSeq: cursor.seq,
          timeMs: BigInt(Date.now()),
        };
        for (const to of othersOnline(c, d.userId))
          queue(to, { case: "receipts", value: { receipts: [receipt] } });
      }
      return;
    default:
      // Options, reads, typing, pings: nothing the bench's 1:1 and group runs need answered.
      return;
  }
}

// ---- the server ----

const { values: options, positionals } = parseArgs({
  allowPositionals: true,
  options: { h2: { type: "string", default: "node" } },
});
if (options.h2 !== "node" && options.h2 !== "own") throw new Error("--h2: node or own");

function onRequest(stream: RelayStream, path: string, auth: string | string[] | undefined): void {
  const caller = typeof auth === "string" && auth.startsWith("Bearer ") ? auth.slice(7) : undefined;
  const fn = UNARY.get(path);
  if (path === `/${GatewayService.typeName}/Connect`) serveDevice(stream, caller ?? "");
  else if (fn !== undefined) serveUnary(stream, fn, caller);
  else stream.refuse(12);
}

// The stream port's settings where they matter to a bench run (stream-thread.ts): one stream a
// device, long-lived, so the idle timeout is past any run.
const ownOptions: H2ServerOptions = {
  maxConcurrentStreams: 100,
  maxHeaderListBytes: 16 * 1024,
  maxHeaderPairs: 100,
  handshakeTimeoutMs: 10_000,
  idleTimeoutMs: 24 * 3_600_000,
  onStream: (stream, headers) => {
    const path = headers[":path"];
    onRequest(ownStream(stream), typeof path === "string" ? path : "", headers.authorization);
  },
  refuse: () => {},
};

const server =
  options.h2 === "own"
    ? createNetServer((socket) => new H2Connection(socket, ownOptions))
    : http2
        .createServer()
        .on("stream", (stream, headers) =>
          onRequest(nodeStream(stream), headers[":path"] ?? "", headers.authorization),
        )
        .on("sessionError", () => {});

const delay = monitorEventLoopDelay({ resolution: 10 });
delay.enable();
/** Node records the time between two samples, in ns: what is past the 10 ms interval is delay. */
const lateness = (ns: number) => Math.max(0, ns / 1e6 - 10);
let lastElu = performance.eventLoopUtilization();
setInterval(() => {
  const now = performance.eventLoopUtilization();
  const elu = performance.eventLoopUtilization(now, lastElu).utilization;
  lastElu = now;
  process.stdout.write(
    `${JSON.stringify({ t: Math.round(Date.now() / 1000), elu: +elu.toFixed(3), delayP99Ms: lateness(delay.percentile(99)), delayMaxMs: lateness(delay.max), streams: live.size })}\n`,
  );
  delay.reset();
}, 1000).unref();

server.listen(Number(positionals[0] ?? 0), "127.0.0.1", () => {
  const address = server.address();
  const port = typeof address === "object" && address !== null ? address.port : 0;
  process.stdout.write(
    `relay floor listening on http://127.0.0.1:${port} (pid ${process.pid}, HTTP/2: ${options.h2})\n`,
  );
});
for (const signal of ["SIGINT", "SIGTERM"] as const) process.on(signal, () => process.exit(0));
