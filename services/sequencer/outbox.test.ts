import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import {
  type BusEvent,
  BusEventSchema,
  EntryCommittedSchema,
} from "../../gen/switchboard/internal/v1/events_pb.js";
import { EntrySchema } from "../../gen/switchboard/v1/entry_pb.js";
import { InProcessBus } from "../bus/in-process.js";
import { createLogger } from "../common/log.js";
import { PublishOutbox } from "./outbox.js";

const log = createLogger({ level: "silent" });

function event(seq: number): BusEvent {
  return create(BusEventSchema, {
    event: {
      case: "entryCommitted",
      value: create(EntryCommittedSchema, {
        entry: create(EntrySchema, { conversationId: "g_x", seq: BigInt(seq) }),
      }),
    },
  });
}

const seqOf = (e: BusEvent) => (e.event.case === "entryCommitted" ? Number(e.event.value.entry?.seq) : -1);

/** A bus that refuses publishes while `down`, like JetStream during an outage. */
class FlakyBus extends InProcessBus {
  down = false;
  readonly accepted: number[] = [];
  override async publishCommitted(events: readonly BusEvent[]): Promise<void> {
    await new Promise((resolve) => setImmediate(resolve));
    if (this.down) throw new Error("injected: no responders");
    this.accepted.push(...events.map(seqOf));
  }
}

async function until(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

describe("PublishOutbox", () => {
  it("holds events through an outage and republishes them in commit order", async () => {
    const bus = new FlakyBus(log);
    const outbox = new PublishOutbox(bus, log, { minDelayMs: 5, maxDelayMs: 20, chunk: 3 });
    outbox.publish([event(1), event(2)]);
    await until(() => bus.accepted.length === 2, "the first publish");

    bus.down = true;
    outbox.publish([event(3), event(4)]);
    await until(() => outbox.size === 2, "the failed publish to wait");
    // While anything waits, newer events queue behind it instead of overtaking it.
    outbox.publish([event(5)]);
    outbox.publish([event(6), event(7), event(8)]);
    assert.equal(outbox.size, 6);
    await new Promise((resolve) => setTimeout(resolve, 60));
    assert.deepEqual(bus.accepted, [1, 2], "nothing gets through while the bus is down");
    assert.ok(outbox.metrics.failures >= 2, "retries kept trying");

    bus.down = false;
    await until(() => outbox.size === 0, "the outbox to drain");
    assert.deepEqual(bus.accepted, [1, 2, 3, 4, 5, 6, 7, 8]);
    assert.equal(outbox.metrics.republished, 6);
    assert.equal(outbox.metrics.dropped, 0);

    // Back to direct publishing.
    outbox.publish([event(9)]);
    await until(() => bus.accepted.length === 9, "a direct publish");
    outbox.close();
  });

  it("gives up the oldest events beyond its bound and counts them", async () => {
    const bus = new FlakyBus(log);
    bus.down = true;
    const outbox = new PublishOutbox(bus, log, { maxEvents: 3, minDelayMs: 5, maxDelayMs: 10 });
    outbox.publish([event(1)]);
    await until(() => outbox.size === 1, "the failed publish to wait");
    outbox.publish([event(2), event(3), event(4), event(5)]);
    assert.equal(outbox.size, 3);
    assert.equal(outbox.metrics.dropped, 2);
    bus.down = false;
    await until(() => outbox.size === 0, "the outbox to drain");
    assert.deepEqual(bus.accepted, [3, 4, 5]);
    outbox.close();
  });

  it("stops retrying when closed", async () => {
    const bus = new FlakyBus(log);
    bus.down = true;
    const outbox = new PublishOutbox(bus, log, { minDelayMs: 5 });
    outbox.publish([event(1)]);
    await until(() => outbox.size === 1, "the failed publish to wait");
    outbox.close();
    const failures = outbox.metrics.failures;
    bus.down = false;
    await new Promise((resolve) => setTimeout(resolve, 40));
    assert.equal(outbox.metrics.failures, failures);
    assert.deepEqual(bus.accepted, []);
    outbox.publish([event(2)]);
    assert.deepEqual(bus.accepted, []);
  });
});
