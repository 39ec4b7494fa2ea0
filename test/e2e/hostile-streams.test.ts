import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import http2 from "node:http2";
import { after, before, describe, it } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { Code, ConnectError } from "@connectrpc/connect";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { EntrySchema, MessageBodySchema, OutgoingEntrySchema } from "../../gen/switchboard/v1/entry_pb.js";
import { type ConnectRequest, ConnectRequestSchema } from "../../gen/switchboard/v1/gateway_pb.js";
import { directConversationId } from "../../services/common/ids.js";
import { rejectsWith } from "../helpers/expect.js";
import { serverFixture } from "../helpers/fixture.js";
import { readFilesUnder } from "../helpers/scan.js";
import { loggedLine } from "../helpers/server.js";

/**
 * Issue 15, findings 2, 4, 5 and 6: a stream that stops reading, the direct-conversation
 * oracle, unknown protobuf fields past the payload limit, and pages a stock grpc-js client
 * cannot receive. Each runs against a real server process.
 */

const KiB = 1024;
const MiB = 1024 * KiB;
/**
 * What the server may grow by while one stream does not read and asks for everything: its
 * outbound queue (4 MiB, twice that for answers), one page being read (1 MiB), the frame being
 * written and the HTTP/2 buffers; the rest is room for the garbage collector's timing.
 */
const ATTACK_RSS_BUDGET = 96 * MiB;

/** Resident memory of a process, in bytes. */
async function rssOf(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const kb = /VmRSS:\s+(\d+) kB/.exec(status)?.[1];
  assert.ok(kb !== undefined, "VmRSS in /proc/<pid>/status");
  return Number(kb) * 1024;
}

/** Bytes of a length-delimited field the schema does not know (field 999), for `$unknown`. */
function unknownField(bytes: Uint8Array) {
  return { no: 999, wireType: WireType.LengthDelimited, data: new BinaryWriter().bytes(bytes).finish() };
}

/** A 1-byte message carrying `padding` in unknown fields of the entry and of its body. */
function paddedEntry(conversationId: string, clientMsgId: string, padding: Uint8Array) {
  const body = create(MessageBodySchema, { payload: new Uint8Array([42]) });
  body.$unknown = [unknownField(padding)];
  const entry = create(OutgoingEntrySchema, {
    clientMsgId,
    conversationId,
    body: { case: "message", value: body },
  });
  entry.$unknown = [unknownField(padding.subarray(0, 1000))];
  return entry;
}

/** Bytes that appear nowhere else: the test looks for them in what was delivered and stored. */
function marker(size: number): Uint8Array {
  const tag = Buffer.from(`UNKNOWN-FIELD-MARKER-${Math.random().toString(36).slice(2)}-`);
  const out = Buffer.alloc(size);
  for (let i = 0; i < size; i += tag.length) tag.copy(out, i);
  return out;
}

/**
 * A device stream over a bare HTTP/2 request that never reads what the server writes: the
 * server's writes stop at HTTP/2 flow control, and everything else waits in the server.
 */
class NonReadingStream {
  readonly session: http2.ClientHttp2Session;
  readonly stream: http2.ClientHttp2Stream;

  constructor(url: string, token: string) {
    this.session = http2.connect(url);
    this.session.on("error", () => {});
    this.stream = this.session.request({
      ":method": "POST",
      ":path": "/switchboard.v1.GatewayService/Connect",
      "content-type": "application/grpc",
      te: "trailers",
      authorization: `Bearer ${token}`,
    });
    this.stream.on("error", () => {});
    // No 'data' listener: the stream stays paused, so its HTTP/2 window is never opened again.
    this.stream.pause();
  }

  write(frame: ConnectRequest["frame"]): void {
    const body = toBinary(ConnectRequestSchema, create(ConnectRequestSchema, { frame }));
    const head = Buffer.alloc(5);
    head.writeUInt32BE(body.length, 1);
    this.stream.write(Buffer.concat([head, body]));
  }

  /** Starts reading and resolves with the status the server ended the stream with. */
  async status(timeoutMs = 20_000): Promise<{ code: number; message: string }> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("the server did not end the stream")), timeoutMs);
      const finish = (headers: http2.IncomingHttpHeaders) => {
        if (headers["grpc-status"] === undefined) return;
        clearTimeout(timer);
        resolve({
          code: Number(headers["grpc-status"]),
          message: decodeURIComponent(String(headers["grpc-message"] ?? "")),
        });
      };
      this.stream.on("trailers", finish);
      this.stream.on("response", finish);
      this.stream.on("data", () => {});
      this.stream.resume();
    });
  }

  close(): void {
    this.stream.destroy();
    this.session.destroy();
  }
}

describe("hostile streams", () => {
  // Faster sends to fill logs; a small frame bound so a non-reading stream's answers fill up
  // within the frame-rate burst.
  const fx = serverFixture({
    SWITCHBOARD_SENDS_PER_SECOND: "1000",
    SWITCHBOARD_SEND_BURST: "1000",
    SWITCHBOARD_OUTBOUND_QUEUE_FRAMES: "128",
  });
  const user = (prefix: string) => fx.user(prefix);

  it("a stream that stops reading holds a bounded amount of memory; bystanders carry on", async (t) => {
    const [alice, bob, carol, dave] = [
      await user("fill"),
      await user("idle"),
      await user("by"),
      await user("st"),
    ];
    const { conversation: group } = await alice.conversations.createGroup({
      title: "big",
      memberUserIds: [bob.userId],
    });
    const groupId = group!.conversationId;
    // 150 messages of 60 KB: a page of everything is 9 MB; 50 of them would be 450 MB.
    const payload = new Uint8Array(60_000).fill(7);
    for (let i = 0; i < 150; i += 25) {
      await Promise.all(
        Array.from({ length: 25 }, (_, j) =>
          alice.gateway.send({
            entry: create(OutgoingEntrySchema, {
              clientMsgId: `big-${i + j}`,
              conversationId: groupId,
              body: { case: "message", value: create(MessageBodySchema, { payload }) },
            }),
          }),
        ),
      );
    }
    const { conversation: direct } = await carol.conversations.openDirect({ peerUserId: dave.userId });
    const directId = direct!.conversationId;
    dave.connect();
    await dave.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "bystander caught up");

    const pid = fx.server.process.pid!;
    const baseline = await rssOf(pid);
    const attacker = new NonReadingStream(fx.server.url, bob.token);
    try {
      for (let i = 0; i < 50; i++) {
        attacker.write({
          case: "syncRequest",
          value: { requestId: i + 1, conversationId: groupId, afterSeq: 0n, limit: 1000 } as never,
        });
      }
      let peak = baseline;
      // The bystander's unary calls and deliveries go on while the attack runs.
      for (let i = 0; i < 10; i++) {
        const { seq } = await carol.gateway.send({
          entry: create(OutgoingEntrySchema, {
            clientMsgId: `by-${i}`,
            conversationId: directId,
            body: { case: "message", value: create(MessageBodySchema, { payload: new Uint8Array([i]) }) },
          }),
        });
        await dave.waitFor(() => dave.entries(directId).some((e) => e.seq === seq), `delivery ${i}`);
        await carol.conversations.listConversations({});
        await carol.conversations.getHistory({ conversationId: directId, limit: 10 });
        peak = Math.max(peak, await rssOf(pid));
        await new Promise((r) => setTimeout(r, 200));
      }
      t.diagnostic(
        `server RSS ${Math.round(baseline / MiB)} MiB before, +${Math.round((peak - baseline) / MiB)} MiB at peak`,
      );
      assert.ok(
        peak - baseline <= ATTACK_RSS_BUDGET,
        `server RSS grew by ${Math.round((peak - baseline) / MiB)} MiB (budget ${ATTACK_RSS_BUDGET / MiB} MiB)`,
      );

      // Answers (pongs) pile up behind the queue the device does not read: past twice the queue
      // bound the server ends the stream with RESOURCE_EXHAUSTED instead of holding them.
      for (let i = 0; i < 300; i++) attacker.write({ case: "ping", value: { nonce: BigInt(i) } as never });
      await new Promise((r) => setTimeout(r, 500));
      peak = Math.max(peak, await rssOf(pid));
      const status = await attacker.status();
      assert.equal(status.code, Code.ResourceExhausted, status.message);
      assert.match(status.message, /does not read its stream/);
      await loggedLine(fx.server, (l) => l.includes('"refusal":"stream_not_reading"'), "stream_not_reading");
      assert.ok(peak - baseline <= ATTACK_RSS_BUDGET);
    } finally {
      attacker.close();
    }
    // The same member, reading, still gets the group's log: nothing was lost.
    const { entries, hasMore } = await bob.conversations.getHistory({ conversationId: groupId, limit: 1000 });
    assert.ok(entries.length > 0 && hasMore, "a page bounded in bytes, with more to follow");
  });

  it("sync requests are answered one at a time; past the queue, RESOURCE_EXHAUSTED on the request id", async () => {
    const [a, b] = [await user("sq"), await user("sr")];
    const { conversation } = await a.conversations.openDirect({ peerUserId: b.userId });
    const id = conversation!.conversationId;
    b.connect();
    await b.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught up");
    for (let i = 1; i <= 150; i++) {
      b.write({
        case: "syncRequest",
        value: { requestId: i, conversationId: id, afterSeq: 0n, limit: 10 } as never,
      });
    }
    const pages = await b.waitFor(() => {
      const got = b.ofCase("syncPage");
      return got.length >= 150 ? got : undefined;
    }, "an answer to every sync request");
    assert.deepEqual(
      [...new Set(pages.map((p) => p.requestId))].sort((x, y) => x - y),
      Array.from({ length: 150 }, (_, i) => i + 1),
      "one answer per request id",
    );
    for (const p of pages) {
      if (p.errorCode === 0) assert.equal(p.entries.length, 1);
      else {
        assert.equal(p.errorCode, Code.ResourceExhausted);
        assert.match(p.errorMessage, /one is answered at a time and at most 64 wait/);
      }
    }
    // Answered pages come in the order they were asked for.
    const answered = pages.filter((p) => p.errorCode === 0).map((p) => p.requestId);
    assert.deepEqual(
      answered,
      [...answered].sort((x, y) => x - y),
    );
  });

  it("non-members get one answer whether or not a direct conversation exists", async () => {
    const [a, b, c, eve] = [await user("oa"), await user("ob"), await user("oc"), await user("oeve")];
    await a.conversations.openDirect({ peerUserId: b.userId });
    const existing = directConversationId(a.userId, b.userId);
    const absent = directConversationId(a.userId, c.userId);
    eve.connect();
    await eve.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught up");
    const answers = new Map<string, string[]>();
    const note = (id: string, what: string, code: Code, message: string) => {
      const list = answers.get(what) ?? [];
      list.push(`${Code[code]}: ${message}`);
      answers.set(what, list);
      assert.equal(
        code,
        Code.PermissionDenied,
        `${what} on ${id === existing ? "an existing" : "an absent"} conversation`,
      );
    };
    const unary = async (id: string, what: string, call: Promise<unknown>) => {
      try {
        await call;
        assert.fail(`${what} succeeded for a non-member`);
      } catch (err) {
        const e = ConnectError.from(err);
        note(id, what, e.code, e.rawMessage);
      }
    };
    let n = 0;
    for (const id of [existing, absent]) {
      await unary(id, "GetHistory", eve.conversations.getHistory({ conversationId: id }));
      await unary(id, "GetConversation", eve.conversations.getConversation({ conversationId: id }));
      await unary(id, "SetMute", eve.conversations.setMute({ conversationId: id, mutedUntilMs: 1n }));
      await unary(
        id,
        "Send",
        eve.gateway.send({
          entry: create(OutgoingEntrySchema, {
            clientMsgId: `o-${n++}`,
            conversationId: id,
            body: { case: "message", value: create(MessageBodySchema, { payload: new Uint8Array([1]) }) },
          }),
        }),
      );
      const clientMsgId = `os-${n++}`;
      eve.write({
        case: "send",
        value: create(OutgoingEntrySchema, {
          clientMsgId,
          conversationId: id,
          body: { case: "message", value: create(MessageBodySchema, { payload: new Uint8Array([1]) }) },
        }),
      });
      const sendError = await eve.waitFor(
        () => eve.ofCase("sendError").find((e) => e.clientMsgId === clientMsgId),
        "stream send refused",
      );
      note(id, "stream send", sendError.code, sendError.message);
      const typingBefore = eve.ofCase("error").filter((e) => e.frame === "typing").length;
      eve.write({ case: "typing", value: { conversationId: id, active: true } as never });
      const typing = await eve.waitFor(
        () => eve.ofCase("error").filter((e) => e.frame === "typing")[typingBefore],
        "typing refused",
      );
      note(id, "stream typing", typing.code, typing.message);
      const requestId = 100 + n++;
      eve.write({
        case: "syncRequest",
        value: { requestId, conversationId: id, afterSeq: 0n, limit: 10 } as never,
      });
      const page = await eve.waitFor(
        () => eve.ofCase("syncPage").find((p) => p.requestId === requestId),
        "sync page",
      );
      assert.equal(page.entries.length, 0);
      note(id, "stream sync", page.errorCode, page.errorMessage);
    }
    for (const [what, [first, second]] of answers) {
      assert.equal(first, second, `${what}: the same answer for an existing and an absent conversation`);
    }
  });

  for (const path of ["unary Send", "stream send"] as const) {
    it(`drops unknown fields of a ${path} before storing or delivering anything`, async () => {
      const [a, b] = [await user("ua"), await user("ub")];
      const { conversation } = await a.conversations.openDirect({ peerUserId: b.userId });
      const id = conversation!.conversationId;
      b.connect();
      await b.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught up");
      const padding = marker(300_000);
      const entry = paddedEntry(id, "padded-1", padding);
      assert.ok(toBinary(OutgoingEntrySchema, entry).length > 300_000, "the request carries the padding");
      let seq: bigint;
      if (path === "unary Send") {
        ({ seq } = await a.gateway.send({ entry }));
      } else {
        a.connect();
        a.write({ case: "send", value: entry });
        const ack = await a.waitFor(
          () => a.ofCase("sendAck").find((x) => x.clientMsgId === "padded-1"),
          "ack",
        );
        seq = ack.seq;
      }
      // What the recipient receives, live and from the log.
      const live = await b.waitFor(() => b.entries(id).find((e) => e.seq === seq), "delivery");
      const [logged] = (
        await b.conversations.getHistory({ conversationId: id, afterSeq: seq - 1n, limit: 1 })
      ).entries;
      for (const received of [live, logged!]) {
        assert.ok(toBinary(EntrySchema, received).length < 1000, "delivered without the padding");
        assert.equal(received.body.case, "message");
        assert.deepEqual(received.body.value.payload, new Uint8Array([42]));
        assert.equal(received.body.value.$unknown, undefined);
      }
      // What is stored: the padding is nowhere in the server's files.
      const tag = Buffer.from(padding.subarray(0, 40));
      for (const { path, bytes } of await readFilesUnder(fx.server.dataDir)) {
        assert.equal(bytes.indexOf(tag), -1, `padding stored in ${path}`);
      }
    });
  }

  it("refuses an entry whose encoding passes the payload limit with known fields", async () => {
    const [a, b] = [await user("la"), await user("lb")];
    const { conversation } = await a.conversations.openDirect({ peerUserId: b.userId });
    const id = conversation!.conversationId;
    await rejectsWith(
      a.gateway.send({
        entry: create(OutgoingEntrySchema, {
          clientMsgId: "too-big",
          conversationId: id,
          body: {
            case: "message",
            value: create(MessageBodySchema, { payload: new Uint8Array(64 * KiB + 1) }),
          },
        }),
      }),
      Code.InvalidArgument,
      /payload is 65537 bytes; the limit is 65536/,
    );
  });
});

describe("a stream that reads nothing for the stall deadline", () => {
  const fx = serverFixture({
    SWITCHBOARD_SENDS_PER_SECOND: "1000",
    SWITCHBOARD_SEND_BURST: "1000",
    SWITCHBOARD_OUTBOUND_STALL_MS: "1500",
  });

  it("is ended with RESOURCE_EXHAUSTED while its backlog waits", async () => {
    const [alice, bob] = [await fx.user("stla"), await fx.user("stlb")];
    const { conversation } = await alice.conversations.createGroup({
      title: "s",
      memberUserIds: [bob.userId],
    });
    const id = conversation!.conversationId;
    // 9 MB of backlog: more than the HTTP/2 window and the 4 MiB queue together.
    const payload = new Uint8Array(60_000).fill(3);
    for (let i = 0; i < 150; i += 25) {
      await Promise.all(
        Array.from({ length: 25 }, (_, j) =>
          alice.gateway.send({
            entry: create(OutgoingEntrySchema, {
              clientMsgId: `st-${i + j}`,
              conversationId: id,
              body: { case: "message", value: create(MessageBodySchema, { payload }) },
            }),
          }),
        ),
      );
    }
    const attacker = new NonReadingStream(fx.server.url, bob.token);
    try {
      await new Promise((r) => setTimeout(r, 4000));
      const status = await attacker.status();
      assert.equal(status.code, Code.ResourceExhausted, status.message);
      assert.match(status.message, /has not read its stream for 1500 ms/);
      await loggedLine(fx.server, (l) => l.includes('"refusal":"stream_stalled"'), "stream_stalled");
    } finally {
      attacker.close();
    }
  });
});

describe("a stranger cannot push a stock grpc-js client past its 4 MiB receive limit", () => {
  const fx = serverFixture({ SWITCHBOARD_SENDS_PER_SECOND: "1000", SWITCHBOARD_SEND_BURST: "1000" });
  let v1: grpc.GrpcObject;
  const clients: grpc.Client[] = [];
  before(async () => {
    const definition = await protoLoader.load(
      ["switchboard/v1/conversations.proto", "switchboard/v1/gateway.proto"],
      {
        includeDirs: [new URL("../../proto", import.meta.url).pathname],
        longs: String,
        enums: String,
        defaults: true,
        oneofs: true,
      },
    );
    v1 = (grpc.loadPackageDefinition(definition).switchboard as grpc.GrpcObject).v1 as grpc.GrpcObject;
  });
  after(() => {
    for (const c of clients) c.close();
  });
  function client(service: string): grpc.Client {
    const Ctor = v1[service] as grpc.ServiceClientConstructor;
    // Stock options: the default 4 MiB receive limit.
    const c = new Ctor(new URL(fx.server.url).host, grpc.credentials.createInsecure());
    clients.push(c);
    return c;
  }

  it("backlog frames, GetHistory pages and sync pages all stay under 4 MiB", async () => {
    const [stranger, victim] = [await fx.user("strg"), await fx.user("vict")];
    const { conversation } = await stranger.conversations.openDirect({ peerUserId: victim.userId });
    const id = conversation!.conversationId;
    // Twelve padded messages (the attack of the issue) and 70 messages at the payload limit:
    // 4.6 MB of legitimate entries, more than one response may carry.
    const sends: Array<Promise<unknown>> = [];
    for (let i = 0; i < 12; i++)
      sends.push(stranger.gateway.send({ entry: paddedEntry(id, `pad-${i}`, marker(300_000)) }));
    for (let i = 0; i < 70; i++) {
      sends.push(
        stranger.gateway.send({
          entry: create(OutgoingEntrySchema, {
            clientMsgId: `max-${i}`,
            conversationId: id,
            body: {
              case: "message",
              value: create(MessageBodySchema, { payload: new Uint8Array(64 * KiB).fill(i) }),
            },
          }),
        }),
      );
    }
    await Promise.all(sends);
    const total = 1 + 12 + 70;
    const metadata = new grpc.Metadata();
    metadata.set("authorization", `Bearer ${victim.token}`);

    // GetHistory with the largest limit, paged by has_more.
    const conversations = client("ConversationService");
    type Page = { entries: Array<{ seq: string }>; hasMore: boolean };
    let after = "0";
    let seen = 0;
    for (let pages = 0; pages < 100; pages++) {
      const page = await new Promise<Page>((resolve, reject) =>
        (
          conversations as unknown as Record<
            string,
            (req: object, m: grpc.Metadata, cb: (err: grpc.ServiceError | null, res: Page) => void) => void
          >
        ).GetHistory!.call(
          conversations,
          { conversationId: id, afterSeq: after, limit: 1000 },
          metadata,
          (err: grpc.ServiceError | null, res: Page) => (err ? reject(err) : resolve(res)),
        ),
      );
      seen += page.entries.length;
      if (page.entries.length > 0) after = page.entries[page.entries.length - 1]!.seq;
      if (!page.hasMore) break;
    }
    assert.equal(seen, total, "every entry through GetHistory pages");

    // The stream: the backlog to caught_up, then a sync page asking for everything.
    const gateway = client("GatewayService");
    const stream = (
      gateway as unknown as Record<
        string,
        (m: grpc.Metadata) => grpc.ClientDuplexStream<object, Record<string, unknown>>
      >
    ).Connect!.call(gateway, metadata);
    const frames: Array<Record<string, unknown>> = [];
    let failure: grpc.ServiceError | undefined;
    stream.on("error", (err: grpc.ServiceError) => (failure = err));
    const waitFor = async (what: string, done: () => boolean) => {
      const deadline = Date.now() + 20_000;
      while (!done()) {
        if (failure) throw new Error(`stream failed waiting for ${what}: ${failure.message}`);
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    stream.on("data", (f: Record<string, unknown>) => frames.push(f));
    await waitFor("caught_up", () => frames.some((f) => f.frame === "caughtUp"));
    const backlog = frames
      .filter((f) => f.frame === "message")
      .flatMap((f) => (f.message as { entries: unknown[] }).entries);
    assert.equal(backlog.length, total, "every entry in the backlog");
    let syncAfter = "0";
    let synced = 0;
    for (let requestId = 1; requestId < 100; requestId++) {
      stream.write({ syncRequest: { requestId, conversationId: id, afterSeq: syncAfter, limit: 1000 } });
      await waitFor("sync page", () =>
        frames.some(
          (f) => f.frame === "syncPage" && (f.syncPage as { requestId: number }).requestId === requestId,
        ),
      );
      const page = frames.find(
        (f) => f.frame === "syncPage" && (f.syncPage as { requestId: number }).requestId === requestId,
      )!.syncPage as { entries: Array<{ seq: string }>; hasMore: boolean; errorCode: number };
      assert.equal(page.errorCode, 0);
      synced += page.entries.length;
      if (page.entries.length > 0) syncAfter = page.entries[page.entries.length - 1]!.seq;
      if (!page.hasMore) break;
    }
    assert.equal(synced, total, "every entry through sync pages");
    assert.equal(failure, undefined);
    stream.on("error", () => {});
    stream.end();
  });
});
