import assert from "node:assert/strict";
import * as http2 from "node:http2";
import { after, describe, it } from "node:test";
import type { Worker } from "node:worker_threads";
import { DEVICE_STREAM_HEADERS } from "../../test/helpers/raw-grpc.js";
import { defaultEdgeLimits } from "../common/config.js";
import { moduleWorker, siblingModule } from "../common/module-worker.js";
import {
  FROM_THREAD,
  IN_FLIGHT_BYTES,
  Inbox,
  Outbox,
  type StreamThreadData,
  type ThreadCommand,
  type ThreadEvent,
  TO_THREAD,
} from "./stream-thread-protocol.js";

/**
 * The stream thread (stream-thread.ts) on its own, with this test playing the main thread: it
 * speaks the hand-off's protocol directly, so it can do what the real main thread
 * (stream-threads.ts) never does on purpose, fall behind. stream-threads.test.ts tests the two
 * together.
 */

/** A main thread that reads every stream the thread opens, and says it handled the bytes only when told to. */
async function startThread() {
  const workerData: StreamThreadData = { host: "127.0.0.1", port: 0, limits: defaultEdgeLimits };
  const worker: Worker = moduleWorker(siblingModule(import.meta.url, "stream-thread"), {
    workerData,
    stdin: false,
  });
  const outbox = new Outbox((batch, transfer) => worker.postMessage(batch satisfies ThreadCommand, transfer));
  const bodies = new Map<number, Buffer[]>();
  let received = 0;
  let unconsumed = 0;
  let consuming = false;
  // Every batch handled as it arrives, whatever it takes.
  const inbox = new Inbox(
    (kind, id, a, b, { data }) => {
      if (kind === FROM_THREAD.open) {
        bodies.set(id, []);
        outbox.op(TO_THREAD.resume, id);
      } else if (kind === FROM_THREAD.data) {
        const chunk = Buffer.from(data.buffer, data.byteOffset + (a as number), b);
        bodies.get(id)?.push(Buffer.from(chunk));
        received += chunk.length;
      }
    },
    {
      finished: ({ data }) => {
        unconsumed += data.byteLength;
        if (consuming && unconsumed > 0) {
          outbox.op(TO_THREAD.consumed, 0, unconsumed);
          unconsumed = 0;
        }
      },
      sliceMs: Number.POSITIVE_INFINITY,
    },
  );
  const listening = new Promise<number>((resolve, reject) => {
    worker.once("error", reject);
    worker.on("message", (msg: ThreadEvent) => {
      if (msg.type === "listening") resolve(msg.port);
      else inbox.push(msg);
    });
  });
  const port = await listening;
  return {
    worker,
    url: `http://127.0.0.1:${port}`,
    bodies,
    received: () => received,
    /** From now on, every batch is reported handled as it arrives (and what arrived before too). */
    consume() {
      consuming = true;
      if (unconsumed > 0) outbox.op(TO_THREAD.consumed, 0, unconsumed);
      unconsumed = 0;
    },
  };
}

async function until(predicate: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Resolves once `read()` has not changed for `quietMs`. */
async function settled(read: () => number, quietMs: number): Promise<number> {
  let last = read();
  let since = Date.now();
  for (;;) {
    await new Promise((r) => setTimeout(r, 20));
    const now = read();
    if (now !== last) {
      last = now;
      since = Date.now();
    } else if (Date.now() - since >= quietMs) return now;
  }
}

/** Bytes that say which stream and where they were: each stream's body is checked whole. */
function body(stream: number, bytes: number): Buffer {
  const b = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i += 4) b.writeUInt32BE(((stream << 24) | (i >>> 2)) >>> 0, i);
  return b;
}

describe("the stream thread", () => {
  const cleanups: (() => unknown)[] = [];
  after(async () => {
    for (const c of cleanups) await c();
  });

  it(`stops reading its streams while more than ${IN_FLIGHT_BYTES / 1024 / 1024} MiB it handed over is unhandled, and reads on once it is`, async () => {
    const thread = await startThread();
    cleanups.push(() => thread.worker.terminate());
    const session = http2.connect(thread.url);
    session.on("error", () => {});
    cleanups.push(() => session.destroy());

    // Four devices send 4 MiB each, twice the bound, as fast as their windows let them.
    const STREAMS = 4;
    const PER_STREAM = 4 * 1024 * 1024;
    const CHUNK = 16 * 1024;
    const sent = new Array<number>(STREAMS).fill(0);
    for (let i = 0; i < STREAMS; i++) {
      const req = session.request(DEVICE_STREAM_HEADERS);
      req.on("error", () => {});
      const all = body(i + 1, PER_STREAM);
      void (async () => {
        for (let at = 0; at < PER_STREAM; at += CHUNK) {
          const more = req.write(all.subarray(at, at + CHUNK));
          sent[i] = at + CHUNK;
          if (!more) await new Promise((r) => req.once("drain", r));
        }
        req.end();
      })();
    }

    // Nothing is reported handled: the thread hands over the bound, at most one read past it per
    // stream, and then nothing more, however long the devices keep sending.
    await until(() => thread.received() >= IN_FLIGHT_BYTES, "the bound's worth of bytes");
    const held = await settled(thread.received, 500);
    assert.ok(
      held <= IN_FLIGHT_BYTES + STREAMS * 64 * 1024,
      `the thread handed over ${held} bytes unhandled, past the bound of ${IN_FLIGHT_BYTES}`,
    );
    const total = STREAMS * PER_STREAM;
    assert.ok(
      sent.reduce((a, b) => a + b, 0) < total,
      "the devices were not held back: they wrote everything",
    );

    // Handled: the thread reads on, and every stream's body arrives whole and in order.
    thread.consume();
    await until(() => thread.received() === total, "every byte once the main thread caught up");
    for (let i = 0; i < STREAMS; i++) {
      const got = Buffer.concat(thread.bodies.get(i + 1) ?? []);
      assert.ok(got.equals(body(i + 1, PER_STREAM)), `stream ${i + 1}'s body arrived whole and in order`);
    }
  });
});
