import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Code } from "@connectrpc/connect";
import { PrivacyAudience, type PrivacySettings } from "../../gen/switchboard/v1/accounts_pb.js";
import { ReceiptKind } from "../../gen/switchboard/v1/gateway_pb.js";
import { outgoingText, type TestDevice, uniqueName } from "../helpers/device.js";
import { rejectsWith } from "../helpers/expect.js";
import { serverFixture } from "../helpers/fixture.js";
import { WebDevice } from "../helpers/web-client.js";

const { EVERYONE, CONTACTS, NOBODY } = PrivacyAudience;

async function connected(device: TestDevice): Promise<void> {
  device.connect();
  await device.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught up");
}

/** Changes some of a user's privacy settings and waits until the user's stream was told. */
async function setPrivacy(
  device: TestDevice,
  settings: { lastSeen?: PrivacyAudience; readReceipts?: boolean; profile?: PrivacyAudience },
): Promise<PrivacySettings> {
  const before = device.ofCase("privacyChanged").length;
  const r = await device.accounts.setPrivacy({ settings });
  // The broadcast that told this stream also dropped the gateway's cached copy.
  await device.waitFor(() => device.ofCase("privacyChanged").length > before, "privacy_changed");
  return r.settings!;
}

function subscribe(watcher: TestDevice, userIds: string[]): void {
  watcher.write({
    case: "presenceSubscribe",
    value: { subscribeUserIds: userIds, unsubscribeUserIds: [] } as never,
  });
}

function unsubscribe(watcher: TestDevice, userIds: string[]): void {
  watcher.write({
    case: "presenceSubscribe",
    value: { subscribeUserIds: [], unsubscribeUserIds: userIds } as never,
  });
}

/**
 * Everything a watcher's stream carried about a user: presence frames and refusals naming them.
 * Another user's view (with their id blanked) is what tells hidden users apart, if anything does.
 */
function viewOf(watcher: TestDevice, userId: string) {
  return {
    presence: watcher.ofCase("presence").filter((p) => p.userId === userId),
    errors: watcher
      .ofCase("error")
      .filter((e) => e.message.includes(userId))
      .map((e) => ({ ...e, message: e.message.replaceAll(userId, "<user>") })),
  };
}

function presenceOf(watcher: TestDevice, userId: string, online?: boolean) {
  return () =>
    watcher
      .ofCase("presence")
      .find((p) => p.userId === userId && (online === undefined || p.online === online));
}

describe("privacy settings: last seen and read receipts, against a server process", () => {
  const fx = serverFixture();

  it("answers the defaults, changes one setting at a time and refuses an unknown audience", async () => {
    const a = await fx.user("sa");
    await connected(a);
    const { settings } = await a.accounts.getPrivacy({});
    assert.equal(settings?.lastSeen, EVERYONE);
    assert.equal(settings?.readReceipts, true);
    const hidden = await setPrivacy(a, { lastSeen: NOBODY });
    assert.equal(hidden.lastSeen, NOBODY);
    assert.equal(hidden.readReceipts, true, "absent: unchanged");
    const off = await setPrivacy(a, { readReceipts: false });
    assert.equal(off.lastSeen, NOBODY, "unspecified: unchanged");
    assert.equal(off.readReceipts, false);
    await rejectsWith(
      a.accounts.setPrivacy({ settings: { lastSeen: 9 as PrivacyAudience } }),
      Code.InvalidArgument,
      /^settings\.last_seen: not a PrivacyAudience \(9\)/,
    );
    assert.equal(
      (await a.accounts.getPrivacy({})).settings?.lastSeen,
      NOBODY,
      "a refused change stores nothing",
    );
  });

  it("last seen 'nobody' looks to the watcher exactly as a block does; 'everyone' again restores it", async () => {
    const [watcher, blocker, hider, open] = [
      await fx.user("lw"),
      await fx.user("lb"),
      await fx.user("lh"),
      await fx.user("lo"),
    ];
    const direct = new Map<string, string>();
    for (const peer of [blocker, hider, open]) {
      const { conversation } = await watcher.conversations.openDirect({ peerUserId: peer.userId });
      direct.set(peer.userId, conversation!.conversationId);
    }
    await blocker.accounts.blockUser({ userId: watcher.userId });
    await connected(hider);
    await setPrivacy(hider, { lastSeen: NOBODY });
    await hider.disconnect();
    await connected(watcher);
    // The watcher's gateway reads the blocker's list now (a refused send), so what follows is
    // decided from its caches in arrival order: a leaked frame would come before the open user's.
    await rejectsWith(
      watcher.gateway.send({ entry: outgoingText(direct.get(blocker.userId)!, "l-0", "hi") }),
      Code.PermissionDenied,
    );

    subscribe(watcher, [blocker.userId, hider.userId, open.userId]);
    await watcher.waitFor(presenceOf(watcher, open.userId, false), "the open user's presence");
    for (const d of [blocker, hider, open]) await connected(d);
    await watcher.waitFor(presenceOf(watcher, open.userId, true), "the open user online");
    for (const d of [blocker, hider, open]) await d.disconnect();
    await watcher.waitFor(
      () => watcher.ofCase("presence").filter((p) => p.userId === open.userId).length === 3,
      "the open user offline again",
    );
    // Subscribing once more answers the same for both.
    // (One frame, so all three are decided in one pass: a leaked frame would come with the open one.)
    unsubscribe(watcher, [blocker.userId, hider.userId, open.userId]);
    subscribe(watcher, [blocker.userId, hider.userId, open.userId]);
    await watcher.waitFor(
      () => watcher.ofCase("presence").filter((p) => p.userId === open.userId).length === 4,
      "the open user's presence on the new subscription",
    );

    const empty = { presence: [], errors: [] };
    assert.deepEqual(viewOf(watcher, blocker.userId), empty, "nothing of the blocker");
    assert.deepEqual(viewOf(watcher, hider.userId), empty, "nothing of the hidden user");
    assert.deepEqual(watcher.ofCase("error"), [], "no refusal at all");
    assert.ok(
      viewOf(watcher, open.userId).presence.some((p) => p.lastSeenMs > 0n),
      "the open user's last seen",
    );

    // Back to everyone: the hidden user's presence reaches the watcher again.
    await connected(hider);
    await setPrivacy(hider, { lastSeen: EVERYONE });
    await hider.disconnect();
    await connected(hider);
    await watcher.waitFor(presenceOf(watcher, hider.userId, true), "the no longer hidden user online");
  });

  it("'contacts' shows last seen to users with a direct conversation, not to those who share only a group", async () => {
    const [owner, directWatcher, groupWatcher, open] = [
      await fx.user("cw"),
      await fx.user("cd"),
      await fx.user("cg"),
      await fx.user("co"),
    ];
    await owner.conversations.createGroup({
      title: "shared",
      memberUserIds: [directWatcher.userId, groupWatcher.userId, open.userId],
    });
    await directWatcher.conversations.openDirect({ peerUserId: owner.userId });
    await connected(owner);
    assert.equal((await setPrivacy(owner, { lastSeen: CONTACTS })).lastSeen, CONTACTS);
    await owner.disconnect();

    await connected(directWatcher);
    await connected(groupWatcher);
    subscribe(directWatcher, [owner.userId]);
    subscribe(groupWatcher, [owner.userId, open.userId]);
    await directWatcher.waitFor(presenceOf(directWatcher, owner.userId, false), "owner's last seen (direct)");
    await groupWatcher.waitFor(presenceOf(groupWatcher, open.userId, false), "the open user's presence");
    await connected(owner);
    await connected(open);
    await directWatcher.waitFor(presenceOf(directWatcher, owner.userId, true), "owner online (direct)");
    await groupWatcher.waitFor(presenceOf(groupWatcher, open.userId, true), "the open user online");
    assert.deepEqual(
      viewOf(groupWatcher, owner.userId),
      { presence: [], errors: [] },
      "a group is not enough",
    );
  });

  it("is reciprocal: hiding one's own last seen hides everyone's from oneself", async () => {
    const [me, peer, other] = [await fx.user("rm"), await fx.user("rp"), await fx.user("ro")];
    const { conversation } = await me.conversations.openDirect({ peerUserId: peer.userId });
    await other.conversations.openDirect({ peerUserId: peer.userId });
    await connected(me);
    await connected(other);
    subscribe(me, [peer.userId]);
    subscribe(other, [peer.userId]);
    await me.waitFor(presenceOf(me, peer.userId, false), "peer's last seen");
    await other.waitFor(presenceOf(other, peer.userId, false), "peer's last seen (other)");

    await setPrivacy(me, { lastSeen: NOBODY });
    // Reads both settings into the gateway's cache again (GetConversation masks by them).
    await me.conversations.getConversation({ conversationId: conversation!.conversationId });
    const seen = me.ofCase("presence").length;
    await connected(peer);
    // Both watchers are on this gateway and were decided in the same pass.
    await other.waitFor(presenceOf(other, peer.userId, true), "peer online (other)");
    await setPrivacy(me, { lastSeen: EVERYONE });
    await peer.disconnect();
    await me.waitFor(() => me.ofCase("presence").length > seen, "peer's last seen once shown again");
    assert.deepEqual(
      me
        .ofCase("presence")
        .slice(seen)
        .map((p) => p.online),
      [false],
      "peer's going online, while mine was hidden, never reached me",
    );
  });

  it("the web binding leaks nothing either: Subscribe's presence and receipts, reads sent by unary Ack", async () => {
    const watcher = new WebDevice(fx.server.url, "grpc-web");
    await watcher.register(uniqueName("ww"));
    const [hidden, open] = [await fx.user("wh"), await fx.user("wo")];
    await connected(hidden);
    await setPrivacy(hidden, { lastSeen: NOBODY, readReceipts: false });
    await hidden.disconnect();
    for (const peer of [hidden, open]) await watcher.conversations.openDirect({ peerUserId: peer.userId });
    const { conversation } = await watcher.conversations.createGroup({
      title: "web",
      memberUserIds: [hidden.userId, open.userId],
    });
    const group = conversation!.conversationId;
    // Fills the gateway's cache of the members' settings, so what follows is decided in order.
    await watcher.conversations.getConversation({ conversationId: group });

    watcher.subscribe([hidden.userId, open.userId]);
    await watcher.waitFor("caught_up", (fs) => fs.find((f) => f.frame.case === "caughtUp"));
    const ofCase = (c: string, userId: string) =>
      watcher.frames.filter(
        (f) => f.frame.case === c && (f.frame.value as { userId: string }).userId === userId,
      );
    await watcher.waitFor("the open user's presence", () => ofCase("presence", open.userId)[0]);
    await connected(hidden);
    await connected(open);
    await watcher.waitFor("the open user online", () =>
      ofCase("presence", open.userId).find((f) => f.frame.case === "presence" && f.frame.value.online),
    );

    const sent = await watcher.gateway.send({ entry: outgoingText(group, "w-1", "web") });
    await hidden.gateway.ack({ read: [{ conversationId: group, seq: sent.seq }] });
    await open.gateway.ack({ read: [{ conversationId: group, seq: sent.seq }] });
    await watcher.waitFor("the open user's read receipt", () =>
      ofCase("receipt", open.userId).find(
        (f) => f.frame.case === "receipt" && f.frame.value.kind === ReceiptKind.READ,
      ),
    );
    assert.deepEqual(ofCase("presence", hidden.userId), [], "no presence of the hidden user");
    assert.deepEqual(
      ofCase("receipt", hidden.userId).map((f) => f.frame.case === "receipt" && f.frame.value.kind),
      [ReceiptKind.DELIVERED],
      "the hidden user's delivered receipt only",
    );
    assert.equal(watcher.frames.filter((f) => f.frame.case === "error").length, 0);
    watcher.unsubscribe();
  });

  it("profile: the display name reaches whom the setting admits; to others it is the username, as if never set", async () => {
    const [owner, directPeer, groupPeer, stranger] = [
      await fx.user("po"),
      await fx.user("pd"),
      await fx.user("pg"),
      await fx.user("ps"),
    ];
    // A user who never chose a display name: registration made it the username.
    const plain = await fx.user("pp");
    await owner.conversations.createGroup({ title: "shared", memberUserIds: [groupPeer.userId] });
    await owner.conversations.openDirect({ peerUserId: directPeer.userId });
    const { user } = await owner.accounts.setProfile({ displayName: "Owner Ö ✨" });
    assert.equal(user?.displayName, "Owner Ö ✨");
    assert.equal(user?.username, owner.username);

    /** What viewer is told about owner and plain, by id and by username. */
    const shown = async (viewer: TestDevice) => {
      const byId = await viewer.accounts.lookupUsers({ userIds: [owner.userId, plain.userId] });
      const byName = await viewer.accounts.lookupUsers({ usernames: [owner.username] });
      const name = (id: string) => byId.users.find((u) => u.userId === id)?.displayName;
      assert.equal(byName.users[0]?.displayName, name(owner.userId), "by username as by id");
      return { owner: name(owner.userId), plain: name(plain.userId) };
    };
    for (const viewer of [directPeer, groupPeer, stranger]) {
      assert.deepEqual(
        await shown(viewer),
        { owner: "Owner Ö ✨", plain: plain.username },
        "everyone (default)",
      );
    }

    await connected(owner);
    await setPrivacy(owner, { profile: CONTACTS });
    assert.equal((await shown(directPeer)).owner, "Owner Ö ✨", "a direct conversation admits");
    assert.equal((await shown(groupPeer)).owner, owner.username, "a shared group does not");
    assert.equal((await shown(stranger)).owner, owner.username);
    assert.equal(
      (await owner.accounts.lookupUsers({ userIds: [owner.userId] })).users[0]?.displayName,
      "Owner Ö ✨",
    );

    await setPrivacy(owner, { profile: NOBODY });
    const hidden = await directPeer.accounts.lookupUsers({ userIds: [owner.userId, plain.userId] });
    // Hidden and never set look alike: the display name is the username in both.
    const shape = (u: (typeof hidden.users)[number]) => ({ sameAsUsername: u.displayName === u.username });
    assert.deepEqual(hidden.users.map(shape), [{ sameAsUsername: true }, { sameAsUsername: true }]);
    await setPrivacy(owner, { profile: EVERYONE });
    assert.equal((await shown(stranger)).owner, "Owner Ö ✨");
  });

  it("bounds a display name: 1 to 64 characters (at most 256 bytes), no control characters, with precise codes", async () => {
    const u = await fx.user("pb");
    const longest = "😀".repeat(64);
    assert.equal(new TextEncoder().encode(longest).length, 256);
    assert.equal((await u.accounts.setProfile({ displayName: longest })).user?.displayName, longest);
    await rejectsWith(
      u.accounts.setProfile({ displayName: "" }),
      Code.InvalidArgument,
      /^display_name: 1 to 64 characters required$/,
    );
    await rejectsWith(
      u.accounts.setProfile({ displayName: "x".repeat(65) }),
      Code.InvalidArgument,
      /^display_name: 1 to 64 characters required$/,
    );
    await rejectsWith(
      u.accounts.setProfile({ displayName: "a\u0007b" }),
      Code.InvalidArgument,
      /^display_name: control characters are not allowed$/,
    );
    assert.equal(
      (await u.accounts.lookupUsers({ userIds: [u.userId] })).users[0]?.displayName,
      longest,
      "refusals stored nothing",
    );
  });

  it("read receipts off: delivered receipts stay, read ones never reach anyone by stream or GetConversation; reciprocal", async () => {
    const [sender, quiet, reader] = [await fx.user("ts"), await fx.user("tq"), await fx.user("tr")];
    const { conversation } = await sender.conversations.createGroup({
      title: "receipts",
      memberUserIds: [quiet.userId, reader.userId],
    });
    const group = conversation!.conversationId;
    for (const d of [sender, quiet, reader]) await connected(d);
    await setPrivacy(quiet, { readReceipts: false });
    // Fills the caches of the members' settings (GetConversation reads them all).
    await sender.conversations.getConversation({ conversationId: group });
    await quiet.conversations.getConversation({ conversationId: group });

    const sent = await sender.gateway.send({ entry: outgoingText(group, "r-1", "read me") });
    const seq = sent.seq;
    for (const d of [quiet, reader])
      await d.waitFor(() => d.texts(group).includes("read me") || undefined, "the message");
    quiet.write({ case: "read", value: { cursors: [{ conversationId: group, seq }] } as never });
    await sender.waitFor(
      () =>
        sender
          .ofCase("receipt")
          .find((r) => r.userId === quiet.userId && r.kind === ReceiptKind.DELIVERED && r.upToSeq === seq),
      "the quiet member's delivered receipt",
    );
    // The reader reads after the quiet member: its receipt comes after any of the quiet one's.
    reader.write({ case: "read", value: { cursors: [{ conversationId: group, seq }] } as never });
    await sender.waitFor(
      () => sender.ofCase("receipt").find((r) => r.userId === reader.userId && r.kind === ReceiptKind.READ),
      "the reader's read receipt",
    );
    assert.deepEqual(
      sender.ofCase("receipt").filter((r) => r.userId === quiet.userId && r.kind === ReceiptKind.READ),
      [],
      "no read receipt of the quiet member on the stream",
    );

    // Unary: the quiet member's read cursor shows as a member who read nothing since joining.
    const seenBySender = await sender.conversations.getConversation({ conversationId: group });
    const member = (view: typeof seenBySender, id: string) => view.members.find((m) => m.userId === id)!;
    const q = member(seenBySender, quiet.userId);
    assert.equal(q.readUpTo, q.joinedSeq - 1n, "the quiet member's read cursor is masked");
    assert.equal(q.deliveredUpTo, seq, "delivered stays");
    assert.equal(member(seenBySender, reader.userId).readUpTo, seq, "others' read cursors show");

    // Reciprocal: the quiet member sees no one's read cursor or read receipt either.
    const seenByQuiet = await quiet.conversations.getConversation({ conversationId: group });
    const r = member(seenByQuiet, reader.userId);
    assert.equal(r.readUpTo, r.joinedSeq - 1n, "the reader's cursor is masked for the quiet member");
    assert.equal(member(seenByQuiet, quiet.userId).readUpTo, seq, "one's own read cursor shows");
    const own = await quiet.gateway.send({ entry: outgoingText(group, "r-2", "from quiet") });
    await reader.waitFor(() => reader.texts(group).includes("from quiet") || undefined, "quiet's message");
    reader.write({ case: "read", value: { cursors: [{ conversationId: group, seq: own.seq }] } as never });
    await quiet.waitFor(
      () =>
        quiet
          .ofCase("receipt")
          .find(
            (x) => x.userId === reader.userId && x.kind === ReceiptKind.DELIVERED && x.upToSeq === own.seq,
          ),
      "the reader's delivered receipt",
    );
    // Turned back on, the next read receipt reaches it: nothing before it did.
    await setPrivacy(quiet, { readReceipts: true });
    await quiet.conversations.getConversation({ conversationId: group });
    const next = await quiet.gateway.send({ entry: outgoingText(group, "r-3", "again") });
    await reader.waitFor(() => reader.texts(group).includes("again") || undefined, "quiet's second message");
    reader.write({ case: "read", value: { cursors: [{ conversationId: group, seq: next.seq }] } as never });
    await quiet.waitFor(
      () => quiet.ofCase("receipt").find((x) => x.userId === reader.userId && x.kind === ReceiptKind.READ),
      "the reader's read receipt once on",
    );
    assert.deepEqual(
      quiet
        .ofCase("receipt")
        .filter((x) => x.kind === ReceiptKind.READ)
        .map((x) => x.upToSeq),
      [next.seq],
      "the read receipt while off never arrived",
    );
  });
});
