import assert from "node:assert/strict";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { PrivacyAudience, PrivacyRefusalSchema } from "../../gen/switchboard/v1/accounts_pb.js";
import { runCli } from "../helpers/cli.js";
import { outgoingText, type TestDevice, uniqueName } from "../helpers/device.js";
import { rejectsWith } from "../helpers/expect.js";
import { serverFixture } from "../helpers/fixture.js";
import { type Finished, runSwitchboard } from "../helpers/process.js";
import { loggedLine, removeDir } from "../helpers/server.js";

/** Reports one user may make per day on this suite's server (SWITCHBOARD_REPORTS_PER_DAY). */
const REPORTS_PER_DAY = 3;
/** Blocks and unblocks one user may make per hour here (SWITCHBOARD_BLOCK_CHANGES_PER_HOUR). */
const BLOCK_CHANGES_PER_HOUR = 6;

async function connected(device: TestDevice): Promise<void> {
  device.connect();
  await device.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught up");
}

/** A refusal as the caller sees it: code, message and the PrivacyRefusal ids, with user ids blanked. */
async function refusal(promise: Promise<unknown>, ids: readonly string[]) {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof ConnectError, `expected a ConnectError, got ${String(err)}`);
    let message = err.rawMessage;
    for (const id of ids) message = message.replaceAll(id, "<user>");
    const detail = err
      .findDetails(PrivacyRefusalSchema)
      .map((d) => d.userIds.map((u) => (ids.includes(u) ? "<user>" : u)));
    return { code: err.code, message, detail };
  }
  assert.fail("expected a refusal");
}

describe("blocking: direct sends, presence, typing and group adds, against a server process", () => {
  const fx = serverFixture({ SWITCHBOARD_BLOCK_CHANGES_PER_HOUR: String(BLOCK_CHANGES_PER_HOUR) });

  it("refuses a flood of blocks and unblocks with RESOURCE_EXHAUSTED, per user", async () => {
    const [flooder, target, other] = [await fx.user("fa"), await fx.user("ft"), await fx.user("fo")];
    for (let i = 0; i < BLOCK_CHANGES_PER_HOUR; i++) {
      if (i % 2 === 0) await flooder.accounts.blockUser({ userId: target.userId });
      else await flooder.accounts.unblockUser({ userId: target.userId });
    }
    await rejectsWith(
      flooder.accounts.blockUser({ userId: target.userId }),
      Code.ResourceExhausted,
      new RegExp(
        `^blocks and unblocks are limited to ${BLOCK_CHANGES_PER_HOUR} per hour per user; retry in \\d+ ms$`,
      ),
    );
    assert.deepEqual(
      (await flooder.accounts.listBlockedUsers({})).blocked,
      [],
      "the refused block was not made",
    );
    // Someone else's budget is their own.
    await other.accounts.blockUser({ userId: target.userId });
  });

  it("refuses a blocked sender's direct sends without saying why; nothing reaches the blocker; unblock restores", async () => {
    const [alice, bob] = [await fx.user("ba"), await fx.user("bb")];
    const { conversation } = await alice.conversations.openDirect({ peerUserId: bob.userId });
    const id = conversation!.conversationId;
    const before = await alice.gateway.send({ entry: outgoingText(id, "b-1", "before") });

    assert.equal((await bob.accounts.blockUser({ userId: alice.userId })).newlyBlocked, true);
    assert.equal((await bob.accounts.blockUser({ userId: alice.userId })).newlyBlocked, false, "idempotent");

    // Unary: PERMISSION_DENIED, a message that does not say "block".
    await assert.rejects(alice.gateway.send({ entry: outgoingText(id, "b-2", "after") }), (err: unknown) => {
      assert.ok(err instanceof ConnectError);
      assert.equal(err.code, Code.PermissionDenied, `${Code[err.code]}: ${err.rawMessage}`);
      assert.match(err.rawMessage, /^message not accepted/);
      assert.doesNotMatch(err.rawMessage, /block/i);
      return true;
    });
    // On the stream: the same, in band, and the stream goes on.
    await connected(alice);
    alice.sendText(id, "b-3", "after, streamed");
    const refused = await alice.waitFor(
      () => alice.ofCase("sendError").find((e) => e.clientMsgId === "b-3"),
      "refusal of b-3",
    );
    assert.equal(refused.code, Code.PermissionDenied);
    assert.doesNotMatch(refused.message, /block/i);
    assert.equal(
      (await bob.conversations.getHistory({ conversationId: id })).lastSeq,
      before.seq,
      "nothing after the block was stored for the blocker",
    );
    // The blocker still writes to the person blocked (as WhatsApp's "unblock to send" is the app's choice).
    await bob.gateway.send({ entry: outgoingText(id, "b-4", "from bob") });

    assert.equal((await bob.accounts.unblockUser({ userId: alice.userId })).wasBlocked, true);
    assert.equal((await bob.accounts.unblockUser({ userId: alice.userId })).wasBlocked, false);
    alice.sendText(id, "b-5", "after unblock");
    const ack = await alice.waitFor(
      () => alice.ofCase("sendAck").find((a) => a.clientMsgId === "b-5"),
      "ack of b-5",
    );
    assert.equal(ack.seq, before.seq + 2n, "right after bob's");
    const texts = (await bob.conversations.getHistory({ conversationId: id })).entries.flatMap((e) =>
      e.body.case === "message" ? [new TextDecoder().decode(e.body.value.payload)] : [],
    );
    assert.deepEqual(texts, ["before", "from bob", "after unblock"]);
  });

  it("hides the blocker's presence and typing from the blocked user; group messages flow both ways", async () => {
    const [alice, bob, carol] = [await fx.user("pa"), await fx.user("pb"), await fx.user("pc")];
    const { conversation } = await bob.conversations.createGroup({
      title: "shared",
      memberUserIds: [alice.userId, carol.userId],
    });
    const group = conversation!.conversationId;
    await bob.accounts.blockUser({ userId: alice.userId });
    await connected(alice);
    // Makes alice's gateway read bob's list (a refused direct send), so what follows is decided
    // from the cache in arrival order: a frame of bob's that got through would come before carol's.
    const { conversation: direct } = await bob.conversations.openDirect({ peerUserId: alice.userId });
    await rejectsWith(
      alice.gateway.send({ entry: outgoingText(direct!.conversationId, "p-0", "hi") }),
      Code.PermissionDenied,
    );

    alice.write({
      case: "presenceSubscribe",
      value: { subscribeUserIds: [bob.userId, carol.userId], unsubscribeUserIds: [] } as never,
    });
    await alice.waitFor(
      () => alice.ofCase("presence").find((p) => p.userId === carol.userId),
      "carol's presence",
    );
    await connected(bob);
    await connected(carol);
    await alice.waitFor(
      () => alice.ofCase("presence").find((p) => p.userId === carol.userId && p.online),
      "carol online",
    );
    bob.write({ case: "typing", value: { conversationId: group, active: true } as never });
    carol.write({ case: "typing", value: { conversationId: group, active: true } as never });
    await alice.waitFor(() => alice.ofCase("typing").find((t) => t.userId === carol.userId), "carol typing");
    // Bob sees alice's typing in the group they share, not in their direct conversation (where
    // her messages cannot arrive either).
    alice.write({ case: "typing", value: { conversationId: direct!.conversationId, active: true } as never });
    alice.write({ case: "typing", value: { conversationId: group, active: true } as never });
    await bob.waitFor(() => bob.ofCase("typing").find((t) => t.userId === alice.userId), "alice typing");
    assert.deepEqual(
      bob
        .ofCase("typing")
        .filter((t) => t.userId === alice.userId)
        .map((t) => t.conversationId),
      [group],
      "alice's typing in the direct conversation is not shown to bob",
    );
    assert.deepEqual(
      alice.ofCase("presence").filter((p) => p.userId === bob.userId),
      [],
      "no presence (online or last seen) of bob",
    );
    assert.deepEqual(
      alice.ofCase("typing").filter((t) => t.userId === bob.userId),
      [],
      "no typing of bob",
    );

    // In the group they share, messages reach both.
    await bob.gateway.send({ entry: outgoingText(group, "g-1", "from bob") });
    await alice.gateway.send({ entry: outgoingText(group, "g-2", "from alice") });
    await alice.waitFor(() => alice.texts(group).includes("from bob") || undefined, "bob's group message");
    await bob.waitFor(() => bob.texts(group).includes("from alice") || undefined, "alice's group message");

    // Unblocked: bob's typing reaches alice again.
    await bob.accounts.unblockUser({ userId: alice.userId });
    bob.write({ case: "typing", value: { conversationId: group, active: true } as never });
    await alice.waitFor(
      () => alice.ofCase("typing").find((t) => t.userId === bob.userId),
      "bob typing again",
    );
  });

  it("refuses group adds and new direct conversations as a privacy setting would: the attacker cannot tell which", async () => {
    const [mallory, bob, dave, carol] = [
      await fx.user("ma"),
      await fx.user("mb"),
      await fx.user("md"),
      await fx.user("mc"),
    ];
    await bob.accounts.blockUser({ userId: mallory.userId });
    // dave refuses everyone by his settings, bob by a block of mallory.
    await dave.accounts.setPrivacy({
      settings: { groupAdd: PrivacyAudience.NOBODY, directOpen: PrivacyAudience.NOBODY },
    });
    const ids = [bob.userId, dave.userId];

    const byBlock = await refusal(
      mallory.conversations.createGroup({ title: "t", memberUserIds: [bob.userId] }),
      ids,
    );
    const bySetting = await refusal(
      mallory.conversations.createGroup({ title: "t", memberUserIds: [dave.userId] }),
      ids,
    );
    assert.equal(byBlock.code, Code.PermissionDenied);
    assert.deepEqual(byBlock, bySetting, "a block refuses a group add exactly as a setting does");

    const { conversation } = await mallory.conversations.createGroup({
      title: "t",
      memberUserIds: [carol.userId],
    });
    const group = conversation!.conversationId;
    const addByBlock = await refusal(
      mallory.conversations.addMembers({ conversationId: group, userIds: [bob.userId] }),
      ids,
    );
    const addBySetting = await refusal(
      mallory.conversations.addMembers({ conversationId: group, userIds: [dave.userId] }),
      ids,
    );
    assert.deepEqual(addByBlock, addBySetting);
    const { members } = await mallory.conversations.getConversation({ conversationId: group });
    assert.equal(members.length, 2, "bob was not added");

    const openByBlock = await refusal(mallory.conversations.openDirect({ peerUserId: bob.userId }), ids);
    const openBySetting = await refusal(mallory.conversations.openDirect({ peerUserId: dave.userId }), ids);
    assert.equal(openByBlock.code, Code.PermissionDenied);
    assert.deepEqual(
      openByBlock,
      openBySetting,
      "a block refuses a new direct conversation as a setting does",
    );

    // The person blocked cannot list who blocked them: ListBlockedUsers is the caller's own.
    assert.deepEqual((await mallory.accounts.listBlockedUsers({})).blocked, []);

    await bob.accounts.unblockUser({ userId: mallory.userId });
    await mallory.conversations.addMembers({ conversationId: group, userIds: [bob.userId] });
    await mallory.conversations.openDirect({ peerUserId: bob.userId });
  });

  it("syncs blocks to every device of the user; refuses oneself and unknown users precisely", async () => {
    const [alice, bob] = [await fx.user("sa"), await fx.user("sb")];
    const bob2 = fx.track(await bob.link("laptop"));
    await connected(bob2);
    await bob.accounts.blockUser({ userId: alice.userId });
    // The other device is told live, and lists the block.
    await bob2.waitFor(() => bob2.ofCase("blocksChanged")[0], "blocks_changed on the second device");
    const listed = (await bob2.accounts.listBlockedUsers({})).blocked;
    assert.deepEqual(
      listed.map((b) => b.userId),
      [alice.userId],
    );
    assert.ok(listed[0]!.blockedAtMs > 0n);
    // The second device's unblock is the first device's too, and tells it.
    await connected(bob);
    await bob2.accounts.unblockUser({ userId: alice.userId });
    await bob.waitFor(() => bob.ofCase("blocksChanged")[0], "blocks_changed on the first device");
    assert.deepEqual((await bob.accounts.listBlockedUsers({})).blocked, []);

    await rejectsWith(bob.accounts.blockUser({ userId: bob.userId }), Code.InvalidArgument, /yourself/);
    await rejectsWith(
      bob.accounts.blockUser({ userId: "u_00000000000000000000000000" }),
      Code.NotFound,
      /no user/,
    );
    await rejectsWith(bob.accounts.blockUser({ userId: "alice" }), Code.InvalidArgument, /user_id/);
  });
});

/** Runs `switchboard admin ...` as its own process, as an operator would. */
function admin(args: readonly string[]): Promise<Finished> {
  const { SWITCHBOARD_TOKEN_KEY: _ignored, ...inherited } = process.env;
  return runSwitchboard(["admin", ...args], inherited);
}

describe("reports: stored for operators, listed by the admin CLI, rate-limited per reporter", () => {
  const fx = serverFixture({ SWITCHBOARD_REPORTS_PER_DAY: String(REPORTS_PER_DAY) });
  let adminArgs: string[];
  let base = "";
  before(() => {
    adminArgs = ["--url", fx.server.url, "--data-dir", fx.server.dataDir, "--operator", "ops-test"];
  });
  after(async () => {
    if (base !== "") await removeDir(base);
  });

  it("a CLI report with disclosed messages is listed by `switchboard admin reports`, audited, then the account suspended", async () => {
    base = await mkdtemp(join(tmpdir(), "sb-reports-cli-"));
    const cli = (...args: string[]) => runCli(fx.server.url, args, { quietUsage: true });
    const [spammer, victim] = [uniqueName("spam"), uniqueName("vic")];
    const spammerProfile = ["--profile", join(base, "spammer"), "--no-encryption"];
    const victimProfile = ["--profile", join(base, "victim"), "--no-encryption"];
    assert.equal((await cli("register", spammer, ...spammerProfile)).code, 0);
    assert.equal((await cli("register", victim, ...victimProfile)).code, 0);
    for (const text of ["buy now", "cheap pills ✓"]) {
      const sent = await cli("send", victim, text, ...spammerProfile);
      assert.equal(sent.code, 0, sent.err.join("\n"));
    }

    const blocked = await cli("block", spammer, ...victimProfile);
    assert.deepEqual(blocked.out, [`blocked @${spammer}`]);
    // What the spammer's CLI shows: the message was not accepted, not why.
    const refusedSend = await cli("send", victim, "more spam", ...spammerProfile);
    assert.equal(refusedSend.code, 1);
    assert.match(refusedSend.err.join("\n"), /message not accepted/);
    assert.doesNotMatch(refusedSend.err.join("\n"), /block/i);
    const list = await cli("blocked", ...victimProfile);
    assert.equal(list.out.length, 1);
    assert.match(list.out[0]!, new RegExp(`^@${spammer}  u_[0-9a-z]{26}  since `));

    const reported = await cli("report", spammer, "--reason", "spam", "--disclose", "5", ...victimProfile);
    assert.equal(reported.code, 0, reported.err.join("\n"));
    const reportId = /reported @\S+: (rp_\w+)/.exec(reported.out.join("\n"))?.[1];
    assert.ok(reportId, reported.out.join("\n"));

    const spammerId = /(u_[0-9a-z]{26})/.exec(list.out[0]!)![1]!;
    const listed = await admin(["reports", spammer, "--reason", "triage", ...adminArgs]);
    assert.equal(listed.code, 0, listed.stderr);
    const lines = listed.stdout.trim().split("\n");
    assert.match(lines[0]!, new RegExp(`^${reportId} .* reported ${spammerId} by u_\\w+.*: "spam"$`));
    assert.match(lines[1]!, new RegExp(`#\\d+ ${spammerId} .*: "buy now"$`));
    assert.match(lines[2]!, /#\d+ .*: "cheap pills ✓"$/);
    await loggedLine(
      fx.server,
      (l) =>
        l.includes('"action":"listReports"') &&
        l.includes(`"reportedUser":"${spammer}"`) &&
        l.includes('"operator":"ops-test"') &&
        l.includes('"reports":1'),
      "the audit line of the listing",
    );
    // Everyone's reports, as JSON, name the reported user too.
    const all = await admin(["reports", "--json", ...adminArgs]);
    const json = JSON.parse(all.stdout) as { reports: { reportId: string; reportedUserId: string }[] };
    assert.ok(json.reports.some((r) => r.reportId === reportId && r.reportedUserId === spammerId));

    // What the server holds about the victim includes their blocks.
    const exported = await admin(["export", victim, "--json", ...adminArgs]);
    const held = JSON.parse(exported.stdout) as { blocked: { userId: string }[] };
    assert.deepEqual(
      held.blocked.map((b) => b.userId),
      [spammerId],
    );

    const suspended = await admin(["suspend", spammerId, "--reason", reportId, ...adminArgs]);
    assert.equal(suspended.code, 0, suspended.stderr);
    const refusedLogin = await cli("send", victim, "again", ...spammerProfile);
    assert.equal(refusedLogin.code, 1);
    assert.match(refusedLogin.err.join("\n"), /suspended/);
  });

  it("an encrypted conversation's report discloses the plaintexts the reporter's device decrypted", async () => {
    const dir = await mkdtemp(join(tmpdir(), "sb-reports-e2ee-"));
    try {
      const cli = (...args: string[]) => runCli(fx.server.url, args, { quietUsage: true });
      const [sender, receiver] = [uniqueName("es"), uniqueName("er")];
      const senderProfile = ["--profile", join(dir, "sender")];
      const receiverProfile = ["--profile", join(dir, "receiver")];
      assert.equal((await cli("register", sender, ...senderProfile)).code, 0);
      assert.equal((await cli("register", receiver, ...receiverProfile)).code, 0);
      const sent = await cli("send", receiver, "secret offer", ...senderProfile);
      assert.equal(sent.code, 0, sent.err.join("\n"));
      const reported = await cli("report", sender, "--disclose", "3", ...receiverProfile);
      assert.equal(reported.code, 0, reported.err.join("\n"));
      const listed = await admin(["reports", sender, "--json", ...adminArgs]);
      const json = JSON.parse(listed.stdout) as { reports: { messages: { text: string }[] }[] };
      assert.deepEqual(
        json.reports[0]?.messages.map((m) => m.text),
        ["secret offer"],
        "the plaintext, decrypted on the receiver's device",
      );
    } finally {
      await removeDir(dir);
    }
  });

  it("bounds a report's messages and bytes, and refuses a reporter's flood with RESOURCE_EXHAUSTED", async () => {
    const [reporter, target] = [await fx.user("ra"), await fx.user("rt")];
    const message = (text: string) => ({
      conversationId: "d_00000000000000000000000000",
      seq: 1n,
      senderUserId: target.userId,
      sentAtMs: 1n,
      text,
    });
    await rejectsWith(
      reporter.accounts.reportUser({
        reportedUserId: target.userId,
        messages: Array.from({ length: 51 }, () => message("x")),
      }),
      Code.InvalidArgument,
      /at most 50/,
    );
    await rejectsWith(
      reporter.accounts.reportUser({ reportedUserId: target.userId, messages: [message("x".repeat(4097))] }),
      Code.InvalidArgument,
      /4096 bytes/,
    );
    await rejectsWith(
      reporter.accounts.reportUser({
        reportedUserId: target.userId,
        messages: Array.from({ length: 20 }, () => message("é".repeat(2000))),
      }),
      Code.InvalidArgument,
      /65536 bytes of text in all/,
    );
    await rejectsWith(
      reporter.accounts.reportUser({ reportedUserId: reporter.userId }),
      Code.InvalidArgument,
      /yourself/,
    );
    for (let i = 0; i < REPORTS_PER_DAY; i++) {
      const { reportId } = await reporter.accounts.reportUser({
        reportedUserId: target.userId,
        reason: `n${i}`,
      });
      assert.match(reportId, /^rp_/);
    }
    await assert.rejects(reporter.accounts.reportUser({ reportedUserId: target.userId }), (err: unknown) => {
      assert.ok(err instanceof ConnectError);
      assert.equal(err.code, Code.ResourceExhausted, `${Code[err.code]}: ${err.rawMessage}`);
      assert.match(
        err.rawMessage,
        new RegExp(`reports are limited to ${REPORTS_PER_DAY} per day per user; retry in \\d+ ms`),
      );
      return true;
    });
    // Another reporter is not limited by this one's flood.
    const other = await fx.user("ro");
    await other.accounts.reportUser({ reportedUserId: target.userId });
    const listed = await admin(["reports", target.userId, "--json", ...adminArgs]);
    const json = JSON.parse(listed.stdout) as { reports: { reporterUserId: string }[] };
    assert.equal(json.reports.length, REPORTS_PER_DAY + 1);
  });
});
