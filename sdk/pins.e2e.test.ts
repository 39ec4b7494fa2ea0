import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { eventually } from "../test/helpers/inbox.js";
import { SdkServerSuite } from "../test/helpers/sdk-devices.js";
import type { IncomingEntry } from "./types.js";

/**
 * client.pins over the stream, end-to-end encrypted clients against a server process: pins go
 * through the outbox, every member's client gets them as entries of kind "pin", and list() is the
 * server's Conversation.pins.
 */
describe("SDK pins", () => {
  const fx = new SdkServerSuite("sb-sdk-pins-");

  it("an admin pins and unpins over the stream; members get pin entries and list the pins", async () => {
    const alice = await fx.devices.register("alice");
    const bob = await fx.devices.register("bob");
    const seen: IncomingEntry[] = [];
    bob.on("entry", (e) => {
      seen.push(e);
    });
    await alice.connect();
    await bob.connect();
    const { conversationId: id } = await alice.createGroup("pinned", [bob.userId]);
    const sent = await alice.send(id, "meet at 6");

    const pinned = await alice.pins.pin(id, sent.seq);
    await eventually(
      () => seen.some((e) => e.seq === pinned.seq),
      () => `bob never got the pin entry: ${seen.map((e) => `${e.seq}:${e.kind}`).join(", ")}`,
    );
    const entry = seen.find((e) => e.seq === pinned.seq)!;
    assert.equal(entry.kind, "pin");
    assert.equal(entry.targetSeq, sent.seq);
    assert.equal(entry.unpin, false);
    assert.equal(entry.senderUserId, alice.userId);
    const pins = await bob.pins.list(id);
    assert.deepEqual(
      pins.map((p) => [p.seq, p.pinSeq, p.pinnedBy]),
      [[sent.seq, pinned.seq, alice.userId]],
    );

    // A member who is no admin is refused, with the server's code, through the outbox too.
    await assert.rejects(bob.pins.pin(id, sent.seq), (err: unknown) => {
      assert.equal(ConnectError.from(err).code, Code.PermissionDenied);
      return true;
    });

    const unpinned = await alice.pins.unpin(id, sent.seq);
    await eventually(
      () => seen.some((e) => e.seq === unpinned.seq),
      () => "bob never got the unpin entry",
    );
    assert.equal(seen.find((e) => e.seq === unpinned.seq)?.unpin, true);
    assert.deepEqual(await bob.pins.list(id), []);
  });
});
