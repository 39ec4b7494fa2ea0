import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { type Entry, EntrySchema, MessageBodySchema } from "../../gen/switchboard/v1/entry_pb.js";
import type { ConnectRequest, ConnectResponse } from "../../gen/switchboard/v1/gateway_pb.js";
import { defaultLimits } from "../../services/common/config.js";
import { createLogger } from "../common/log.js";
import type { GatewayCore } from "./gateway.js";
import { Session } from "./session.js";

const CONV = "d_0000000000000000000000000a";

function entry(seq: number): Entry {
  return create(EntrySchema, {
    conversationId: CONV,
    seq: BigInt(seq),
    senderUserId: "u_00000000000000000000000001",
    body: { case: "message", value: create(MessageBodySchema, { payload: new Uint8Array([seq % 256]) }) },
  });
}

/**
 * A gateway core whose sequencer is an in-memory log, to drive one session deterministically.
 * With `answer`, a history read is taken from the log when it arrives and answered when the
 * promise `answer()` gives settles: entries committed meanwhile are not in it.
 */
function fakeCore(log: Entry[], queueFrames: number, answer?: () => Promise<void>) {
  let historyCalls = 0;
  const core = {
    limits: { ...defaultLimits, outboundQueueFrames: queueFrames },
    log: createLogger({ level: "silent" }),
    metrics: { droppedEvents: 0, floodClosures: 0, rejectedRate: 0, rejectedInFlight: 0, replacedStreams: 0 },
    now: () => Date.now(),
    detach: () => {},
    register: async () => {},
    sequencer: {
      getSyncState: async () => ({
        conversations: [{ conversationId: CONV, lastSeq: 0n, deliveredUpTo: 0n, joinedSeq: 1n }],
        unansweredReplicas: [],
      }),
      getHistory: async (req: { afterSeq: bigint; limit: number }) => {
        historyCalls++;
        const after = Number(req.afterSeq);
        const entries = log.filter((e) => Number(e.seq) > after).slice(0, req.limit);
        const last = log.length;
        if (answer !== undefined) await answer();
        return { entries, lastSeq: BigInt(last), hasMore: after + entries.length < last };
      },
    },
  };
  return { core: core as unknown as GatewayCore, historyCalls: () => historyCalls };
}

async function* never(): AsyncGenerator<ConnectRequest> {
  await new Promise(() => {});
}

/** A started session over `log`; take(n) waits for its device to receive n entries and gives their seqs, in order. */
async function openSession(log: Entry[], queueFrames = 64, answer?: () => Promise<void>) {
  const { core, historyCalls } = fakeCore(log, queueFrames, answer);
  const session = new Session(
    { userId: "u_00000000000000000000000001", deviceId: "dv_00000000000000000000000001", expiresAtMs: 0 },
    core,
  );
  session.start(never());
  const reader = session.outbound.drain();
  const seqs: number[] = [];
  // A wrong session never delivers what is missing: fail in seconds rather than hang the suite.
  const take = async (n: number) => {
    const deadline = Date.now() + 5000;
    while (seqs.length < n) {
      let timer: NodeJS.Timeout | undefined;
      const next = await Promise.race([
        reader.next(),
        new Promise<undefined>((r) => {
          timer = setTimeout(() => r(undefined), Math.max(0, deadline - Date.now()));
        }),
      ]);
      clearTimeout(timer);
      if (next === undefined) assert.fail(`only ${JSON.stringify(seqs)} of ${n} entries came`);
      const { value } = next as { value: ConnectResponse };
      if (value.frame.case === "message") seqs.push(...value.frame.value.entries.map((e) => Number(e.seq)));
    }
    return seqs;
  };
  await new Promise((r) => setTimeout(r, 10));
  return { session, take, historyCalls };
}

describe("Session: a slow device costs a bounded queue, and catches up from the log in order", () => {
  it("never queues more than its capacity and delivers every entry once, in order, after draining", async () => {
    const log: Entry[] = [];
    const { core, historyCalls } = fakeCore(log, 16);
    const session = new Session(
      { userId: "u_00000000000000000000000001", deviceId: "dv_00000000000000000000000001", expiresAtMs: 0 },
      core,
    );
    session.start(never());
    await new Promise((r) => setTimeout(r, 10));
    // 5,000 live entries arrive while the device reads nothing.
    let maxQueued = 0;
    for (let seq = 1; seq <= 5000; seq++) {
      const e = entry(seq);
      log.push(e);
      session.deliverEntry(e);
      maxQueued = Math.max(maxQueued, session.outbound.size);
    }
    assert.ok(maxQueued <= 16 + 2, `queue stayed bounded (max ${maxQueued})`);
    // Now the device reads: everything arrives exactly once, in seq order, fetched from the log.
    const seqs: number[] = [];
    const reader = session.outbound.drain();
    while (seqs.length < 5000) {
      const { value } = (await reader.next()) as { value: ConnectResponse };
      if (value.frame.case === "message") seqs.push(...value.frame.value.entries.map((e) => Number(e.seq)));
    }
    assert.deepEqual(
      seqs,
      Array.from({ length: 5000 }, (_, i) => i + 1),
    );
    // The queue held at most 16 frames of 64 entries; everything else came from the log in pages.
    assert.ok(
      historyCalls() >= Math.ceil((5000 - 16 * 64) / 256),
      `the rest came from the log (${historyCalls()} pages)`,
    );
    session.close();
  });

  it("drops duplicates and fills a gap from the log before pushing later entries", async () => {
    const log = [1, 2, 3, 4, 5].map(entry);
    const { session, take } = await openSession(log);
    session.deliverEntry(log[0]!);
    session.deliverEntry(log[0]!);
    session.deliverEntry(log[4]!); // 2..4 missing live: fetched from the log
    await take(5);
    session.deliverEntry(log[2]!);
    const six = entry(6);
    log.push(six);
    session.deliverEntry(six);
    assert.deepEqual(await take(6), [1, 2, 3, 4, 5, 6]);
    session.close();
  });

  it("pushes a live entry that arrives while a catch-up is finishing, whatever the moment", async () => {
    // The catch-up's last read returns, then its promise settles a few microtasks later; a live
    // entry arriving in between found the read still running and was left for the next entry of
    // the conversation (or the next connection). Try every moment of that window.
    for (let delay = 0; delay < 40; delay++) {
      const log = [1, 2, 3].map(entry);
      const { core } = fakeCore(log, 64);
      const history = core.sequencer.getHistory.bind(core.sequencer);
      let armed = true;
      const four = entry(4);
      (core.sequencer as { getHistory: unknown }).getHistory = async (req: {
        afterSeq: bigint;
        limit: number;
      }) => {
        const page = await history(req as never);
        if (armed && Number(req.afterSeq) === 1) {
          armed = false;
          // Entry 4 commits and arrives live `delay` microtasks after this last page is answered.
          let chain = Promise.resolve();
          for (let i = 0; i < delay; i++) chain = chain.then(() => {});
          void chain.then(() => {
            log.push(four);
            session.deliverEntry(four);
          });
        }
        return page;
      };
      const session = new Session(
        { userId: "u_00000000000000000000000001", deviceId: "dv_00000000000000000000000001", expiresAtMs: 0 },
        core,
      );
      session.start(never());
      const reader = session.outbound.drain();
      await new Promise((r) => setTimeout(r, 10));
      session.deliverEntry(log[0]!);
      session.deliverEntry(log[2]!); // 2 missing live: the catch-up reads 2..3, then 4 arrives
      const seqs: number[] = [];
      const deadline = Date.now() + 2000;
      while (seqs.length < 4 && Date.now() < deadline) {
        const next = await Promise.race([
          reader.next(),
          new Promise<undefined>((r) => setTimeout(() => r(undefined), 100)),
        ]);
        if (next === undefined) break;
        const value = (next as { value: ConnectResponse }).value;
        if (value.frame.case === "message") seqs.push(...value.frame.value.entries.map((e) => Number(e.seq)));
      }
      assert.deepEqual(seqs, [1, 2, 3, 4], `entry 4 delivered ${delay} microtasks after the last page`);
      session.close();
    }
  });
});

describe("Session: a live entry that comes ahead of the one before it", () => {
  const turn = () => new Promise<void>((r) => setImmediate(r));

  it("waits for it, and both go out in order without a read of the log (two fanout workers crossed)", async () => {
    const log = [1, 2, 3, 4].map(entry);
    const { session, take, historyCalls } = await openSession(log);
    session.deliverEntry(log[0]!);
    session.deliverEntry(log[2]!);
    session.deliverEntry(log[3]!);
    session.deliverEntry(log[1]!);
    assert.deepEqual(await take(4), [1, 2, 3, 4]);
    // Past the wait: the held entries left with the one they waited for, and no read follows.
    await new Promise((r) => setTimeout(r, 60));
    assert.equal(historyCalls(), 0);
    session.close();
  });

  it("reads the log when the one before it does not come live", async () => {
    const log = [1, 2, 3].map(entry);
    const { session, take, historyCalls } = await openSession(log);
    session.deliverEntry(log[0]!);
    session.deliverEntry(log[2]!); // 2 was committed but never pushed live
    assert.deepEqual(await take(3), [1, 2, 3]);
    assert.equal(historyCalls(), 1);
    session.close();
  });

  it("does not wait when it is far ahead: what is missing will not come live", async () => {
    const log = Array.from({ length: 40 }, (_, i) => entry(i + 1));
    const { session, take, historyCalls } = await openSession(log);
    session.deliverEntry(log[0]!);
    session.deliverEntry(log[39]!);
    // The read starts at once, long before a held entry's wait would end.
    for (let i = 0; i < 5 && historyCalls() === 0; i++) await turn();
    assert.equal(historyCalls(), 1);
    assert.deepEqual(
      await take(40),
      Array.from({ length: 40 }, (_, i) => i + 1),
    );
    session.close();
  });

  /** Waits for `cond`, failing after 5 s. */
  async function until(cond: () => boolean, what: string) {
    const deadline = Date.now() + 5000;
    while (!cond()) {
      if (Date.now() > deadline) assert.fail(`never: ${what}`);
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  /** History reads answered only when released, one release a read, in order. */
  function gate() {
    const waiting: Array<() => void> = [];
    let reads = 0;
    return {
      answer: () => {
        reads++;
        return new Promise<void>((r) => waiting.push(r));
      },
      reads: () => reads,
      release: () => waiting.shift()?.(),
    };
  }

  /**
   * A session over `log` (entries 1..n) that pushed entry 1 live, held entry 3 for 2, which never
   * came, and is now reading the log: the read's page (2..n) is taken and waits for release().
   */
  async function reading(log: Entry[]) {
    const g = gate();
    const opened = await openSession(log, 64, g.answer);
    opened.session.deliverEntry(log[0]!);
    opened.session.deliverEntry(log[2]!);
    await until(() => g.reads() === 1, "the log is read");
    return { ...opened, ...g };
  }

  it("holds one that commits while the log is read, and pushes it after the read's last page without another read", async () => {
    // In a group that keeps moving, an entry commits while a catch-up's read travels; sent back
    // to the log, every stream of the group read again, and again (docs/benchmarks.md, thirtieth pass).
    const log = [1, 2, 3, 4].map(entry);
    const g = await reading(log);
    const { session, take, historyCalls } = g;
    const five = entry(5);
    log.push(five);
    session.deliverEntry(five); // committed after the read took its page (2..4)
    g.release();
    assert.deepEqual(await take(5), [1, 2, 3, 4, 5]);
    await new Promise((r) => setTimeout(r, 60));
    assert.equal(historyCalls(), 1);
    session.close();
  });

  it("reads the log again for what it held when the entries before it never come", async () => {
    const log = [1, 2, 3, 4].map(entry);
    const g = await reading(log);
    const { session, take, historyCalls } = g;
    log.push(entry(5), entry(6));
    session.deliverEntry(log[5]!); // 6 comes live during the read; 5 never does
    g.release();
    await until(() => g.reads() === 2, "the log is read again");
    g.release();
    assert.deepEqual(await take(6), [1, 2, 3, 4, 5, 6]);
    assert.equal(historyCalls(), 2);
    session.close();
  });

  it("reads on at once after the read when one came too far past the log's end to hold", async () => {
    const log = [1, 2, 3, 4].map(entry);
    const g = await reading(log);
    const { session, take, historyCalls } = g;
    for (let seq = 5; seq <= 30; seq++) log.push(entry(seq));
    session.deliverEntry(log[29]!); // 26 past the last entry known
    g.release();
    // The second read starts a few turns after the first ends, not after a held entry's wait.
    for (let i = 0; i < 20 && g.reads() < 2; i++) await turn();
    assert.equal(g.reads(), 2);
    g.release();
    assert.deepEqual(
      await take(30),
      Array.from({ length: 30 }, (_, i) => i + 1),
    );
    assert.equal(historyCalls(), 2);
    session.close();
  });

  it("reads on at once when one too far to hold comes as the read ends, whatever the moment", async () => {
    for (let delay = 0; delay < 40; delay++) {
      const log = [1, 2, 3].map(entry);
      const g = await reading(log);
      const { session, take } = g;
      for (let seq = 4; seq <= 21; seq++) log.push(entry(seq));
      g.release();
      let chain = Promise.resolve();
      for (let i = 0; i < delay; i++) chain = chain.then(() => {});
      await chain;
      session.deliverEntry(log[20]!); // 18 past the last entry the read knew of
      for (let i = 0; i < 50 && g.reads() < 2; i++) await turn();
      assert.equal(g.reads(), 2, `read again at once, ${delay} microtasks after the first read was answered`);
      g.release();
      assert.deepEqual(
        await take(21),
        Array.from({ length: 21 }, (_, i) => i + 1),
      );
      session.close();
    }
  });

  it("reads the log for a live entry the full queue refused, though no other entry follows it", async () => {
    // A queue of one frame, which the stream's first frame (caught up) fills: the entry finds no
    // room while nothing is being read from the log, and no later entry comes to send the stream
    // there.
    const log = [entry(1)];
    const { session, take } = await openSession(log, 1);
    assert.ok(session.outbound.size >= 1, "the stream's first frames fill the queue");
    session.deliverEntry(log[0]!);
    const seqs = await Promise.race([
      take(1),
      new Promise<number[]>((_, reject) => setTimeout(() => reject(new Error("entry 1 never came")), 5000)),
    ]);
    assert.deepEqual(seqs, [1]);
    session.close();
  });
});
