import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type Batch, Inbox } from "./stream-thread-protocol.js";

/** A batch of `n` operations of kind 1 whose ids count up from `first`. */
function batch(first: number, n: number): Batch {
  const ops: unknown[] = [];
  for (let i = 0; i < n; i++) ops.push(1, first + i, 0, 0);
  return { type: "batch", ops, data: new Uint8Array(0) };
}

/** Busy-waits: an operation that takes this thread's time, as handling a send does. */
function spin(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until);
}

const turn = () => new Promise<void>((resolve) => setImmediate(resolve));

/** An inbox whose every operation takes `opMs` of this thread's time, and a count of those handled. */
function busyInbox(opMs: number, sliceMs: number) {
  const count = { handled: 0 };
  const inbox = new Inbox(
    () => {
      count.handled++;
      spin(opMs);
    },
    undefined,
    sliceMs,
  );
  return { inbox, count };
}

describe("the inbox between the main thread and a stream thread", () => {
  it("handles every operation once, in order across batches, and finishes each batch after its last", async () => {
    const seen: number[] = [];
    const finished: number[] = [];
    const inbox = new Inbox(
      (_kind, id) => {
        seen.push(id);
        spin(0.05);
      },
      (b) => finished.push(b.ops[1] as number),
      2,
    );
    inbox.push(batch(0, 300));
    inbox.push(batch(300, 1));
    inbox.push(batch(301, 200));
    while (inbox.waiting > 0) await turn();
    assert.deepEqual(
      seen,
      Array.from({ length: 501 }, (_, i) => i),
    );
    assert.deepEqual(finished, [0, 300, 301]);
  });

  it("gives the event loop back after a slice, so a timer due meanwhile runs before the backlog is done", async () => {
    const { inbox, count } = busyInbox(0.1, 5);
    let handledWhenTimerRan = -1;
    const timer = new Promise<void>((resolve) =>
      setTimeout(() => {
        handledWhenTimerRan = count.handled;
        resolve();
      }, 1),
    );
    // About 200 ms of work, where a slice is 5 ms.
    for (let i = 0; i < 20; i++) inbox.push(batch(i * 100, 100));
    assert.ok(count.handled < 2000, "the first push handles one slice, not the backlog");
    await timer;
    while (inbox.waiting > 0) await turn();
    assert.equal(count.handled, 2000);
    assert.ok(
      handledWhenTimerRan > 0 && handledWhenTimerRan < 1000,
      `the timer ran after ${handledWhenTimerRan} of 2,000 operations`,
    );
  });

  it("handles all that waits at once when told to drain, and nothing after clear", () => {
    const { inbox, count } = busyInbox(0.05, 1);
    for (let i = 0; i < 10; i++) inbox.push(batch(i * 100, 100));
    assert.ok(count.handled < 1000);
    inbox.drain();
    assert.equal(count.handled, 1000);
    assert.equal(inbox.waiting, 0);

    count.handled = 0;
    for (let i = 0; i < 10; i++) inbox.push(batch(i * 100, 100));
    const before = count.handled;
    inbox.clear();
    inbox.drain();
    assert.equal(count.handled, before);
    assert.equal(inbox.waiting, 0);
  });
});
