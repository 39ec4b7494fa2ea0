import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { eventually, Inbox } from "../test/helpers/inbox.js";
import { SdkServerSuite } from "../test/helpers/sdk-devices.js";
import type { PresenceEvent, ReceiptEvent } from "./types.js";

describe("privacy settings through the SDK (against a server process)", () => {
  const fx = new SdkServerSuite("sb-privacy-sdk-");

  it("last seen and read receipts: set on one device, told to the other, enforced for other users", async () => {
    const alice = await fx.devices.register("alice");
    const bob = await fx.devices.register("bob");
    const bob2 = await fx.devices.link(bob, "bob2");
    const carol = await fx.devices.register("carol");
    for (const c of [alice, bob, bob2, carol]) await c.connect();
    const group = (await alice.createGroup("privacy", [bob.userId, carol.userId])).conversationId;

    const before = await bob.getPrivacy();
    assert.equal(before.lastSeen, "everyone");
    assert.equal(before.readReceipts, true);
    let told = 0;
    bob2.on("privacyChanged", () => told++);
    const after = await bob.setPrivacy({ lastSeen: "nobody", readReceipts: false });
    assert.deepEqual(after, { ...before, lastSeen: "nobody", readReceipts: false });
    await eventually(
      () => told > 0,
      () => "bob's other device is told",
    );
    assert.deepEqual(await bob2.getPrivacy(), after);

    // Presence: carol's arrives, bob's never does (decided in the same pass as carol's).
    const presence: PresenceEvent[] = [];
    alice.on("presence", (p) => presence.push(p));
    alice.subscribePresence([bob.userId, carol.userId]);
    await eventually(
      () => presence.some((p) => p.userId === carol.userId && p.online),
      () => `alice sees carol online: ${JSON.stringify(presence.map((p) => p.userId))}`,
    );
    assert.deepEqual(
      presence.filter((p) => p.userId === bob.userId),
      [],
      "nothing of bob",
    );

    // Read receipts: bob's delivered tick arrives, his read one never does; carol's do.
    const receipts: ReceiptEvent[] = [];
    alice.on("receipt", (r) => receipts.push(r));
    const bobInbox = new Inbox("bob", bob);
    const carolInbox = new Inbox("carol", carol);
    const { seq } = await alice.send(group, "read me");
    await bobInbox.has("read me");
    await carolInbox.has("read me");
    bob.markRead(group, seq);
    await eventually(
      () => receipts.some((r) => r.userId === bob.userId && r.kind === "delivered" && r.upToSeq >= seq),
      () => `bob's delivered receipt: ${JSON.stringify(receipts.map((r) => [r.userId, r.kind]))}`,
    );
    // Bob's own read cursor (never masked for himself) says the server took his read; carol's
    // read comes after it in the conversation, and so would any receipt of bob's.
    await eventually(
      async () =>
        (await bob.getConversation(group)).members.find((m) => m.userId === bob.userId)!.readUpTo >= seq,
      () => "bob's read reached the server",
    );
    carol.markRead(group, seq);
    await eventually(
      () => receipts.some((r) => r.userId === carol.userId && r.kind === "read"),
      () => "carol's read receipt",
    );
    assert.deepEqual(
      receipts.filter((r) => r.userId === bob.userId && r.kind === "read"),
      [],
      "no read receipt of bob",
    );
    // Display name: carol shares only a group with bob, so "contacts" shows her his username.
    await bob.setDisplayName("Bob the Builder");
    await bob.setPrivacy({ profile: "contacts" });
    const [asCarol] = await carol.lookupUsers({ userIds: [bob.userId] });
    assert.equal(asCarol?.displayName, asCarol?.username);
    await carol.openDirect(bob.userId);
    assert.equal((await carol.userByUsername(asCarol!.username)).displayName, "Bob the Builder");

    const { members } = await alice.getConversation(group);
    const bobMember = members.find((m) => m.userId === bob.userId)!;
    assert.equal(bobMember.readUpTo, bobMember.joinedSeq - 1n, "bob's read cursor shows nothing read");
    assert.equal(members.find((m) => m.userId === carol.userId)!.readUpTo, seq);
  });
});
