import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, afterEach, before, describe, it } from "node:test";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { AccountService } from "../gen/switchboard/v1/accounts_pb.js";
import { type Entry, EntrySchema } from "../gen/switchboard/v1/entry_pb.js";
import {
  type ConnectRequest,
  type ConnectResponse,
  ConnectResponseSchema,
  GatewayService,
} from "../gen/switchboard/v1/gateway_pb.js";
import { SwitchboardClient } from "./client.js";
import { Profile } from "./profile.js";
import { FrameQueue } from "./transport.js";
import type { ClientTuning, IncomingEntry } from "./types.js";

/*
 * The client against a scripted server: each test decides frame by frame what the "server"
 * answers, to reach paths a real server takes only under faults (send_error retries, gaps,
 * silent streams, revoked credentials).
 */

type RequestCase = NonNullable<ConnectRequest["frame"]["case"]>;
type RequestValue<C extends RequestCase> = Extract<ConnectRequest["frame"], { case: C }>["value"];
type ResponseFrame = NonNullable<MessageInitShape<typeof ConnectResponseSchema>["frame"]>;

class FakeStream {
  readonly requests: ConnectRequest[] = [];
  /** Called as each frame arrives, before the test looks. */
  onRequest: (r: ConnectRequest) => void = () => {};
  readonly out = new FrameQueue<ConnectResponse>();
  ended = false;
  private failWith: ConnectError | undefined;
  private wake: (() => void) | undefined;

  push(frame: ResponseFrame): void {
    this.out.push(create(ConnectResponseSchema, { frame }));
  }

  ready(maxSendsInFlight = 256): void {
    this.push({
      case: "ready",
      value: {
        userId: "u_me",
        deviceId: "dv_me",
        sessionId: "s_1",
        limits: { maxSendsInFlight, maxPayloadBytes: 1024 },
      },
    });
  }

  /** Ends the stream with an error, as a server crash or network loss would. */
  fail(error: ConnectError): void {
    this.failWith = error;
    this.out.end();
    this.wake?.();
  }

  frames<C extends RequestCase>(kind: C): Array<RequestValue<C>> {
    const out: Array<RequestValue<C>> = [];
    for (const r of this.requests) if (r.frame.case === kind) out.push(r.frame.value as RequestValue<C>);
    return out;
  }

  async *serve(requests: AsyncIterable<ConnectRequest>): AsyncGenerator<ConnectResponse> {
    void (async () => {
      try {
        for await (const r of requests) {
          this.onRequest(r);
          this.requests.push(r);
        }
      } catch {
        // The client went away.
      }
      this.ended = true;
      // Like the real server: the device half-closing ends the stream.
      this.out.end();
    })();
    for await (const frame of this.out) yield frame;
    if (this.failWith !== undefined) throw this.failWith;
  }
}

class FakeServer {
  readonly streams: FakeStream[] = [];
  tokenCalls = 0;
  revoked = false;
  /** Streams opened while this is set are refused as unauthenticated. */
  refuseStreams = false;
  onStream: (s: FakeStream) => void = (s) => s.ready();
  url = "";
  private server: http2.Http2Server | undefined;
  private readonly sessions = new Set<http2.ServerHttp2Session>();

  async start(): Promise<void> {
    const handler = connectNodeAdapter({
      routes: (router) => {
        router.service(AccountService, {
          createToken: async () => {
            this.tokenCalls += 1;
            if (this.revoked) throw new ConnectError("device has been revoked", Code.Unauthenticated);
            return { accessToken: `token-${this.tokenCalls}`, expiresAtMs: BigInt(Date.now() + 3_600_000) };
          },
        });
        router.service(GatewayService, {
          connect: (requests, ctx) => {
            const auth = ctx.requestHeader.get("authorization") ?? "";
            if (!auth.startsWith("Bearer token-") || this.refuseStreams || this.revoked) {
              throw new ConnectError("device has been revoked", Code.Unauthenticated);
            }
            const s = new FakeStream();
            this.streams.push(s);
            this.onStream(s);
            return s.serve(requests);
          },
        });
      },
    });
    this.server = http2.createServer({}, handler);
    this.server.on("session", (session) => {
      this.sessions.add(session);
      session.once("close", () => this.sessions.delete(session));
    });
    await new Promise<void>((resolve) => this.server!.listen(0, "127.0.0.1", resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  get last(): FakeStream {
    const s = this.streams.at(-1);
    if (s === undefined) throw new Error("no stream yet");
    return s;
  }

  async close(): Promise<void> {
    for (const s of this.sessions) s.destroy();
    await new Promise<void>((resolve) => this.server?.close(() => resolve()));
  }
}

function entry(seq: number, conversationId = "d_chat"): MessageInitShape<typeof EntrySchema> {
  return {
    conversationId,
    seq: BigInt(seq),
    senderUserId: "u_peer",
    body: { case: "message", value: { payload: new TextEncoder().encode(`m${seq}`) } },
  };
}

function entries(...seqs: number[]): Entry[] {
  return seqs.map((s) => create(EntrySchema, entry(s)));
}

async function eventually(check: () => boolean, message: () => string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) assert.fail(`timed out: ${message()}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

describe("SwitchboardClient (scripted server)", () => {
  let fake: FakeServer;
  let base: string;
  let client: SwitchboardClient | undefined;
  let n = 0;
  const tuning: ClientTuning = { backoffBaseMs: 10, backoffCapMs: 50, gapTimeoutMs: 200 };

  before(async () => {
    base = await mkdtemp(join(tmpdir(), "sb-client-"));
  });
  after(async () => {
    await rm(base, { recursive: true, force: true });
  });
  afterEach(async () => {
    await client?.close();
    client = undefined;
    await fake.close();
  });

  async function open(extra: ClientTuning = {}): Promise<SwitchboardClient> {
    fake = new FakeServer();
    await fake.start();
    const dir = join(base, `p${n++}`);
    await Profile.create(dir, {
      serverUrl: fake.url,
      userId: "u_me",
      username: "me",
      deviceId: "dv_me",
      deviceSecret: "secret",
    });
    client = await SwitchboardClient.open({ profileDir: dir, ...tuning, ...extra });
    return client;
  }

  it("fills a gap with sync_request, releases in order, and acks only a cursor already on disk", async () => {
    const c = await open();
    const got: IncomingEntry[] = [];
    c.on("entry", (e) => {
      got.push(e);
    });
    await c.connect();
    const s = fake.last;
    // What the profile holds on disk at the moment each ack reaches the server.
    const onDiskAtAck: Array<[bigint, string | undefined]> = [];
    s.onRequest = (r) => {
      if (r.frame.case !== "ack") return;
      const state = JSON.parse(readFileSync(join(c.profileDir, "state.json"), "utf8")) as {
        cursors: Record<string, { delivered: string }>;
      };
      for (const cursor of r.frame.value.cursors) {
        onDiskAtAck.push([cursor.seq, state.cursors[cursor.conversationId]?.delivered]);
      }
    };
    s.push({ case: "message", value: { entries: entries(1, 2) } });
    s.push({ case: "message", value: { entries: entries(4, 5) } });
    await eventually(
      () => s.frames("syncRequest").length === 1,
      () => "no sync request",
    );
    const request = s.frames("syncRequest")[0]!;
    assert.equal(request.conversationId, "d_chat");
    assert.equal(request.afterSeq, 2n);
    assert.deepEqual(
      got.map((e) => Number(e.seq)),
      [1, 2],
    );
    s.push({
      case: "syncPage",
      value: { requestId: request.requestId, conversationId: "d_chat", entries: entries(3, 4), lastSeq: 5n },
    });
    await eventually(
      () => got.length === 5,
      () => `${got.length} entries`,
    );
    assert.deepEqual(
      got.map((e) => new TextDecoder().decode(e.payload)),
      ["m1", "m2", "m3", "m4", "m5"],
    );
    // Every ack names a cursor the profile already holds durably.
    await eventually(
      () => s.frames("ack").some((a) => a.cursors.some((x) => x.seq === 5n)),
      () => JSON.stringify(s.frames("ack").map((a) => a.cursors.map((x) => String(x.seq)))),
    );
    assert.ok(onDiskAtAck.length > 0);
    for (const [acked, onDisk] of onDiskAtAck) {
      assert.ok(onDisk !== undefined && BigInt(onDisk) >= acked, `acked #${acked} with ${onDisk} on disk`);
    }
    const acked = s.frames("ack").flatMap((a) => a.cursors.map((x) => Number(x.seq)));
    assert.ok(acked.length <= 2, `acks were not coalesced: ${acked.join(",")}`);
  });

  it("re-asks for a gap the server did not answer", async () => {
    const c = await open();
    await c.connect();
    const s = fake.last;
    s.push({ case: "message", value: { entries: entries(1, 3) } });
    await eventually(
      () => s.frames("syncRequest").length >= 2,
      () => `${s.frames("syncRequest").length} sync requests`,
    );
    assert.deepEqual(
      s.frames("syncRequest").map((r) => r.afterSeq),
      [1n, 1n],
    );
  });

  it("retries UNAVAILABLE and rate-limited sends with the same id, and rejects other refusals", async () => {
    const c = await open();
    await c.connect();
    const s = fake.last;
    const sending = c.send("d_chat", "hello", { clientMsgId: "m-1" });
    await eventually(
      () => s.frames("send").length === 1,
      () => "no send",
    );
    s.push({
      case: "sendError",
      value: { clientMsgId: "m-1", code: Code.Unavailable, message: "storage", retryAfterMs: 40 },
    });
    const t0 = Date.now();
    await eventually(
      () => s.frames("send").length === 2,
      () => "no retry after UNAVAILABLE",
    );
    assert.ok(Date.now() - t0 >= 30, "the retry waited retry_after_ms");
    s.push({
      case: "sendError",
      value: { clientMsgId: "m-1", code: Code.ResourceExhausted, message: "slow down", retryAfterMs: 20 },
    });
    await eventually(
      () => s.frames("send").length === 3,
      () => "no retry after RESOURCE_EXHAUSTED",
    );
    assert.deepEqual(
      s.frames("send").map((x) => x.clientMsgId),
      ["m-1", "m-1", "m-1"],
    );
    s.push({
      case: "sendAck",
      value: { clientMsgId: "m-1", conversationId: "d_chat", seq: 7n, serverTimeMs: 1n },
    });
    assert.equal((await sending).seq, 7n);

    const failed: string[] = [];
    c.on("sendFailed", (f) => {
      failed.push(f.clientMsgId);
    });
    const refused = c.send("d_chat", "nope", { clientMsgId: "m-2" });
    await eventually(
      () => s.frames("send").length === 4,
      () => "no send",
    );
    s.push({
      case: "sendError",
      value: { clientMsgId: "m-2", code: Code.PermissionDenied, message: "not a member", retryAfterMs: 0 },
    });
    await assert.rejects(refused, (err: ConnectError) => err.code === Code.PermissionDenied);
    assert.deepEqual(failed, ["m-2"]);
    // Rate limiting without a retry time is a refusal, too.
    const limited = c.send("d_chat", "too many", { clientMsgId: "m-3" });
    await eventually(
      () => s.frames("send").length === 5,
      () => "no send",
    );
    s.push({
      case: "sendError",
      value: { clientMsgId: "m-3", code: Code.ResourceExhausted, message: "in flight" },
    });
    await assert.rejects(limited, (err: ConnectError) => err.code === Code.ResourceExhausted);
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(s.frames("send").length, 5);
    assert.deepEqual((await Profile.open(c.profileDir)).outbox(), []);
  });

  it("keeps at most max_sends_in_flight sends on the wire", async () => {
    const c = await open();
    fake.onStream = (s) => s.ready(2);
    await c.connect();
    const s = fake.last;
    const sends = Array.from({ length: 5 }, (_, i) => c.send("d_chat", `x${i}`, { clientMsgId: `f-${i}` }));
    await eventually(
      () => s.frames("send").length === 2,
      () => `${s.frames("send").length} sends`,
    );
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(s.frames("send").length, 2);
    s.push({ case: "sendAck", value: { clientMsgId: "f-0", conversationId: "d_chat", seq: 1n } });
    await eventually(
      () => s.frames("send").length === 3,
      () => `${s.frames("send").length} sends`,
    );
    assert.equal(s.frames("send")[2]?.clientMsgId, "f-2");
    for (let i = 1; i < 5; i++) {
      await eventually(
        () => s.frames("send").length >= i + 1,
        () => `${s.frames("send").length} sends`,
      );
      s.push({
        case: "sendAck",
        value: { clientMsgId: `f-${i}`, conversationId: "d_chat", seq: BigInt(i + 1) },
      });
    }
    assert.deepEqual(
      (await Promise.all(sends)).map((r) => Number(r.seq)),
      [1, 2, 3, 4, 5],
    );
  });

  it("resends unanswered sends on the next stream after the stream fails", async () => {
    const c = await open();
    const disconnected: Array<number | undefined> = [];
    c.on("disconnected", (e) => disconnected.push(e.retryInMs));
    await c.connect();
    const first = fake.last;
    const sending = c.send("d_chat", "through the outage", { clientMsgId: "o-1" });
    await eventually(
      () => first.frames("send").length === 1,
      () => "no send",
    );
    first.fail(new ConnectError("server restarting", Code.Unavailable));
    await eventually(
      () => fake.streams.length === 2 && fake.last.frames("send").length === 1,
      () => `${fake.streams.length} streams`,
    );
    assert.equal(fake.last.frames("send")[0]?.clientMsgId, "o-1");
    fake.last.push({ case: "sendAck", value: { clientMsgId: "o-1", conversationId: "d_chat", seq: 3n } });
    assert.equal((await sending).seq, 3n);
    assert.equal(disconnected.length, 1);
    assert.ok(disconnected[0] !== undefined && disconnected[0] <= 10);
  });

  it("closed while connect() takes the profile's lock: no stream opens and the lock is released", async () => {
    // The CLI's `chat` with its input already ended closes the client while connect() is in flight.
    const c = await open();
    const connecting = assert.rejects(
      c.connect(),
      (err: unknown) => ConnectError.from(err).code === Code.Canceled,
    );
    await c.close();
    await connecting;
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(fake.streams.length, 0, "a stream opened after close()");
    const again = await Profile.open(c.profileDir);
    await again.lock();
    await again.unlock();
  });

  it("pings a quiet stream and replaces one that stays silent", async () => {
    const c = await open({ pingIntervalMs: 50, deadAfterMs: 300 });
    await c.connect();
    const first = fake.last;
    await eventually(
      () => first.frames("ping").length >= 2,
      () => `${first.frames("ping").length} pings`,
    );
    await eventually(
      () => fake.streams.length === 2,
      () => "the silent stream was not replaced",
    );
  });

  it("refreshes the token once on UNAUTHENTICATED, and stops for good when the device is revoked", async () => {
    const c = await open();
    const errors: Array<{ code: Code; fatal: boolean }> = [];
    c.on("error", (e) => errors.push({ code: e.error.code, fatal: e.fatal }));
    await c.connect();
    assert.equal(fake.tokenCalls, 1);
    // An expired token: the stream ends UNAUTHENTICATED, a new token is fetched, all is well.
    fake.last.fail(new ConnectError("access token expired", Code.Unauthenticated));
    await eventually(
      () => fake.streams.length === 2,
      () => "no reconnect with a new token",
    );
    assert.equal(fake.tokenCalls, 2);
    assert.equal(errors.length, 0);

    fake.revoked = true;
    fake.last.fail(new ConnectError("device has been revoked", Code.Unauthenticated));
    await eventually(
      () => errors.some((e) => e.fatal),
      () => JSON.stringify(errors),
    );
    assert.equal(errors[0]?.code, Code.Unauthenticated);
    const calls = fake.tokenCalls;
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(fake.tokenCalls, calls, "no retries after a fatal error");
    assert.equal(fake.streams.length, 2);
    await assert.rejects(c.send("d_chat", "x"), (err: ConnectError) => err.code === Code.Unauthenticated);
  });
});
