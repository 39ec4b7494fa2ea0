import assert from "node:assert/strict";
import { before, describe, it } from "node:test";
import { Code } from "@connectrpc/connect";
import { ConversationKind } from "../../gen/switchboard/v1/conversations_pb.js";
import { TestDevice, uniqueName } from "../helpers/device.js";
import { rejectsWith } from "../helpers/expect.js";
import { serverFixture } from "../helpers/fixture.js";
import { type Finished, runSwitchboard } from "../helpers/process.js";
import { loggedLine } from "../helpers/server.js";

const _root = new URL("../../", import.meta.url).pathname;

/** Runs `switchboard admin ...` as its own process, as an operator would. */
function cli(args: readonly string[]): Promise<Finished> {
  const { SWITCHBOARD_TOKEN_KEY: _ignored, ...inherited } = process.env;
  return runSwitchboard(["admin", ...args], inherited);
}

async function connected(device: TestDevice): Promise<void> {
  device.connect();
  await device.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught up");
}

/** Sends a plaintext message on the device's open stream and waits for its ack. */
async function send(device: TestDevice, conversationId: string, text: string): Promise<void> {
  const id = `m-${uniqueName("x")}`;
  device.sendText(conversationId, id, text);
  await device.waitFor(
    () => device.ofCase("sendAck").some((a) => a.clientMsgId === id) || undefined,
    `ack of ${text}`,
  );
}

describe("switchboard admin: a user's account and data, against a running server", () => {
  const fx = serverFixture();
  let args: string[];
  before(() => {
    args = ["--url", fx.server.url, "--data-dir", fx.server.dataDir, "--operator", "ops-test"];
  });

  /** Waits for the audit line of an action that matches every fragment. */
  const audited = (action: string, ...fragments: string[]) =>
    loggedLine(
      fx.server,
      (l) => l.includes(`"action":"${action}"`) && fragments.every((f) => l.includes(f)),
      `audit line ${action} ${fragments.join(" ")}`,
    );

  it("suspend closes the user's streams and refuses tokens, keeps everything; unsuspend lifts it; both audited", async () => {
    const a = await fx.user("sus_a");
    const laptop = fx.track(await a.link("laptop"));
    await connected(a);

    const out = await cli(["suspend", a.username, "--reason", "spam reports", ...args]);
    assert.equal(out.code, 0, out.stderr);
    assert.match(out.stdout, new RegExp(`suspended @${a.username} \\(${a.userId}\\) at .*2 device`));
    const ended = await a.ended();
    assert.equal(ended?.code, Code.Unauthenticated);
    await rejectsWith(a.login(), Code.PermissionDenied, /account suspended by an operator/);
    await rejectsWith(laptop.login(), Code.PermissionDenied, /account suspended/);
    await audited("suspendUser", '"operator":"ops-test"', '"reason":"spam reports"', '"ok":true', a.userId);

    const again = await cli(["suspend", a.userId, ...args]);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /was already suspended/);

    // Nothing was deleted: the devices are still there, not revoked.
    const user = await cli(["user", a.username, ...args]);
    assert.equal(user.code, 0, user.stderr);
    assert.match(user.stdout, new RegExp(`${laptop.deviceId}\\s+laptop\\s+\\S+\\s+-\\s`));

    const lifted = await cli(["unsuspend", a.username, ...args]);
    assert.equal(lifted.code, 0, lifted.stderr);
    assert.match(lifted.stdout, /lifted the suspension/);
    await a.login();
    await laptop.login();
    await audited("unsuspendUser", '"wasSuspended":true', '"ok":true');
    const notSuspended = await cli(["unsuspend", a.username, "--json", ...args]);
    assert.equal(JSON.parse(notSuspended.stdout).wasSuspended, false);

    const unknown = await cli(["suspend", "sus_nobody_here", ...args]);
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /no user "sus_nobody_here" \[NotFound\]/);
    await audited("suspendUser", '"user":"sus_nobody_here"', '"ok":false', '"code":"NotFound"');
  });

  it("export prints what the server holds about a user as JSON, sizes but no content", async () => {
    const a = await fx.user("exp_a");
    const b = await fx.user("exp_b");
    const { conversation: group } = await a.conversations.createGroup({
      title: "export club",
      memberUserIds: [b.userId],
    });
    const { conversation: direct } = await a.conversations.openDirect({ peerUserId: b.userId });
    await connected(a);
    await connected(b);
    await send(a, group!.conversationId, "the secret plan one");
    await send(a, group!.conversationId, "the secret plan two");
    await send(b, group!.conversationId, "b's own words");
    await send(a, direct!.conversationId, "direct secret");

    const out = await cli(["export", a.username, ...args]);
    assert.equal(out.code, 0, out.stderr);
    assert.doesNotMatch(out.stdout, /secret|own words/, "no message content");
    const e = JSON.parse(out.stdout) as {
      user: { userId: string; username: string };
      suspendedAtMs: string;
      devices: Array<{ device: { deviceId: string }; hasKeys: boolean; oneTimeEcPrekeys: number }>;
      conversations: Array<{
        conversationId: string;
        kind: string;
        title: string;
        members: number;
        lastSeq: string;
        entriesSent: string;
        bytesSent: string;
        scanComplete: boolean;
      }>;
    };
    assert.equal(e.user.userId, a.userId);
    assert.equal(e.suspendedAtMs, "0");
    assert.deepEqual(
      e.devices.map((d) => d.device.deviceId),
      [a.deviceId],
    );
    assert.equal(e.devices[0]!.hasKeys, false);
    const g = e.conversations.find((c) => c.conversationId === group!.conversationId);
    const d = e.conversations.find((c) => c.conversationId === direct!.conversationId);
    assert.ok(g && d, out.stdout);
    assert.equal(g.kind, "group");
    assert.equal(g.title, "export club");
    assert.equal(g.members, 2);
    assert.equal(g.scanComplete, true);
    // What a sent in the group, by the log itself: its membership entry and its two messages.
    const history = await a.conversations.getHistory({ conversationId: group!.conversationId, limit: 100 });
    const mine = history.entries.filter((x) => x.senderUserId === a.userId);
    assert.equal(Number(g.entriesSent), mine.length);
    assert.equal(Number(g.lastSeq), Number(history.entries.at(-1)!.seq));
    assert.ok(Number(g.bytesSent) > 0);
    assert.equal(d.kind, "direct");
    // The direct conversation's opening entry (a opened it) and a's one message.
    const directHistory = await a.conversations.getHistory({
      conversationId: direct!.conversationId,
      limit: 100,
    });
    assert.equal(
      Number(d.entriesSent),
      directHistory.entries.filter((x) => x.senderUserId === a.userId).length,
    );
    assert.equal(Number(d.entriesSent), 2);
    await audited("exportUser", `"userId":"${a.userId}"`, '"conversations":2', '"ok":true');
    await a.disconnect();
    await b.disconnect();
  });

  it("delete revokes and removes every device, leaves groups, keeps direct conversations, frees the username", async () => {
    const a = await fx.user("del_a");
    const laptop = fx.track(await a.link("laptop"));
    const b = await fx.user("del_b");
    const { conversation: group } = await b.conversations.createGroup({
      title: "leaving",
      memberUserIds: [a.userId],
    });
    const { conversation: direct } = await b.conversations.openDirect({ peerUserId: a.userId });
    await connected(a);

    const unconfirmed = await cli(["delete", a.userId, ...args]);
    assert.equal(unconfirmed.code, 1);
    assert.match(unconfirmed.stderr, /cannot be undone.*--yes/);
    await a.login(); // nothing happened
    const byName = await cli(["delete", a.username, "--yes", ...args]);
    assert.equal(byName.code, 1);
    assert.match(byName.stderr, /user_id: not a valid id \[InvalidArgument\]/);

    const out = await cli(["delete", a.userId, "--yes", "--reason", "asked by the user", ...args]);
    assert.equal(out.code, 0, out.stderr);
    assert.match(
      out.stdout,
      new RegExp(
        `deleted @${a.username} \\(${a.userId}\\): 2 device\\(s\\) revoked and removed, .*left 1 group\\(s\\); 1 direct`,
      ),
    );
    assert.equal((await a.ended())?.code, Code.Unauthenticated);
    await rejectsWith(a.login(), Code.Unauthenticated, /unknown device or wrong secret/);
    await rejectsWith(laptop.login(), Code.Unauthenticated, /unknown device or wrong secret/);
    const gone = await cli(["user", a.userId, ...args]);
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, /no user .* \[NotFound\]/);

    // The group goes on without a: its log says a left.
    const { conversations } = await b.conversations.listConversations({});
    const g = conversations.find((c) => c.conversationId === group!.conversationId);
    assert.equal(g?.memberCount, 1);
    const history = await b.conversations.getHistory({ conversationId: group!.conversationId, limit: 100 });
    const last = history.entries.at(-1)!;
    assert.equal(last.senderUserId, a.userId);
    assert.equal(last.body.case, "membership");
    // The direct conversation stays b's.
    const d = conversations.find((c) => c.conversationId === direct!.conversationId);
    assert.equal(d?.kind, ConversationKind.DIRECT);

    await audited(
      "deleteUser",
      `"userId":"${a.userId}"`,
      `"username":"${a.username}"`,
      '"reason":"asked by the user"',
      '"groupsLeft":1',
    );
    const twice = await cli(["delete", a.userId, "--yes", ...args]);
    assert.equal(twice.code, 1);
    assert.match(twice.stderr, /no user .* \[NotFound\]/);

    // The username is free again, for someone else.
    const successor = fx.track(await TestDevice.register(fx.server.url, a.username));
    assert.notEqual(successor.userId, a.userId);
  });

  it("invite commands are audited, without the token", async () => {
    const out = await cli(["invite", "create", "--note", "for audit", ...args]);
    assert.equal(out.code, 0, out.stderr);
    const token = out.stdout.trim();
    const inviteId = token.split("_").slice(0, 2).join("_");
    await audited("createInvite", `"inviteId":"${inviteId}"`, '"note":"for audit"', '"operator":"ops-test"');
    assert.equal(
      fx.server.logs.some((l) => l.includes(token)),
      false,
      "the invite's token is never logged",
    );
  });
});
