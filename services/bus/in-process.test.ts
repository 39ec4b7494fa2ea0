import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { turnMarker } from "../../test/helpers/turns.js";
import { createLogger } from "../common/log.js";
import { committed, runBusConformance } from "./conformance.js";
import { DirectDelivery, InProcessBus } from "./in-process.js";

const log = createLogger({ level: "silent" });

runBusConformance(
  "in-process",
  async () => {
    const bus = new InProcessBus(log);
    return { bus, delivery: new DirectDelivery(), settle: async () => {}, close: () => bus.close() };
  },
  { redeliversOnReject: false },
);

describe("in-process bus: a backlog of committed events", () => {
  it("goes to the consumer 256 events at a time, in order, with a turn of the event loop between batches", async () => {
    const bus = new InProcessBus(log);
    const turned = turnMarker();
    const batches: Array<{ seqs: number[]; turned: boolean }> = [];
    let done!: () => void;
    const all = new Promise<void>((resolve) => (done = resolve));
    bus.consumeCommitted(async (events) => {
      const seqs = events.map((e) =>
        e.event.case === "entryCommitted" ? Number(e.event.value.entry?.seq) : 0,
      );
      batches.push({ seqs, turned: turned() });
      if (seqs.at(-1) === 1000) done();
    });
    // A commit's events, queued while nothing drained them: one publish of 1,000.
    await bus.publishCommitted(Array.from({ length: 1000 }, (_, i) => committed("g_backlog", i + 1)));
    await all;
    assert.deepEqual(
      batches.map((b) => b.seqs.length),
      [256, 256, 256, 232],
    );
    assert.deepEqual(
      batches.flatMap((b) => b.seqs),
      Array.from({ length: 1000 }, (_, i) => i + 1),
      "in publish order",
    );
    assert.deepEqual(
      batches.slice(1).map((b) => b.turned),
      [true, true, true],
      "each batch after the first starts in a new event-loop task",
    );
    await bus.close();
  });
});
