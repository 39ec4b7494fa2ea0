import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { eventually, Inbox } from "../../test/helpers/inbox.js";
import { SdkServerSuite } from "../../test/helpers/sdk-devices.js";
import { SwitchboardClient } from "../client.js";
import { type HealthEvent, SDK_EVENT_NAMES } from "./events.js";
import { ConversationHealth } from "./health.js";

// Conversation health end to end: two encrypted SDK devices against a server process. Everything
// is computed on each device from the entries it gets; the only thing that leaves the health
// module is the event stream, and the sink here checks that it never carries a word of content.

/** Words in every message below: none may reach a sink. */
const SECRET = "zebra-parsnip";
const ALLOWED_FIELDS = new Set([
  "name",
  "atMs",
  "conversationId",
  "seq",
  "userId",
  "startSeq",
  "inactiveMs",
  "ttfrMs",
  "within24h",
  "count",
]);

class Sink {
  readonly events: HealthEvent[] = [];
  readonly push = (e: HealthEvent): void => {
    // What a real sink does first: serialize. A bigint or a byte array would show here.
    const json = JSON.stringify(e);
    this.events.push(JSON.parse(json) as HealthEvent);
  };
  named(name: string, conversationId?: string): HealthEvent[] {
    return this.events.filter(
      (e) => e.name === name && (conversationId === undefined || e.conversationId === conversationId),
    );
  }
}

describe("conversation health, two devices and a server process", () => {
  const suite = new SdkServerSuite("sb-health-");
  const sinks: Sink[] = [];
  after(() => {
    // Whatever a test did, no sink ever saw content or a field outside the metadata set.
    for (const sink of sinks) {
      for (const e of sink.events) {
        for (const key of Object.keys(e)) assert.ok(ALLOWED_FIELDS.has(key), `field ${key} in ${e.name}`);
        assert.ok(!JSON.stringify(e).includes(SECRET.split("-")[0] ?? SECRET), `content in ${e.name}`);
        for (const value of Object.values(e)) assert.ok(typeof value !== "object", `${e.name} nests a value`);
      }
    }
  });

  async function withHealth(client: SwitchboardClient): Promise<{ health: ConversationHealth; sink: Sink }> {
    const sink = new Sink();
    sinks.push(sink);
    return { health: await ConversationHealth.attach(client, { sink: sink.push }), sink };
  }

  it("a start, its reply, receipts, needs reply both ways, metrics, and all of it after a restart", async () => {
    const alice = await suite.devices.register("alice");
    const bob = await suite.devices.register("bob");
    const a = await withHealth(alice);
    const b = await withHealth(bob);
    const bobInbox = new Inbox("bob", bob);
    await Promise.all([alice.connect(), bob.connect()]);
    const { conversationId } = await alice.openDirect(bob.userId);

    const first = await alice.send(conversationId, `hi bob ${SECRET}`);
    await alice.send(conversationId, `still there? ${SECRET}`);
    await bobInbox.entry(conversationId, first.seq + 1n);
    await eventually(
      () => b.health.needsReply(conversationId).needsReply,
      () => `bob's needs reply: ${JSON.stringify(b.health.needsReply(conversationId), (_, v) => String(v))}`,
    );
    assert.equal(b.health.needsReply(conversationId).seq, first.seq + 1n, "the latest message waits");
    assert.equal(b.health.needsReply(conversationId).fromUserId, alice.userId);
    assert.equal(a.health.needsReply(conversationId).needsReply, false, "alice spoke last");

    bob.markRead(conversationId, first.seq + 1n);
    const reply = await bob.send(conversationId, `yes ${SECRET}`, { replyTo: first.seq });
    await eventually(
      () =>
        a.sink.named("conversation.reply_received").length === 1 &&
        a.sink.named("messaging.message_read").length > 0,
      () => `alice's events: ${a.sink.events.map((e) => e.name).join(", ")}`,
    );
    const [start] = a.sink.named("conversation.conversation_start");
    assert.equal(start?.seq, first.seq.toString(), "her first message was the start");
    assert.equal(a.sink.named("conversation.conversation_start").length, 1, "the second was not");
    const [replied] = a.sink.named("conversation.reply_received");
    assert.equal(replied?.seq, reply.seq.toString());
    assert.equal(replied?.startSeq, first.seq.toString());
    assert.equal(replied?.userId, bob.userId);
    assert.equal(
      replied?.ttfrMs,
      Number(reply.serverTimeMs - first.serverTimeMs),
      "commit time to commit time",
    );
    assert.equal(replied?.within24h, true);
    assert.deepEqual(
      a.sink.named("messaging.message_sent").map((e) => e.seq),
      [first.seq.toString(), (first.seq + 1n).toString()],
      "sent once per message, by the sending device",
    );
    assert.ok(a.sink.named("messaging.message_delivered").length > 0, "bob's device got them");
    const read = a.sink.named("messaging.message_read").at(-1);
    assert.equal(read?.userId, bob.userId);
    assert.equal(read?.seq, (first.seq + 1n).toString());
    // Bob's device saw the same log: no start of his own (he replied), and no event about alice's
    // messages but his own sends and alice's receipts.
    assert.equal(b.sink.named("conversation.conversation_start").length, 0);
    await eventually(
      () => !b.health.needsReply(conversationId).needsReply && a.health.needsReply(conversationId).needsReply,
      () => "bob answered; now alice has a reply to read",
    );
    const m = a.health.metrics();
    assert.deepEqual([m.starts, m.replied, m.decided, m.repliedWithin24h, m.replyRate24h], [1, 1, 1, 1, 1]);
    for (const e of [...a.sink.events, ...b.sink.events]) {
      assert.ok((SDK_EVENT_NAMES as readonly string[]).includes(e.name), e.name);
    }

    // A restart: the state is in the profile's storage (read here without a client, so without
    // the repair from history that attach would run). Closing the client closes its health first,
    // so the last batch is written before the profile is released.
    await alice.close();
    const stored = await ConversationHealth.open(alice.storage, alice.userId);
    assert.equal(stored.needsReply(conversationId).seq, reply.seq);
    assert.equal(stored.metrics().replied, 1);
  });

  it("another device of the sender computes the same start and reply; only the sending device says it sent", async () => {
    const alice = await suite.devices.register("alice");
    const bob = await suite.devices.register("bob");
    const phone = await withHealth(alice);
    const laptopClient = await suite.devices.link(alice, "alice-laptop");
    const laptop = await withHealth(laptopClient);
    await Promise.all([alice.connect(), bob.connect(), laptopClient.connect()]);
    const { conversationId } = await alice.openDirect(bob.userId);
    const first = await alice.send(conversationId, `from the phone ${SECRET}`);
    const reply = await bob.send(conversationId, `back ${SECRET}`);
    for (const device of [phone, laptop]) {
      await eventually(
        () => device.sink.named("conversation.reply_received").length === 1,
        () => `events: ${device.sink.events.map((e) => e.name).join(", ")}`,
      );
    }
    const key = (e: HealthEvent | undefined) => [e?.conversationId, e?.seq, e?.startSeq, e?.ttfrMs];
    assert.deepEqual(
      key(laptop.sink.named("conversation.conversation_start")[0]),
      key(phone.sink.named("conversation.conversation_start")[0]),
    );
    assert.deepEqual(
      key(laptop.sink.named("conversation.reply_received")[0]),
      key(phone.sink.named("conversation.reply_received")[0]),
      "the same join key and TTFR on both devices (server times)",
    );
    assert.equal(phone.sink.named("conversation.reply_received")[0]?.seq, reply.seq.toString());
    assert.deepEqual(
      phone.sink.named("messaging.message_sent").map((e) => e.seq),
      [first.seq.toString()],
    );
    assert.deepEqual(laptop.sink.named("messaging.message_sent"), [], "the laptop sent nothing");
    assert.equal(laptop.health.needsReply(conversationId).seq, reply.seq, "both devices see bob waiting");
  });

  /**
   * Alice with health whose timer never writes (a write delay of ten minutes), and bob's hello to
   * her in a new direct conversation.
   */
  async function helloToUnwrittenHealth() {
    const alice = await suite.devices.register("alice");
    const bob = await suite.devices.register("bob");
    const health = await ConversationHealth.attach(alice, { writeDelayMs: 600_000 });
    const inbox = new Inbox("alice", alice);
    await Promise.all([alice.connect(), bob.connect()]);
    const { conversationId } = await bob.openDirect(alice.userId);
    const hello = await bob.send(conversationId, `hello ${SECRET}`);
    return { alice, bob, health, inbox, conversationId, hello };
  }

  it("what health had not written when its process ended is taken back from history on the next attach", async () => {
    const { alice, bob, health, inbox, conversationId, hello } = await helloToUnwrittenHealth();
    const mention = await bob.send(conversationId, `@you ${SECRET}`, { mentions: [alice.userId] });
    await inbox.entry(conversationId, mention.seq);
    assert.equal(health.needsReply(conversationId).seq, mention.seq);
    // The process ends here for health (its batch is never written, and a detached health is not
    // closed with the client); the client acks and writes its cursor at close.
    health.detach();
    await alice.close();
    const lost = await ConversationHealth.open(alice.storage, alice.userId);
    assert.equal(lost.needsReply(conversationId).needsReply, false, "health's own state lost them");

    const again = await suite.devices.reopen(alice.profileDir);
    const repaired = await ConversationHealth.attach(again);
    await repaired.repaired;
    assert.equal(repaired.needsReply(conversationId).seq, mention.seq);
    assert.deepEqual(repaired.awaySummary(conversationId).mentions.seqs, [mention.seq]);
    assert.ok(hello.seq < mention.seq);
    await repaired.flush();
    assert.equal(
      (await ConversationHealth.open(again.storage, again.userId)).needsReply(conversationId).seq,
      mention.seq,
    );
  });

  it("closing the client closes its health: the last batch is written before the profile is released", async () => {
    // Nothing is written by the timer: only close can write the batch.
    const { alice, health, inbox, conversationId, hello } = await helloToUnwrittenHealth();
    await inbox.entry(conversationId, hello.seq);
    assert.equal(health.needsReply(conversationId).seq, hello.seq);
    await alice.close();
    const stored = await ConversationHealth.open(alice.storage, alice.userId);
    assert.equal(stored.needsReply(conversationId).seq, hello.seq, "written at close");
  });

  it("a closing listener that never settles holds close() for closingGraceMs only; the profile is released", async () => {
    const first = await suite.devices.register("dora");
    await first.close();
    const client = await SwitchboardClient.open({
      profileDir: first.profileDir,
      encryption: true,
      closingGraceMs: 100,
    });
    let called = false;
    client.on("closing", () => {
      called = true;
      return new Promise<void>(() => {});
    });
    // Without the grace this never resolves (the test's own timeout would end it).
    await client.close();
    assert.ok(called, "the listener was called");
    const again = await SwitchboardClient.open({ profileDir: first.profileDir, encryption: true });
    await again.close();
  });

  it("the away summary of a group: mentions, replies to you and pins while away, from history or the stream, counted once", async () => {
    const alice = await suite.devices.register("alice");
    const bob = await suite.devices.register("bob");
    const a = await withHealth(alice);
    await withHealth(bob);
    const aliceInbox = new Inbox("alice", alice);
    await Promise.all([alice.connect(), bob.connect()]);
    const group = await bob.createGroup("health", [alice.userId]);
    const id = group.conversationId;
    const mine = await alice.send(id, `plans ${SECRET}`);
    await a.health.opened(id);
    await a.health.left(id);
    assert.equal(a.health.needsReply(id).needsReply, false);

    // Alice goes away; bob writes to the group: a plain message, a mention, a reply to alice.
    await alice.close();
    await bob.send(id, `lunch? ${SECRET}`);
    const mention = await bob.send(id, `@alice ${SECRET}`, { mentions: [alice.userId] });
    const replyToHer = await bob.send(id, `re plans ${SECRET}`, { replyTo: mine.seq });
    // An admin (bob made the group) pins her message, and unpins and pins it again: two pins.
    await bob.pins.pin(id, mine.seq);
    await bob.pins.unpin(id, mine.seq);
    const lastPin = await bob.pins.pin(id, mine.seq);

    // Back, before any stream: the summary comes from history (GetHistory), with jump links.
    const back = await suite.devices.reopen(alice.profileDir);
    const sink = new Sink();
    sinks.push(sink);
    const health = await ConversationHealth.attach(back, { sink: sink.push });
    assert.equal(health.awaySummary(id).mentions.count, 0, "nothing seen yet");
    await health.catchUp(id);
    const summary = health.awaySummary(id);
    assert.deepEqual(summary.mentions.seqs, [mention.seq]);
    assert.deepEqual(summary.replies.seqs, [replyToHer.seq]);
    assert.deepEqual(
      summary.pins,
      { count: 2, seqs: [mine.seq, mine.seq] },
      "the pinned message, not the unpin",
    );
    assert.ok(summary.sinceMs > 0, "from the last time she opened it");
    assert.equal(health.needsReply(id).seq, replyToHer.seq, "a group needs a reply only when it is for her");

    // The stream then hands the same entries over: nothing counted twice.
    const backInbox = new Inbox("alice again", back);
    await back.connect();
    await backInbox.entry(id, lastPin.seq);
    await health.flushed();
    const seen = await health.opened(id);
    assert.equal(seen.mentions.count, 1);
    assert.equal(seen.replies.count, 1);
    assert.equal(seen.pins.count, 2);
    assert.equal(health.awaySummary(id).mentions.count, 0, "opening starts a new window");
    assert.ok(aliceInbox.entries.length > 0);
  });
});
