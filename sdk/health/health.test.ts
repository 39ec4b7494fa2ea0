import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { EntrySchema } from "../../gen/switchboard/v1/entry_pb.js";
import { MemoryStorage } from "../storage/memory.js";
import type { IncomingEntry } from "../types.js";
import { appEvent, EventPipe, type HealthEvent } from "./events.js";
import { ConversationHealth } from "./health.js";
import {
  DAY_MS,
  DEFAULT_SETTINGS,
  type HealthSettings,
  HOUR_MS,
  MAX_AWAY_LINKS,
  metrics,
  needsReply,
  newConversation,
  observe,
  percentile,
  type StartRecord,
} from "./model.js";

// Conversation health's computations on explicit clocks: every time below is a server commit time
// or a `now` the test passes, never the machine's clock.

const ME = "u_me";
const PEER = "u_peer";
const OTHER = "u_other";
const T0 = 1_800_000_000_000;
const settings: HealthSettings = { ...DEFAULT_SETTINGS, startAfterInactiveMs: 6 * HOUR_MS };

/** An entry as the client hands it over (IncomingEntry), with its raw log entry. */
function entry(
  conversationId: string,
  seq: number,
  sender: string,
  atMs: number,
  extra: {
    replyTo?: number;
    mentions?: string[];
    fromThisDevice?: boolean;
    pin?: number;
    text?: string;
  } = {},
): IncomingEntry {
  const body =
    extra.pin !== undefined
      ? { case: "pin" as const, value: { targetSeq: BigInt(extra.pin), unpin: false } }
      : {
          case: "message" as const,
          value: {
            replyToSeq: BigInt(extra.replyTo ?? 0),
            mentionedUserIds: extra.mentions ?? [],
            payload: new TextEncoder().encode(extra.text ?? ""),
          },
        };
  const raw = create(EntrySchema, {
    conversationId,
    seq: BigInt(seq),
    senderUserId: sender,
    senderDeviceId: extra.fromThisDevice ? "dv_me" : "dv_x",
    serverTimeMs: BigInt(atMs),
    body,
  });
  return {
    conversationId,
    seq: BigInt(seq),
    senderUserId: sender,
    senderDeviceId: raw.senderDeviceId,
    clientMsgId: `c${seq}`,
    serverTimeMs: BigInt(atMs),
    kind: extra.pin !== undefined ? "unknown" : "message",
    payload: extra.text === undefined ? undefined : new TextEncoder().encode(extra.text),
    attachments: [],
    keysOnly: false,
    encrypted: false,
    targetSeq: undefined,
    replyTo: extra.replyTo === undefined ? undefined : BigInt(extra.replyTo),
    mentions: extra.mentions ?? [],
    membership: undefined,
    call: undefined,
    redacted: false,
    decodeError: undefined,
    fromThisDevice: extra.fromThisDevice === true,
    raw,
  };
}

const meta = (e: IncomingEntry) => ({ ...e, mentionsMeInContent: false, pinnedSeq: undefined });

describe("conversation health: the computations", () => {
  it("a conversation start is a message of this user after X hours without any message, either way", () => {
    const s = newConversation("d_a");
    const first = observe(s, ME, meta(entry("d_a", 1, ME, T0)), settings);
    assert.equal(first.kind === "changed" && first.start?.seq, 1n, "the first message known is a start");
    assert.equal(first.kind === "changed" && first.inactiveMs, undefined);
    // Inside the 6 hours: not a start, whoever spoke.
    const soon = observe(s, ME, meta(entry("d_a", 2, ME, T0 + 5 * HOUR_MS)), settings);
    assert.equal(soon.kind === "changed" && soon.start, undefined);
    observe(s, ME, meta(entry("d_a", 3, PEER, T0 + 10 * HOUR_MS)), settings);
    const afterPeer = observe(s, ME, meta(entry("d_a", 4, ME, T0 + 15 * HOUR_MS)), settings);
    assert.equal(afterPeer.kind === "changed" && afterPeer.start, undefined, "5 h after the peer's message");
    const later = observe(s, ME, meta(entry("d_a", 5, ME, T0 + 21 * HOUR_MS)), settings);
    assert.equal(later.kind === "changed" && later.start?.seq, 5n, "exactly 6 h of quiet: a start");
    assert.equal(later.kind === "changed" && later.inactiveMs, 6 * HOUR_MS);
    // With X = 24 h the same quiet is no start.
    const t = newConversation("d_b");
    const x24 = { ...settings, startAfterInactiveMs: 24 * HOUR_MS };
    observe(t, ME, meta(entry("d_b", 1, ME, T0)), x24);
    const r = observe(t, ME, meta(entry("d_b", 2, ME, T0 + 23 * HOUR_MS)), x24);
    assert.equal(r.kind === "changed" && r.start, undefined);
  });

  it("first seen in the middle of the log, the first message of this user is a baseline, not a start", () => {
    const mid = newConversation("d_m");
    observe(mid, ME, meta(entry("d_m", 40, PEER, T0)), settings);
    const r = observe(mid, ME, meta(entry("d_m", 41, ME, T0 + HOUR_MS)), settings);
    assert.equal(r.kind === "changed" && r.start, undefined);
    const later = observe(mid, ME, meta(entry("d_m", 42, ME, T0 + 8 * HOUR_MS)), settings);
    assert.equal(later.kind === "changed" && later.start?.seq, 42n, "after 6 h of known quiet: a start");
    const alone = newConversation("d_n");
    const own = observe(alone, ME, meta(entry("d_n", 9, ME, T0)), settings);
    assert.equal(own.kind === "changed" && own.start, undefined, "its own message first, mid-log");
    // A member's view begins at their join (a membership entry): what follows is known.
    const joined = newConversation("g_j");
    observe(joined, ME, { ...meta(entry("g_j", 17, OTHER, T0)), kind: "membership" }, settings);
    const first = observe(joined, ME, meta(entry("g_j", 18, ME, T0 + 1)), settings);
    assert.equal(first.kind === "changed" && first.start?.seq, 18n);
  });

  it("the first message of someone else after a start is its reply, with the time to it; later ones are not", () => {
    const s = newConversation("d_a");
    observe(s, ME, meta(entry("d_a", 1, ME, T0)), settings);
    observe(s, ME, meta(entry("d_a", 2, ME, T0 + HOUR_MS)), settings);
    const reply = observe(s, ME, meta(entry("d_a", 3, PEER, T0 + 3 * HOUR_MS)), settings);
    assert.ok(reply.kind === "changed" && reply.reply !== undefined);
    assert.equal(reply.reply.start.seq, 1n);
    assert.equal(reply.reply.replyMs, 3 * HOUR_MS);
    const again = observe(s, ME, meta(entry("d_a", 4, PEER, T0 + 4 * HOUR_MS)), settings);
    assert.equal(again.kind === "changed" && again.reply, undefined);
    // Seen before (a catch-up, then the stream): ignored.
    assert.equal(observe(s, ME, meta(entry("d_a", 3, PEER, T0 + 3 * HOUR_MS)), settings).kind, "ignored");
  });

  it("needs reply: direct messages after this user's last, groups only when mentioned or replied to, within the age limit", () => {
    const d = newConversation("d_a");
    observe(d, ME, meta(entry("d_a", 1, ME, T0)), settings);
    assert.equal(needsReply(d, T0, settings).needsReply, false);
    observe(d, ME, meta(entry("d_a", 2, PEER, T0 + HOUR_MS)), settings);
    const n = needsReply(d, T0 + 2 * HOUR_MS, settings);
    assert.deepEqual(n, {
      conversationId: "d_a",
      needsReply: true,
      seq: 2n,
      fromUserId: PEER,
      sinceMs: T0 + HOUR_MS,
    });
    assert.equal(needsReply(d, T0 + HOUR_MS + 7 * DAY_MS, settings).needsReply, true, "7 days: still");
    assert.equal(needsReply(d, T0 + HOUR_MS + 7 * DAY_MS + 1, settings).needsReply, false, "past 7 days");
    observe(d, ME, meta(entry("d_a", 3, ME, T0 + 2 * HOUR_MS)), settings);
    assert.equal(needsReply(d, T0 + 3 * HOUR_MS, settings).needsReply, false, "answered");
    observe(d, ME, meta(entry("d_a", 4, PEER, T0 + 4 * HOUR_MS)), settings);
    d.dismissedSeq = d.lastSeq;
    assert.equal(needsReply(d, T0 + 5 * HOUR_MS, settings).needsReply, false, "dismissed");

    const g = newConversation("g_a");
    g.kind = "group";
    observe(g, ME, meta(entry("g_a", 1, ME, T0)), settings);
    observe(g, ME, meta(entry("g_a", 2, PEER, T0 + 1)), settings);
    assert.equal(needsReply(g, T0 + 2, settings).needsReply, false, "a group message for everyone");
    observe(g, ME, meta(entry("g_a", 3, PEER, T0 + 3, { replyTo: 1 })), settings);
    assert.equal(needsReply(g, T0 + 4, settings).seq, 3n, "a reply to this user's message");
    observe(g, ME, meta(entry("g_a", 4, OTHER, T0 + 5, { mentions: [ME] })), settings);
    assert.equal(needsReply(g, T0 + 6, settings).fromUserId, OTHER, "a mention");
    observe(g, ME, meta(entry("g_a", 5, OTHER, T0 + 7, { replyTo: 2 })), settings);
    assert.equal(needsReply(g, T0 + 8, settings).seq, 4n, "a reply to someone else's message is not for me");
  });

  it("the away summary counts mentions, replies to this user and pins, and keeps the latest links", () => {
    const g = newConversation("g_a");
    g.kind = "group";
    observe(g, ME, meta(entry("g_a", 1, ME, T0)), settings);
    let seq = 2;
    for (let i = 0; i < MAX_AWAY_LINKS + 5; i++) {
      observe(g, ME, meta(entry("g_a", seq++, PEER, T0 + seq, { mentions: [ME] })), settings);
    }
    observe(g, ME, meta(entry("g_a", seq++, PEER, T0 + seq, { replyTo: 1 })), settings);
    observe(g, ME, { ...meta(entry("g_a", seq++, PEER, T0 + seq)), mentionsMeInContent: true }, settings);
    observe(g, ME, { ...meta(entry("g_a", seq++, OTHER, T0 + seq, { pin: 1 })), pinnedSeq: 1n }, settings);
    observe(g, ME, { ...meta(entry("g_a", seq++, ME, T0 + seq, { pin: 3 })), pinnedSeq: 3n }, settings);
    assert.equal(g.away.mentions.count, MAX_AWAY_LINKS + 6);
    assert.equal(g.away.mentions.seqs.length, MAX_AWAY_LINKS);
    assert.equal(g.away.mentions.seqs.at(-1), BigInt(seq - 3), "the content mention, found by the app");
    assert.equal(g.away.replies.count, 1);
    assert.deepEqual(g.away.pins, { count: 1, seqs: [1n] }, "this user's own pin is not news to them");
  });

  it("metrics: the 24-hour reply rate counts decided starts only; TTFR median and p90", () => {
    const now = T0 + 30 * DAY_MS;
    const s = (daysAgo: number, ttfrHours?: number): StartRecord => ({
      conversationId: "d_a",
      seq: 1n,
      atMs: now - daysAgo * DAY_MS,
      ...(ttfrHours !== undefined && { ttfrMs: ttfrHours * HOUR_MS }),
    });
    const starts = [
      s(40, 1), // outside the 28-day window
      s(10, 1),
      s(9, 2),
      s(8, 30), // replied, but after 24 h
      s(5), // never replied, a day old: decided, not within
      s(0.5), // younger than a day, no reply yet: undecided
      s(0.25, 3), // young but replied: decided, within
    ];
    const m = metrics(starts, now, settings);
    assert.equal(m.starts, 6);
    assert.equal(m.replied, 4);
    assert.equal(m.decided, 5);
    assert.equal(m.repliedWithin24h, 3);
    assert.equal(m.replyRate24h, 3 / 5);
    assert.equal(m.ttfrMedianMs, 2 * HOUR_MS);
    assert.equal(m.ttfrP90Ms, 30 * HOUR_MS);
    assert.equal(metrics([], now, settings).replyRate24h, undefined);
    assert.equal(percentile([5], 0.9), 5);
  });
});

describe("ConversationHealth on a storage", () => {
  it("keeps its state across a reopen, bounded in conversations, and answers on its clock", async () => {
    const storage = new MemoryStorage();
    let now = T0;
    const options = { startAfterInactiveMs: 6 * HOUR_MS, now: () => now, maxConversations: 3 };
    const health = await ConversationHealth.open(storage, ME, options);
    await health.observe(entry("d_a", 1, ME, T0));
    await health.observe(entry("d_a", 2, PEER, T0 + HOUR_MS));
    now = T0 + 2 * HOUR_MS;
    assert.equal(health.needsReply("d_a").needsReply, true);
    await health.flushed();

    const again = await ConversationHealth.open(storage, ME, options);
    assert.equal(again.needsReply("d_a").seq, 2n, "survives a restart");
    assert.equal(again.starts().length, 1);
    assert.equal(again.starts()[0]?.ttfrMs, HOUR_MS);
    // Four more conversations: the least recently active ones go, from memory and storage.
    for (const [i, id] of ["d_b", "d_c", "d_d", "d_e"].entries()) {
      await again.observe(entry(id, 1, PEER, T0 + (10 + i) * HOUR_MS));
    }
    await again.flushed();
    const keys = (await storage.list("health/conversations/")).length;
    assert.equal(keys, 3);
    assert.equal(again.needsReply("d_a").needsReply, false, "d_a was the least active");
    assert.deepEqual(
      again.conversationsNeedingReply(T0 + 20 * HOUR_MS).map((n) => n.conversationId),
      ["d_c", "d_d", "d_e"],
    );
  });

  it("writes in batches, not once per entry, and nothing before the batch is due", async () => {
    let puts = 0;
    const storage = new (class extends MemoryStorage {
      override async put(entries: ReadonlyArray<readonly [string, Uint8Array]>): Promise<void> {
        puts++;
        await super.put(entries);
      }
    })();
    const health = await ConversationHealth.open(storage, ME, { writeDelayMs: 60_000 });
    for (let i = 1; i <= 100; i++)
      health.observe(entry(`d_${i % 4}`, Math.ceil(i / 4), i % 2 ? PEER : ME, T0 + i));
    assert.equal(puts, 0, "the batch is not due for a minute");
    assert.equal(
      (await ConversationHealth.open(storage, ME)).needsReply("d_1").needsReply,
      false,
      "not written yet",
    );
    await health.flush();
    assert.equal(puts, 2, "one write of the four conversations, one of the starts");
    const reopened = await ConversationHealth.open(storage, ME);
    assert.equal(reopened.needsReply("d_1").seq, 25n);
    assert.equal(reopened.starts().length, 2, "d_0 and d_2, where this user wrote");
  });

  it("bounds its state in bytes too", async () => {
    const storage = new MemoryStorage();
    const health = await ConversationHealth.open(storage, ME, { maxStateBytes: 4_000 });
    for (let i = 0; i < 40; i++) await health.observe(entry(`d_${i}`, 1, PEER, T0 + i));
    await health.flushed();
    const stored = await storage.list("health/conversations/");
    const bytes = stored.reduce((n, [, v]) => n + v.byteLength, 0);
    assert.ok(bytes <= 4_000, `${bytes} bytes stored`);
    assert.ok(stored.length > 5 && stored.length < 40, `${stored.length} conversations kept`);
  });

  it("opened() returns the away summary and starts a new window that survives a restart", async () => {
    const storage = new MemoryStorage();
    const health = await ConversationHealth.open(storage, ME);
    await health.observe(entry("g_a", 1, ME, T0));
    await health.observe(entry("g_a", 2, PEER, T0 + 1, { mentions: [ME] }));
    await health.observe(entry("g_a", 3, PEER, T0 + 2, { replyTo: 1 }));
    await health.observe(entry("g_a", 4, OTHER, T0 + 3, { pin: 3 }));
    const summary = await health.opened("g_a", T0 + 10);
    assert.equal(summary.sinceMs, 0);
    assert.deepEqual([summary.mentions.seqs, summary.replies.seqs, summary.pins.seqs], [[2n], [3n], [3n]]);
    const reopened = await ConversationHealth.open(storage, ME);
    const next = reopened.awaySummary("g_a");
    assert.equal(next.sinceMs, T0 + 10);
    assert.equal(next.mentions.count + next.replies.count + next.pins.count, 0);
  });

  it("hands the sink metadata only: no payload text, only known fields; app events are checked", async () => {
    const events: HealthEvent[] = [];
    const health = await ConversationHealth.open(new MemoryStorage(), ME, {
      sink: (e) => {
        events.push(e);
      },
      now: () => T0,
    });
    const secret = "the launch code is 0000";
    await health.observe(entry("d_a", 1, ME, T0, { fromThisDevice: true, text: secret }));
    await health.observe(entry("d_a", 2, PEER, T0 + 5, { text: secret, replyTo: 1 }));
    health.track("ui.chatlist.needs_reply_shown", { conversationId: "d_a", count: 1 });
    assert.throws(() => health.track("ui.note", { conversationId: secret }), TypeError);
    assert.throws(() => health.track(secret), TypeError);
    assert.throws(() => health.track("messaging.message_sent"), TypeError, "the SDK's names are its own");
    assert.throws(() => health.track("ui.x", { text: secret } as never), TypeError);
    assert.throws(() => health.track("ui.x", { seq: 1.5 }), TypeError);
    assert.throws(() => health.track("ui.x", { count: -1 }), TypeError);
    await health.flushed();
    assert.deepEqual(
      events.map((e) => e.name),
      [
        "messaging.message_sent",
        "conversation.conversation_start",
        "conversation.reply_received",
        "ui.chatlist.needs_reply_shown",
      ],
    );
    assert.equal(events[2]?.ttfrMs, 5);
    assert.equal(events[2]?.within24h, true);
    const allowed = new Set([
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
    for (const e of events) {
      for (const key of Object.keys(e)) assert.ok(allowed.has(key), `unexpected field ${key}`);
      assert.ok(!JSON.stringify(e).includes("launch"), "no content");
    }
  });

  it("without a sink no event is made; a slow sink drops the oldest beyond its queue", async () => {
    const pipe = new EventPipe(undefined);
    pipe.push(appEvent("ui.a", {}, T0));
    assert.deepEqual(pipe.stats, { delivered: 0, dropped: 0, failed: 0 });
    let release: () => void = () => {};
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const seen: string[] = [];
    const slow = new EventPipe(async (e) => {
      await gate;
      seen.push(e.name);
    }, 2);
    for (const name of ["ui.a", "ui.b", "ui.c", "ui.d"]) slow.push(appEvent(name, {}, T0));
    release();
    await slow.flushed();
    // ui.a was already in the sink; of b, c, d the queue of 2 kept c and d.
    assert.deepEqual(seen, ["ui.a", "ui.c", "ui.d"]);
    assert.deepEqual(slow.stats, { delivered: 3, dropped: 1, failed: 0 });
  });
});
