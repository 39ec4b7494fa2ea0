import assert from "node:assert/strict";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { PrivacyAudience, PrivacyRefusalSchema } from "../../gen/switchboard/v1/accounts_pb.js";
import { runCli } from "../helpers/cli.js";
import { outgoingText, TestDevice, uniqueName } from "../helpers/device.js";
import { rejectsWith } from "../helpers/expect.js";
import { serverFixture } from "../helpers/fixture.js";
import { loggedLine, removeDir, type ServerProcess, startServerProcess } from "../helpers/server.js";

const { EVERYONE, CONTACTS, NOBODY } = PrivacyAudience;

/** Sets some of a user's privacy settings; the others are left unspecified (unchanged). */
async function setPrivacy(
  device: TestDevice,
  settings: { groupAdd?: PrivacyAudience; directOpen?: PrivacyAudience },
) {
  return (await device.accounts.setPrivacy({ settings })).settings;
}

/** Asserts a consent refusal: PERMISSION_DENIED naming exactly these users, in a PrivacyRefusal. */
async function refusedFor(promise: Promise<unknown>, userIds: string[], pattern: RegExp): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof ConnectError, `expected a ConnectError, got ${String(err)}`);
    assert.equal(err.code, Code.PermissionDenied, `${Code[err.code]}: ${err.rawMessage}`);
    assert.match(err.rawMessage, pattern);
    for (const id of userIds) assert.ok(err.rawMessage.includes(id), `${err.rawMessage} names ${id}`);
    assert.deepEqual(
      err.findDetails(PrivacyRefusalSchema).map((d) => d.userIds),
      [userIds],
    );
    return true;
  });
}

describe("consent: who may add a user to groups or start a direct conversation", () => {
  const fx = serverFixture();

  it("answers the defaults (everyone) and changes one setting at a time", async () => {
    const a = await fx.user("pa");
    const { settings } = await a.accounts.getPrivacy({});
    assert.equal(settings?.groupAdd, EVERYONE);
    assert.equal(settings?.directOpen, EVERYONE);
    const afterGroup = await setPrivacy(a, { groupAdd: NOBODY });
    assert.equal(afterGroup?.groupAdd, NOBODY);
    assert.equal(afterGroup?.directOpen, EVERYONE, "an unspecified setting keeps its value");
    const afterDirect = await setPrivacy(a, { directOpen: CONTACTS });
    assert.equal(afterDirect?.groupAdd, NOBODY);
    assert.equal(afterDirect?.directOpen, CONTACTS);
    await rejectsWith(
      a.accounts.setPrivacy({ settings: { groupAdd: 9 as PrivacyAudience } }),
      Code.InvalidArgument,
      /group_add/,
    );
    const now = (await a.accounts.getPrivacy({})).settings;
    assert.equal(now?.groupAdd, NOBODY, "a refused change stores nothing");
    assert.equal(now?.directOpen, CONTACTS);
  });

  it("refuses a whole CreateGroup or AddMembers when one user does not accept group adds", async () => {
    const [alice, bob, carol, dave] = [
      await fx.user("ga"),
      await fx.user("gb"),
      await fx.user("gc"),
      await fx.user("gd"),
    ];
    await setPrivacy(bob, { groupAdd: NOBODY });

    await refusedFor(
      alice.conversations.createGroup({ title: "t", memberUserIds: [carol.userId, bob.userId] }),
      [bob.userId],
      /does not accept group invitations from you/,
    );
    const listed = await alice.conversations.listConversations({});
    assert.equal(listed.conversations.length, 0, "the refused group was not created");

    const { conversation } = await alice.conversations.createGroup({
      title: "t",
      memberUserIds: [carol.userId],
    });
    const id = conversation!.conversationId;
    await refusedFor(
      alice.conversations.addMembers({ conversationId: id, userIds: [dave.userId, bob.userId] }),
      [bob.userId],
      /nobody was added/,
    );
    const { members } = await alice.conversations.getConversation({ conversationId: id });
    assert.deepEqual(
      members.map((m) => m.userId).sort(),
      [alice.userId, carol.userId].sort(),
      "dave was not added either",
    );

    // The allowed path: dave alone, then bob once he accepts adds from everyone.
    const added = await alice.conversations.addMembers({ conversationId: id, userIds: [dave.userId] });
    assert.equal(added.entry?.body.case, "membership");
    await setPrivacy(bob, { groupAdd: EVERYONE });
    await alice.conversations.addMembers({ conversationId: id, userIds: [bob.userId] });
    const after = await alice.conversations.getConversation({ conversationId: id });
    assert.equal(after.members.length, 4);
    await loggedLine(
      fx.server,
      (line) => line.includes('"refusal":"consent_group_add"'),
      "consent_group_add",
    );
  });

  it("admits group adds from contacts only: users who share a conversation with the user", async () => {
    const [alice, bob, stranger] = [await fx.user("ca"), await fx.user("cb"), await fx.user("cs")];
    await setPrivacy(bob, { groupAdd: CONTACTS });
    await refusedFor(
      stranger.conversations.createGroup({ title: "spam", memberUserIds: [bob.userId] }),
      [bob.userId],
      /group invitations/,
    );
    await refusedFor(
      alice.conversations.createGroup({ title: "t", memberUserIds: [bob.userId] }),
      [bob.userId],
      /group invitations/,
    );
    // A direct conversation makes alice a contact of bob's.
    await alice.conversations.openDirect({ peerUserId: bob.userId });
    const { conversation } = await alice.conversations.createGroup({
      title: "t",
      memberUserIds: [bob.userId],
    });
    assert.equal(conversation?.memberCount, 2);
  });

  it("leaves existing members alone and answers non-admins as before, without reading settings", async () => {
    const [alice, bob, carol] = [await fx.user("ea"), await fx.user("eb"), await fx.user("ec")];
    const { conversation } = await alice.conversations.createGroup({
      title: "t",
      memberUserIds: [bob.userId],
    });
    const id = conversation!.conversationId;
    await setPrivacy(bob, { groupAdd: NOBODY });
    await setPrivacy(carol, { groupAdd: NOBODY });
    // Re-adding a member is a no-op, not a consent question.
    const again = await alice.conversations.addMembers({ conversationId: id, userIds: [bob.userId] });
    assert.equal(again.entry, undefined);
    // bob is not an admin: he gets the admin rule, not carol's setting.
    await rejectsWith(
      bob.conversations.addMembers({ conversationId: id, userIds: [carol.userId] }),
      Code.PermissionDenied,
      /only group admins/,
    );
    // carol is no member: she gets one answer whether or not the user she adds accepts adds.
    const outsider = await fx.user("eo");
    const answer = async (userId: string) => {
      const err = await carol.conversations.addMembers({ conversationId: id, userIds: [userId] }).then(
        () => assert.fail("a non-member added someone"),
        (e: unknown) => ConnectError.from(e),
      );
      return { code: err.code, message: err.rawMessage };
    };
    const refusing = await answer(bob.userId);
    assert.deepEqual(refusing, await answer(outsider.userId));
    assert.doesNotMatch(refusing.message, /invitations/);
  });

  it("refuses a new direct conversation, but never an existing one, which stays usable", async () => {
    const [alice, bob, stranger] = [await fx.user("da"), await fx.user("db"), await fx.user("ds")];
    const before = await alice.conversations.openDirect({ peerUserId: bob.userId });
    const id = before.conversation!.conversationId;
    await setPrivacy(bob, { directOpen: NOBODY });

    await refusedFor(
      stranger.conversations.openDirect({ peerUserId: bob.userId }),
      [bob.userId],
      /does not accept new direct conversations from you/,
    );
    const strangers = await stranger.conversations.listConversations({});
    assert.equal(strangers.conversations.length, 0, "nothing was created");

    const reopened = await alice.conversations.openDirect({ peerUserId: bob.userId });
    assert.equal(reopened.conversation?.conversationId, id);
    assert.equal(reopened.conversation?.peerUserId, bob.userId);
    const sent = await alice.gateway.send({ entry: outgoingText(id, "c1", "still here") });
    assert.equal(sent.seq, 2n);
    // bob's own direction is not governed by his setting.
    const back = await bob.conversations.openDirect({ peerUserId: alice.userId });
    assert.equal(back.conversation?.conversationId, id);
  });

  it("admits a new direct conversation from contacts: users who share a group", async () => {
    const [bob, member, stranger] = [await fx.user("xb"), await fx.user("xm"), await fx.user("xs")];
    await setPrivacy(bob, { directOpen: CONTACTS });
    await member.conversations.createGroup({ title: "club", memberUserIds: [bob.userId] });
    const opened = await member.conversations.openDirect({ peerUserId: bob.userId });
    assert.equal(opened.conversation?.peerUserId, bob.userId);
    await refusedFor(
      stranger.conversations.openDirect({ peerUserId: bob.userId }),
      [bob.userId],
      /direct conversations/,
    );
  });
});

describe("consent with server-wide defaults set by the operator", () => {
  const fx = serverFixture({ SWITCHBOARD_PRIVACY_GROUP_ADD_DEFAULT: "contacts" });

  it("applies the default to users who never chose, and a user's own choice over it", async () => {
    const [alice, bob, carol] = [await fx.user("oa"), await fx.user("ob"), await fx.user("oc")];
    const { settings } = await bob.accounts.getPrivacy({});
    assert.equal(settings?.groupAdd, CONTACTS);
    assert.equal(settings?.directOpen, EVERYONE);
    await refusedFor(
      alice.conversations.createGroup({ title: "t", memberUserIds: [bob.userId] }),
      [bob.userId],
      /group invitations/,
    );
    await setPrivacy(carol, { groupAdd: EVERYONE });
    const { conversation } = await alice.conversations.createGroup({
      title: "t",
      memberUserIds: [carol.userId],
    });
    assert.equal(conversation?.memberCount, 2);
  });
});

describe("switchboard privacy (the CLI)", () => {
  const fx = serverFixture();
  let base = "";
  after(async () => {
    if (base !== "") await removeDir(base);
  });

  /** Runs `switchboard ...args` in this process against the test server. */
  const cli = (...args: string[]) =>
    // Usage errors come back as the thrown CommanderError, not as noise on the test's stderr.
    runCli(fx.server.url, args, { quietUsage: true });

  it("shows and changes the settings, refuses an unknown audience, and the refusal reaches others", async () => {
    base = await mkdtemp(join(tmpdir(), "sb-consent-cli-"));
    const [bob, alice] = [uniqueName("pb"), uniqueName("pa")];
    const bobProfile = ["--profile", join(base, "bob"), "--no-encryption"];
    const aliceProfile = ["--profile", join(base, "alice"), "--no-encryption"];
    assert.equal((await cli("register", bob, ...bobProfile)).code, 0);
    assert.equal((await cli("register", alice, ...aliceProfile)).code, 0);

    const shown = await cli("privacy", ...bobProfile);
    assert.deepEqual(shown.out, [
      "groups: everyone",
      "direct: everyone",
      "last seen: everyone",
      "read receipts: on",
      "name visible to: everyone",
    ]);
    const changed = await cli("privacy", "--groups", "nobody", ...bobProfile);
    assert.equal(changed.code, 0, changed.err.join("\n"));
    assert.deepEqual(changed.out, [
      "groups: nobody",
      "direct: everyone",
      "last seen: everyone",
      "read receipts: on",
      "name visible to: everyone",
    ]);
    const both = await cli("privacy", "--direct", "contacts", ...bobProfile);
    assert.deepEqual(both.out, [
      "groups: nobody",
      "direct: contacts",
      "last seen: everyone",
      "read receipts: on",
      "name visible to: everyone",
    ]);
    const hidden = await cli("privacy", "--last-seen", "nobody", "--read-receipts", "off", ...bobProfile);
    assert.deepEqual(hidden.out, [
      "groups: nobody",
      "direct: contacts",
      "last seen: nobody",
      "read receipts: off",
      "name visible to: everyone",
    ]);

    await assert.rejects(cli("privacy", "--direct", "friends", ...bobProfile), /everyone, contacts, nobody/);
    await assert.rejects(cli("privacy", "--read-receipts", "maybe", ...bobProfile), /expected on or off/);
    const named = await cli(
      "privacy",
      "--display-name",
      "Bob B",
      "--name-visible-to",
      "contacts",
      ...bobProfile,
    );
    assert.equal(named.code, 0, named.err.join("\n"));
    assert.deepEqual(named.out, [
      "display name: Bob B",
      "groups: nobody",
      "direct: contacts",
      "last seen: nobody",
      "read receipts: off",
      "name visible to: contacts",
    ]);
    const tooLong = await cli("privacy", "--display-name", "b".repeat(65), ...bobProfile);
    assert.equal(tooLong.code, 1);
    assert.match(tooLong.err.join("\n"), /display_name: 1 to 64 characters required/);

    const refused = await cli("group", "create", "t", bob, ...aliceProfile);
    assert.equal(refused.code, 1);
    assert.match(refused.err.join("\n"), /does not accept group invitations from you/);
  });
});

describe("consent settings across a server restart", () => {
  let server: ServerProcess | undefined;
  const devices: TestDevice[] = [];
  after(async () => {
    await Promise.all(devices.map((d) => d.close()));
    if (server !== undefined) {
      await server.stop();
      await removeDir(server.dataDir);
    }
  });

  it("keeps each user's settings and keeps enforcing them", async () => {
    server = await startServerProcess();
    const bob = await TestDevice.register(server.url, uniqueName("rb"));
    const alice = await TestDevice.register(server.url, uniqueName("ra"));
    devices.push(bob, alice);
    await setPrivacy(bob, { groupAdd: NOBODY, directOpen: CONTACTS });

    assert.equal(await server.stop(), 0);
    const dataDir = server.dataDir;
    server = await startServerProcess({ dataDir });
    // The same credentials on the restarted server (a new port).
    const again = (d: TestDevice) => new TestDevice(server!.url, d.userId, d.deviceId, d.secret, d.username);
    const [bob2, alice2] = [again(bob), again(alice)];
    devices.push(bob2, alice2);
    await bob2.login();
    await alice2.login();

    const { settings } = await bob2.accounts.getPrivacy({});
    assert.equal(settings?.groupAdd, NOBODY);
    assert.equal(settings?.directOpen, CONTACTS);
    await refusedFor(
      alice2.conversations.createGroup({ title: "t", memberUserIds: [bob2.userId] }),
      [bob2.userId],
      /group invitations/,
    );
    await refusedFor(
      alice2.conversations.openDirect({ peerUserId: bob2.userId }),
      [bob2.userId],
      /direct conversations/,
    );
  });
});
