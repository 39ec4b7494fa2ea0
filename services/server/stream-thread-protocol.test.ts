import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { MessageChannel } from "node:worker_threads";
import { type Batch, Inbox, Outbox, sharedNow } from "./stream-thread-protocol.js";

/** A batch of `n` operations of kind 1 whose ids count up from `first`, posted now. */
function batch(first: number, n: number): Batch {
  const ops = new Float64Array(4 * n);
  for (let i = 0; i < n; i++) ops.set([1, first + i, 0, 0], 4 * i);
  return { type: "batch", ops, args: [], data: new Uint8Array(0), postedAt: sharedNow() };
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
    { sliceMs },
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
      { finished: (b) => finished.push(b.ops[1]!), sliceMs: 2 },
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

  it("tells how long each batch waited before its first operation, behind the batches before it", async () => {
    const waits: Array<[number, number]> = [];
    const inbox = new Inbox(() => spin(1), {
      begun: (b, waitedMs) => waits.push([b.ops[1]!, waitedMs]),
      sliceMs: 5,
    });
    const old = batch(0, 40);
    old.postedAt -= 300; // posted 300 ms ago: it waited in the port that long already
    inbox.push(old); // handled for a slice, the rest later
    // Each of these is posted now, and the last waits behind the old batch's rest and three more.
    for (let i = 1; i <= 4; i++) inbox.push(batch(30 + i * 10, 10));
    while (inbox.waiting > 0) await turn();
    assert.deepEqual(
      waits.map(([first]) => first),
      [0, 40, 50, 60, 70],
      "each batch is begun once, in order, however many slices it takes",
    );
    assert.ok(waits[0]![1] >= 300 && waits[0]![1] < 1000, `the old batch waited ${waits[0]![1]} ms`);
    assert.ok(waits[4]![1] >= 35, `the last batch waited ${waits[4]![1]} ms behind 50 ms of work`);
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

  it("carries a turn's operations across a port as they were given: numbers, arguments and bytes, in order", async () => {
    const { port1, port2 } = new MessageChannel();
    const seen: unknown[][] = [];
    const posted: Batch[] = [];
    const inbox = new Inbox((kind, id, a, b, { data }) => {
      seen.push([
        kind,
        id,
        kind === 2 ? Buffer.from(data.subarray(a as number, (a as number) + b)).toString() : a,
      ]);
    });
    port2.on("message", (msg: Batch) => {
      posted.push(msg);
      inbox.push(msg);
    });
    const outbox = new Outbox((batch, transfer) => port1.postMessage(batch, transfer));
    const headers = ["application/grpc", "Bearer t", null, "10.0.0.1"];
    const trailers = { "grpc-status": "0" };
    outbox.op(1, 7, headers);
    outbox.data(2, 7, Buffer.from("hello"));
    outbox.op(5, 7, 2 ** 40 + 3);
    outbox.data(2, 8, Buffer.from("world"));
    outbox.op(3, 7, trailers);
    outbox.op(4, 8);
    outbox.flush();
    while (seen.length < 6) await turn();
    port1.close();
    assert.deepEqual(seen, [
      [1, 7, headers],
      [2, 7, "hello"],
      [5, 7, 2 ** 40 + 3],
      [2, 8, "world"],
      [3, 7, trailers],
      [4, 8, 0],
    ]);
    // One post, its operations and bytes each one transferable buffer, not values to clone one by one.
    assert.equal(posted.length, 1);
    assert.ok(posted[0]!.ops instanceof Float64Array);
    assert.deepEqual(posted[0]!.args, [headers, trailers]);
  });
});
