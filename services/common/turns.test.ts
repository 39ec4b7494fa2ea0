import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Turns } from "./turns.js";

/**
 * Counts turns of the event loop: runs once in every check phase while `stop` is unset, and a
 * callback sees in `n` the turn it runs in.
 */
function loopTurns(): { readonly n: number; stop(): void } {
  let n = 0;
  let stopped = false;
  const spin = () => {
    n++;
    if (!stopped) setImmediate(spin);
  };
  setImmediate(spin);
  return {
    get n() {
      return n;
    },
    stop: () => {
      stopped = true;
    },
  };
}

describe("Turns", () => {
  it("gives each waiter a task of its own, in the order asked, and cheap ones the same turn of the loop", async () => {
    const loop = loopTurns();
    const turns = new Turns();
    const seen: Array<{ who: number; turn: number; chainDone: boolean }> = [];
    let chainDone = false;
    // Asked for in one task, as every shard's commit answered by one write-thread message is.
    const all = [0, 1, 2, 3].map((who) =>
      turns.take().then(async () => {
        seen.push({ who, turn: loop.n, chainDone });
        if (who === 0) {
          // What a turn sets off runs in its microtasks: all of it before the next turn.
          for (let i = 0; i < 50; i++) await Promise.resolve();
          chainDone = true;
        }
      }),
    );
    assert.equal(turns.pending, 4);
    await Promise.all(all);
    loop.stop();
    assert.deepEqual(
      seen.map((s) => s.who),
      [0, 1, 2, 3],
    );
    assert.equal(seen[1]!.chainDone, true, "the first turn's microtasks ran before the second turn");
    // A turn of the loop at 10,000 devices reads thousands of sockets: one waiter a turn of the
    // loop let the reads outrun the answers.
    assert.deepEqual(
      seen.map((s) => s.turn),
      [seen[0]!.turn, seen[0]!.turn, seen[0]!.turn, seen[0]!.turn],
      "cheap turns share a turn of the loop",
    );
    assert.equal(turns.pending, 0);
  });

  it("lets the loop through to its timers once a slice has run its time", async () => {
    const turns = new Turns(5);
    const order: string[] = [];
    const busy = (ms: number) => {
      const until = performance.now() + ms;
      while (performance.now() < until) {}
    };
    const first = turns.take().then(() => {
      order.push("first");
      // Due while the slice is still busy: it must not wait for the turns behind.
      setTimeout(() => order.push("timer"), 0);
      busy(3);
    });
    const second = turns.take().then(() => {
      order.push("second");
      busy(3);
    });
    const third = turns.take().then(() => order.push("third"));
    await Promise.all([first, second, third]);
    assert.deepEqual(order, ["first", "second", "timer", "third"]);
  });

  it("drops the turns it gave while the queue never empties", async () => {
    const turns = new Turns();
    const slots = () => (turns as unknown as { waiting: unknown[] }).waiting.length;
    let given = 0;
    let most = 0;
    // Two waiters, and each turn asks for one more before it ends: the queue never empties
    // for 5,000 turns, as under steady load.
    const ask = (): Promise<void> =>
      turns.take().then(() => {
        given++;
        most = Math.max(most, slots());
        if (given < 5_000) void ask();
      });
    void ask();
    void ask();
    while (given < 5_001) await new Promise((r) => setImmediate(r));
    assert.equal(turns.pending, 0);
    assert.ok(most <= 2_050, `at most about 2,048 slots kept, not one per turn given (${most})`);
  });
});
