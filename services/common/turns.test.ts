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
  it("gives each waiter a turn of the loop of its own, in the order asked", async () => {
    const loop = loopTurns();
    const turns = new Turns();
    const seen: Array<{ who: number; turn: number }> = [];
    // Asked for in one task, as every shard's commit answered by one write-thread message is.
    const all = [0, 1, 2, 3].map((who) => turns.take().then(() => seen.push({ who, turn: loop.n })));
    assert.equal(turns.pending, 4);
    await Promise.all(all);
    loop.stop();
    assert.deepEqual(
      seen.map((s) => s.who),
      [0, 1, 2, 3],
    );
    for (let i = 1; i < seen.length; i++) {
      assert.ok(seen[i]!.turn > seen[i - 1]!.turn, `waiter ${i} ran in a later turn than waiter ${i - 1}`);
    }
    assert.equal(turns.pending, 0);
  });

  it("lets timers that came due run between turns", async () => {
    const turns = new Turns();
    const order: string[] = [];
    const first = turns.take().then(async () => {
      order.push("first");
      // Due while the first turn is still busy: it must not wait for the second.
      setTimeout(() => order.push("timer"), 0);
      const until = performance.now() + 5;
      while (performance.now() < until) {}
    });
    const second = turns.take().then(() => order.push("second"));
    await Promise.all([first, second]);
    assert.deepEqual(order, ["first", "timer", "second"]);
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
