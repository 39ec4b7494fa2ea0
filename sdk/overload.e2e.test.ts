import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { eventually } from "../test/helpers/inbox.js";
import { SdkServerSuite } from "../test/helpers/sdk-devices.js";
import type { IncomingEntry } from "./index.js";

/**
 * A server past its capacity pushes senders back (UNAVAILABLE "server overloaded" with a retry
 * hint, services/gateway/admission.ts). The SDK retries each refused send after its hint, holds
 * that conversation's later sends behind it, and halves its window: every message arrives once,
 * in the order the app sent it, on the sender and on the peer.
 */
describe("SDK sends under server push-back", () => {
  const fx = new SdkServerSuite("sb-sdk-overload-", {
    // Two sends in flight in the whole gateway: a burst of 120 must be pushed back.
    SWITCHBOARD_GATEWAY_SENDS_IN_FLIGHT: "2",
    SWITCHBOARD_SENDS_PER_SECOND: "10000",
    SWITCHBOARD_SEND_BURST: "10000",
  });

  it("keeps the app's order through refusals and retries", async () => {
    const alice = await fx.devices.register("push");
    const bob = await fx.devices.register("back");
    const { conversationId } = await alice.openDirect(bob.userId);
    const seen = { alice: [] as IncomingEntry[], bob: [] as IncomingEntry[] };
    const refused: string[] = [];
    alice.on("entry", (e) => seen.alice.push(e));
    bob.on("entry", (e) => seen.bob.push(e));
    alice.on("sendFailed", (f) => refused.push(f.clientMsgId));
    await Promise.all([alice.connect(), bob.connect()]);

    const total = 120;
    const sent = await Promise.all(
      Array.from({ length: total }, (_, i) => alice.send(conversationId, `m${String(i).padStart(3, "0")}`)),
    );
    assert.deepEqual(refused, [], "no send failed for good");
    const seqs = sent.map((r) => r.seq);
    assert.deepEqual(
      seqs,
      [...seqs].sort((x, y) => (x < y ? -1 : 1)),
      "the server gave the sends seqs in the order the app made them",
    );
    const texts = (list: IncomingEntry[]) =>
      list
        .filter((e) => e.conversationId === conversationId && e.kind === "message")
        .map((e) => new TextDecoder().decode(e.payload ?? new Uint8Array()));
    const expected = Array.from({ length: total }, (_, i) => `m${String(i).padStart(3, "0")}`);
    await eventually(
      () => texts(seen.bob).length === total && texts(seen.alice).length === total,
      () => `bob has ${texts(seen.bob).length}, alice ${texts(seen.alice).length}`,
    );
    assert.deepEqual(texts(seen.bob), expected);
    assert.deepEqual(texts(seen.alice), expected, "the sender files its own, in order, once");
  });
});
