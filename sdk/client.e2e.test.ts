import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { createServer, type Server, type Socket, connect as tcpConnect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code, type ConnectError } from "@connectrpc/connect";
import { Command } from "commander";
import { MembershipAction, OutgoingEntrySchema } from "../gen/switchboard/v1/entry_pb.js";
import { startServer } from "../services/server/index.js";
import { eventually } from "../test/helpers/inbox.js";
import { runNode } from "../test/helpers/process.js";
import { type CliIo, registerClientCommands } from "./cli/commands.js";
import { SwitchboardClient } from "./client.js";
import { Profile } from "./profile.js";
import type { ClientTuning, IncomingEntry, ReceiptEvent } from "./types.js";

const root = new URL("../", import.meta.url).pathname;
const text = (e: IncomingEntry): string => new TextDecoder().decode(e.payload ?? new Uint8Array());
// Fast reconnects keep the test short; everything else is the SDK's default.
const tuning: ClientTuning = { backoffBaseMs: 20, backoffCapMs: 200 };

/** Every entry a client handed to the app, per conversation, with checks on order. */
class Recorder {
  readonly entries: IncomingEntry[] = [];
  readonly receipts: ReceiptEvent[] = [];
  readonly violations: string[] = [];
  private readonly last = new Map<string, bigint>();

  constructor(client: SwitchboardClient) {
    this.attach(client);
  }

  attach(client: SwitchboardClient): void {
    client.on("entry", (e) => {
      const previous = this.last.get(e.conversationId);
      if (previous !== undefined && e.seq !== previous + 1n) {
        this.violations.push(`${e.conversationId}: #${e.seq} after #${previous}`);
      }
      this.last.set(e.conversationId, e.seq);
      this.entries.push(e);
    });
    client.on("receipt", (r) => {
      this.receipts.push(r);
    });
  }

  in(conversationId: string): IncomingEntry[] {
    return this.entries.filter((e) => e.conversationId === conversationId);
  }

  messages(conversationId: string): string[] {
    return this.in(conversationId)
      .filter((e) => e.kind === "message")
      .map(text);
  }
}

/**
 * A TCP proxy between a client and the server, to cut the network under a live stream: "cut"
 * drops every connection, "refuse" turns new ones away, and "swallow" keeps forwarding the
 * client's bytes but drops the server's (the server acts, the client never hears of it).
 */
class FlakyProxy {
  private readonly sockets = new Set<Socket>();
  private mode: "open" | "refuse" | "swallow" = "open";
  private server: Server | undefined;
  url = "";

  constructor(private readonly target: URL) {}

  async start(): Promise<void> {
    this.server = createServer((downstream) => {
      if (this.mode === "refuse") {
        downstream.destroy();
        return;
      }
      const upstream = tcpConnect(Number(this.target.port), this.target.hostname);
      for (const s of [downstream, upstream]) {
        this.sockets.add(s);
        s.on("close", () => this.sockets.delete(s));
        s.on("error", () => {});
      }
      downstream.on("data", (chunk) => upstream.write(chunk));
      upstream.on("data", (chunk) => {
        if (this.mode !== "swallow") downstream.write(chunk);
      });
      downstream.on("close", () => upstream.destroy());
      upstream.on("close", () => downstream.destroy());
    });
    await new Promise<void>((resolve) => this.server!.listen(0, "127.0.0.1", resolve));
    const address = this.server.address();
    if (address === null || typeof address === "string") throw new Error("proxy has no port");
    this.url = `http://127.0.0.1:${address.port}`;
  }

  set(mode: "open" | "refuse" | "swallow"): void {
    this.mode = mode;
  }

  cut(): void {
    for (const s of this.sockets) s.destroy();
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server?.close(() => resolve()));
  }
}

describe("SwitchboardClient against a real server", () => {
  let base: string;
  let server: Awaited<ReturnType<typeof startServer>>;
  const clients: SwitchboardClient[] = [];
  const proxies: FlakyProxy[] = [];
  let n = 0;

  before(async () => {
    base = await mkdtemp(join(tmpdir(), "sb-sdk-e2e-"));
    server = await startServer({
      dataDir: join(base, "server"),
      port: 0,
      logLevel: "silent",
      // Every test registers users from 127.0.0.1; the registration limits have their own tests.
      accountLimits: { registrationsPerAddressPerHour: 0, registrationsPerHour: 0 },
      // The attachment server on a free port too: never the default 7422 in a test.
      env: { ...process.env, SWITCHBOARD_MEDIA_PORT: "0" },
    });
  });

  after(async () => {
    for (const c of clients) await c.close();
    for (const p of proxies) await p.close();
    await server.close();
    await rm(base, { recursive: true, force: true });
  });

  function profileDir(name: string): string {
    return join(base, `profile-${name}-${n++}`);
  }

  async function user(name: string, serverUrl = server.url): Promise<SwitchboardClient> {
    const client = await SwitchboardClient.register({
      serverUrl,
      profileDir: profileDir(name),
      username: `${name}_${n}`,
      // Plaintext on purpose: these tests are about delivery, order and reconnects (encryption has
      // its own suites), and plaintext keeps them fast.
      encryption: false,
      ...tuning,
    });
    clients.push(client);
    return client;
  }

  async function reopen(client: SwitchboardClient, serverUrl?: string): Promise<SwitchboardClient> {
    await client.close();
    const again = await SwitchboardClient.open({
      profileDir: client.profileDir,
      ...(serverUrl !== undefined && { serverUrl }),
      ...tuning,
    });
    clients.push(again);
    return again;
  }

  async function proxy(): Promise<FlakyProxy> {
    const p = new FlakyProxy(new URL(server.url));
    await p.start();
    proxies.push(p);
    return p;
  }

  it("exchanges messages in order in a direct conversation, with delivered and read receipts", async () => {
    const alice = await user("alice");
    const bob = await user("bob");
    const a = new Recorder(alice);
    const b = new Recorder(bob);
    const { conversationId } = await alice.openDirect(bob.userId);
    await Promise.all([alice.connect(), bob.connect()]);

    const sent = await Promise.all(Array.from({ length: 30 }, (_, i) => alice.send(conversationId, `a${i}`)));
    const seqs = sent.map((r) => r.seq);
    assert.equal(new Set(seqs).size, 30, "every send got its own seq");
    // One stream, one conversation: the server commits the sends in the order they were made.
    assert.deepEqual(
      seqs,
      [...seqs].sort((x, y) => (x < y ? -1 : 1)),
    );
    const reply = await bob.send(conversationId, "hi alice");

    await eventually(
      () => b.messages(conversationId).length === 31 && a.messages(conversationId).length === 31,
      () => `bob has ${b.messages(conversationId).length}, alice ${a.messages(conversationId).length}`,
    );
    const expected = [...Array.from({ length: 30 }, (_, i) => `a${i}`), "hi alice"];
    assert.deepEqual(b.messages(conversationId), expected);
    assert.deepEqual(a.messages(conversationId), expected);
    // Both see the whole log from seq 1 (the CREATED entry), each entry once, in order.
    assert.deepEqual(
      b.in(conversationId).map((e) => Number(e.seq)),
      Array.from({ length: 32 }, (_, i) => i + 1),
    );
    assert.equal(b.in(conversationId)[0]?.membership?.action, MembershipAction.CREATED);
    assert.deepEqual(a.violations, []);
    assert.deepEqual(b.violations, []);
    const mine = a.in(conversationId).filter((e) => e.kind === "message" && e.fromThisDevice);
    assert.equal(mine.length, 30);
    assert.equal(mine[5]?.clientMsgId, sent[5]?.clientMsgId);

    const lastFromAlice = seqs.at(-1)!;
    await eventually(
      () =>
        a.receipts.some(
          (r) => r.kind === "delivered" && r.userId === bob.userId && r.upToSeq >= lastFromAlice,
        ),
      () => `alice's receipts: ${JSON.stringify(a.receipts.map((r) => [r.kind, String(r.upToSeq)]))}`,
    );
    bob.markRead(conversationId, reply.seq);
    await eventually(
      () => a.receipts.some((r) => r.kind === "read" && r.userId === bob.userId && r.upToSeq === reply.seq),
      () => `alice's receipts: ${JSON.stringify(a.receipts.map((r) => [r.kind, String(r.upToSeq)]))}`,
    );
    const { members } = await alice.getConversation(conversationId);
    const bobMember = members.find((m) => m.userId === bob.userId);
    assert.equal(bobMember?.readUpTo, reply.seq);
    assert.equal(bob.localCursor(conversationId)?.read, reply.seq);
  });

  it("resumes after the network drops, without loss or duplicates, and after a restart of the app", async () => {
    const net = await proxy();
    const alice = await user("alice");
    const bob = await user("bob");
    const { conversationId } = await alice.openDirect(bob.userId);
    const bobOverProxy = await reopen(bob, net.url);
    const b = new Recorder(bobOverProxy);
    const disconnects: Array<ConnectError | undefined> = [];
    bobOverProxy.on("disconnected", (e) => disconnects.push(e.error));
    await Promise.all([alice.connect(), bobOverProxy.connect()]);

    for (let i = 0; i < 5; i++) await alice.send(conversationId, `before${i}`);
    await eventually(
      () => b.messages(conversationId).length === 5,
      () => `${b.messages(conversationId).length}`,
    );

    net.set("refuse");
    net.cut();
    await eventually(
      () => disconnects.length > 0,
      () => "bob never noticed the cut",
    );
    for (let i = 0; i < 10; i++) await alice.send(conversationId, `during${i}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(b.messages(conversationId).length, 5, "nothing can arrive while the network is down");
    net.set("open");
    await eventually(
      () => b.messages(conversationId).length === 15,
      () => `bob has ${b.messages(conversationId).join(",")}`,
    );
    assert.deepEqual(b.messages(conversationId), [
      ...Array.from({ length: 5 }, (_, i) => `before${i}`),
      ...Array.from({ length: 10 }, (_, i) => `during${i}`),
    ]);
    assert.deepEqual(b.violations, []);

    // A restart of the app resumes from its own cursor: nothing seen before comes again.
    const lastSeen = b.in(conversationId).at(-1)!.seq;
    const bobAgain = await reopen(bobOverProxy, net.url);
    const b2 = new Recorder(bobAgain);
    await bobAgain.connect();
    await alice.send(conversationId, "after restart");
    await eventually(
      () => b2.messages(conversationId).length === 1,
      () => `bob after restart has ${b2.messages(conversationId).join(",")}`,
    );
    assert.deepEqual(
      b2.in(conversationId).map((e) => e.seq),
      [lastSeen + 1n],
    );
  });

  it("retries a send whose answer was lost, and gets the original seq (one entry only)", async () => {
    const net = await proxy();
    const alice = await user("alice");
    const bob = await user("bob");
    const b = new Recorder(bob);
    const { conversationId } = await alice.openDirect(bob.userId);
    const aliceOverProxy = await reopen(alice, net.url);
    await Promise.all([aliceOverProxy.connect(), bob.connect()]);
    await aliceOverProxy.send(conversationId, "warm-up");

    // The server commits the send but its send_ack never reaches alice.
    net.set("swallow");
    let acked: bigint | undefined;
    const sending = aliceOverProxy.send(conversationId, "ack lost", { clientMsgId: "ack-lost-1" });
    void sending.then((r) => {
      acked = r.seq;
    });
    await eventually(
      () => b.messages(conversationId).includes("ack lost"),
      () => "bob never got the message",
    );
    const committed = b.in(conversationId).find((e) => text(e) === "ack lost")!;
    assert.equal(acked, undefined, "the ack was swallowed");
    assert.deepEqual(aliceOverProxy.pendingSends(), [{ clientMsgId: "ack-lost-1", conversationId }]);

    // And one more, sent while the network is down altogether.
    net.set("refuse");
    net.cut();
    const offline = aliceOverProxy.send(conversationId, "sent offline");
    await new Promise((resolve) => setTimeout(resolve, 100));
    net.set("open");

    const result = await sending;
    assert.equal(result.seq, committed.seq, "the retry returned the original seq");
    assert.equal(result.clientMsgId, "ack-lost-1");
    const offlineResult = await offline;
    await eventually(
      () => b.messages(conversationId).includes("sent offline"),
      () => b.messages(conversationId).join(","),
    );
    assert.deepEqual(b.messages(conversationId), ["warm-up", "ack lost", "sent offline"]);
    assert.equal(b.in(conversationId).find((e) => text(e) === "sent offline")?.seq, offlineResult.seq);
    assert.deepEqual(b.violations, []);
    assert.deepEqual(aliceOverProxy.pendingSends(), []);
  });

  it("resends the outbox after an app restart; the server answers a committed one with its seq", async () => {
    const net = await proxy();
    const alice = await user("alice");
    const bob = await user("bob");
    const b = new Recorder(bob);
    const { conversationId } = await alice.openDirect(bob.userId);
    await Promise.all([alice.connect(), bob.connect()]);
    const first = await alice.send(conversationId, "committed", { clientMsgId: "restart-1" });

    // Offline: the send waits in the outbox; the app quits before it could go out.
    const offlineAlice = await reopen(alice, net.url);
    net.set("refuse");
    void offlineAlice.connect().catch(() => {});
    const queued = offlineAlice.send(conversationId, "queued while offline", { clientMsgId: "restart-2" });
    await eventually(
      () => offlineAlice.pendingSends().length === 1,
      () => "send not in the outbox",
    );
    const canceled = assert.rejects(queued, (err: ConnectError) => err.code === Code.Canceled);
    await offlineAlice.close();
    await canceled;

    // A crash after the commit but before the ack was processed leaves a committed send behind.
    const profile = await Profile.open(alice.profileDir);
    const outgoing = create(OutgoingEntrySchema, {
      clientMsgId: "restart-1",
      conversationId,
      body: { case: "message", value: { payload: new TextEncoder().encode("committed") } },
    });
    await profile.addToOutbox({
      clientMsgId: "restart-1",
      conversationId,
      outgoing: Buffer.from(toBinary(OutgoingEntrySchema, outgoing)).toString("base64"),
      createdAtMs: 0,
    });
    assert.equal((await Profile.open(alice.profileDir)).outbox().length, 2);

    const restarted = await SwitchboardClient.open({ profileDir: alice.profileDir, ...tuning });
    clients.push(restarted);
    const sent = new Map<string, bigint>();
    restarted.on("sent", (r) => {
      sent.set(r.clientMsgId, r.seq);
    });
    await restarted.connect();
    await eventually(
      () => sent.size === 2,
      () => `sent: ${[...sent.keys()].join(",")}`,
    );
    assert.equal(sent.get("restart-1"), first.seq);
    await eventually(
      () => b.messages(conversationId).length === 2,
      () => b.messages(conversationId).join(","),
    );
    assert.deepEqual(b.messages(conversationId), ["committed", "queued while offline"]);
    assert.equal(b.in(conversationId).at(-1)?.seq, sent.get("restart-2"));
    // Forgetting answered sends is not awaited per send; close() waits for the writes.
    await restarted.close();
    assert.deepEqual((await Profile.open(alice.profileDir)).outbox(), []);
  });

  it("runs a group of three; a member added later starts at their join, a removed one stops", async () => {
    const alice = await user("alice");
    const bob = await user("bob");
    const carol = await user("carol");
    const dave = await user("dave");
    const rec = new Map([alice, bob, carol, dave].map((c) => [c.userId, new Recorder(c)] as const));
    const group = await alice.createGroup("trio", [bob.userId, carol.userId]);
    const g = group.conversationId;
    assert.ok(g.startsWith("g_"));
    await Promise.all([alice, bob, carol, dave].map((c) => c.connect()));

    await Promise.all(
      [alice, bob, carol].flatMap((c) =>
        Array.from({ length: 5 }, (_, i) => c.send(g, `${c.username.split("_")[0]}${i}`)),
      ),
    );
    const logOf = (c: SwitchboardClient) =>
      rec
        .get(c.userId)!
        .in(g)
        .map((e) => `${e.seq}:${e.kind === "message" ? text(e) : e.kind}`);
    await eventually(
      () => [alice, bob, carol].every((c) => logOf(c).length === 16),
      () => [alice, bob, carol].map((c) => logOf(c).length).join(","),
    );
    assert.deepEqual(logOf(bob), logOf(alice));
    assert.deepEqual(logOf(carol), logOf(alice));
    for (const who of ["alice", "bob", "carol"]) {
      const own = rec
        .get(alice.userId)!
        .messages(g)
        .filter((m) => m.startsWith(who));
      assert.deepEqual(
        own,
        Array.from({ length: 5 }, (_, i) => `${who}${i}`),
        `${who}'s messages keep their order`,
      );
    }

    const added = await alice.addMembers(g, [dave.userId]);
    assert.equal(added?.seq, 17n);
    await alice.send(g, "welcome dave");
    await eventually(
      () => rec.get(dave.userId)!.in(g).length === 2,
      () => `dave has ${rec.get(dave.userId)!.in(g).length}`,
    );
    const daves = rec.get(dave.userId)!.in(g);
    assert.equal(daves[0]?.seq, 17n, "dave's first entry is the one that added him");
    assert.equal(daves[0]?.membership?.action, MembershipAction.ADDED);
    assert.equal(text(daves[1]!), "welcome dave");

    await alice.removeMembers(g, [carol.userId]);
    await alice.send(g, "carol is gone");
    await eventually(
      () => rec.get(bob.userId)!.messages(g).includes("carol is gone"),
      () => "bob did not get the message",
    );
    await new Promise((resolve) => setTimeout(resolve, 200));
    const carols = rec.get(carol.userId)!.in(g);
    assert.equal(carols.at(-1)?.membership?.action, MembershipAction.REMOVED);
    assert.ok(!rec.get(carol.userId)!.messages(g).includes("carol is gone"));
    await assert.rejects(
      carol.send(g, "still here?"),
      (err: ConnectError) => err.code === Code.PermissionDenied,
    );
    for (const r of rec.values()) assert.deepEqual(r.violations, []);
  });

  it("registers and removes a push target and mutes a conversation", async () => {
    const gina = await user("gina");
    const hank = await user("hank");
    const { conversationId } = await gina.openDirect(hank.userId);
    await hank.setPushTarget({ case: "fcm", value: { token: "fcm-registration-token" } });
    assert.equal((await hank.listDevices())[0]?.pushKind, "fcm");
    await hank.setMute(conversationId, Date.now() + 60_000);
    assert.ok((await hank.getConversation(conversationId)).conversation.mutedUntilMs > 0n);
    await hank.setMute(conversationId, 0);
    assert.equal((await hank.getConversation(conversationId)).conversation.mutedUntilMs, 0n);
    await hank.removePushTarget();
    assert.equal((await hank.listDevices())[0]?.pushKind, "");
  });

  it("gives a linked device what comes after its link, not the history before; a revoked device stops for good", async () => {
    const erin = await user("erin");
    const frank = await user("frank");
    const { conversationId } = await erin.openDirect(frank.userId);
    await erin.connect();
    await erin.send(conversationId, "before frank's phone was linked");
    const { code } = await frank.createLinkCode();
    const phone = await SwitchboardClient.link({
      serverUrl: server.url,
      profileDir: profileDir("frank-phone"),
      code,
      deviceName: "phone",
      encryption: false,
      ...tuning,
    });
    clients.push(phone);
    assert.equal(phone.userId, frank.userId);
    const p = new Recorder(phone);
    const errors: Array<{ code: Code; fatal: boolean }> = [];
    const disconnects: Array<number | undefined> = [];
    phone.on("error", (e) => errors.push({ code: e.error.code, fatal: e.fatal }));
    phone.on("disconnected", (e) => disconnects.push(e.retryInMs));
    await phone.connect();
    await erin.send(conversationId, "to all of frank's devices");
    await eventually(
      () => p.messages(conversationId).length === 1,
      () => "the linked device did not get the message",
    );
    // The server serves a linked device nothing from before its link (docs/protocol.md).
    assert.deepEqual(
      p.messages(conversationId),
      ["to all of frank's devices"],
      "only what came after the link",
    );

    await frank.revokeDevice(phone.deviceId);
    await eventually(
      () => errors.some((e) => e.fatal),
      () => `errors: ${JSON.stringify(errors)}`,
    );
    assert.equal(errors.find((e) => e.fatal)?.code, Code.Unauthenticated);
    assert.equal(disconnects.at(-1), undefined, "no further reconnect is scheduled");
    await assert.rejects(phone.send(conversationId, "from a revoked device"));
    await assert.rejects(SwitchboardClient.open({ profileDir: phone.profileDir }).then((c) => c.connect()));
  });

  it("runs the CLI client commands: register, send, history, groups", async () => {
    const out: string[] = [];
    const err: string[] = [];
    const codes: number[] = [];
    const io: CliIo = {
      out: (l) => out.push(l),
      err: (l) => err.push(l),
      exit: (c) => codes.push(c),
      isTTY: false,
    };
    const cli = async (...args: string[]): Promise<string[]> => {
      out.length = 0;
      const program = new Command("switchboard").exitOverride();
      registerClientCommands(program, io);
      await program.parseAsync(args, { from: "user" });
      return [...out];
    };
    const gina = profileDir("gina");
    const hank = profileDir("hank");
    const ginaName = `gina_${n}`;
    const hankName = `hank_${n}`;
    await cli("register", ginaName, "--server", server.url, "--profile", gina);
    await cli("register", hankName, "--server", server.url, "--profile", hank, "--display-name", "Hank");
    assert.match(
      (await cli("send", hankName, "hello from the CLI", "--profile", gina))[0] ?? "",
      /^sent #2 to /,
    );
    const history = await cli("history", ginaName, "--profile", hank);
    assert.equal(history.length, 2);
    assert.match(history[0]!, new RegExp(`#1 .* @${ginaName} created the conversation with`));
    assert.match(history[1]!, new RegExp(`#2 .* @${ginaName}: hello from the CLI$`));
    const [groupId] = await cli("group", "create", "cli group", hankName, "--profile", gina);
    assert.match(groupId ?? "", /^g_/);
    await cli("send", groupId!, "to the group", "--profile", hank);
    const groups = await cli("groups", "--profile", hank);
    assert.match(groups.join("\n"), new RegExp(`${groupId}  cli group \\(2 members\\)  last #2`));
    const conversations = await cli("conversations", "--profile", gina);
    assert.equal(conversations.length, 2);
    assert.ok(conversations.some((l) => l.includes(`@${hankName}`)));
    assert.deepEqual(codes, []);

    err.length = 0;
    await cli("send", "nobody_here", "hi", "--profile", gina);
    assert.deepEqual(codes, [1]);
    assert.equal(err.length, 1);
    assert.match(err[0]!, /^switchboard: no user named "nobody_here" \[NotFound\]$/);
  });

  it("runs send and history through services/cli/main.ts", async (t) => {
    const main = await readFile(join(root, "services/cli/main.ts"), "utf8").catch(() => "");
    if (!main.includes("registerClientCommands")) {
      t.skip("services/cli/main.ts does not register the client commands yet");
      return;
    }
    const ivy = await user("ivy");
    const jack = await user("jack");
    const run = (...args: string[]) =>
      runNode(["--import", "tsx", "services/cli/main.ts", ...args], {
        cwd: root,
        env: { ...process.env, SWITCHBOARD_URL: server.url },
      });
    await ivy.close();
    await jack.close();
    const sent = await run("send", jack.username, "over the real CLI", "--profile", ivy.profileDir);
    assert.equal(sent.code, 0, sent.stderr);
    assert.match(sent.stdout, /^sent #2 to /);
    const history = await run("history", ivy.username, "--profile", jack.profileDir);
    assert.equal(history.code, 0, history.stderr);
    assert.match(history.stdout, new RegExp(`#2 .* @${ivy.username}: over the real CLI\\n$`));
    const bad = await run("history", "nobody_at_all", "--profile", jack.profileDir);
    assert.equal(bad.code, 1);
    assert.equal(bad.stderr.trim().split("\n").length, 1, bad.stderr);
  });
});
