import assert from "node:assert/strict";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { describe, it } from "node:test";
import { CliServerSuite } from "../../test/helpers/cli.js";
import { ago, mentionsHandle } from "./health.js";

// Conversation health in the CLI against a server process: `conversations` marks the ones that
// need a reply, and `chat` opens with what came for the user while they were away.

describe("the CLI's conversation health", () => {
  const fx = new CliServerSuite("sb-cli-health-");
  const { start, ok } = fx;
  let n = 0;

  async function register(name: string): Promise<{ username: string; profile: string }> {
    n += 1;
    const username = `${name}_${n}`;
    const profile = join(fx.base, `profile-${username}`);
    await ok("register", username, "--profile", profile);
    return { username, profile };
  }

  /** The `conversations` line of the conversation with a user. */
  async function listed(profile: string, peer: string): Promise<string> {
    const lines = await ok("conversations", "--profile", profile);
    const line = lines.find((l) => l.includes(`@${peer}`));
    assert.ok(line !== undefined, lines.join("\n"));
    return line;
  }

  /** Runs `chat` with no input: it shows its opening lines and leaves. */
  async function chatOpening(profile: string, peer: string): Promise<string[]> {
    const input = new PassThrough();
    input.end();
    const run = start(["chat", peer, "--profile", profile], { input });
    assert.equal(await run.done, 0, run.err.join("\n"));
    return run.out;
  }

  const seqOf = (lines: string[]): string => {
    const seq = /sent #(\d+)/.exec(lines.join("\n"))?.[1];
    assert.ok(seq !== undefined, lines.join("\n"));
    return seq;
  };

  it("`conversations` shows needs reply until the user answers", async () => {
    const alice = await register("alice");
    const bob = await register("bob");
    await ok("send", bob.username, "are you coming tonight?", "--profile", alice.profile);
    assert.match(await listed(bob.profile, alice.username), /needs reply \((now|\d+m)\)$/);
    assert.doesNotMatch(await listed(alice.profile, bob.username), /needs reply/, "alice spoke last");
    await ok("send", alice.username, "yes", "--profile", bob.profile);
    assert.doesNotMatch(await listed(bob.profile, alice.username), /needs reply/);
    assert.match(await listed(alice.profile, bob.username), /needs reply/);
  });

  it("`groups` shows needs reply only for a message that mentions you, with who sent it", async () => {
    const alice = await register("alice");
    const bob = await register("bob");
    const [groupId] = await ok("group", "create", "health group", bob.username, "--profile", alice.profile);
    assert.match(groupId ?? "", /^g_/);
    const row = async (): Promise<string> => {
      const lines = await ok("groups", "--profile", alice.profile);
      const line = lines.find((l) => l.startsWith(groupId ?? ""));
      assert.ok(line !== undefined, lines.join("\n"));
      return line;
    };
    await ok("send", groupId ?? "", "morning all", "--profile", bob.profile);
    assert.doesNotMatch(await row(), /needs reply/, "a message for everyone");
    await ok("send", groupId ?? "", "alice?", "--mention", alice.username, "--profile", bob.profile);
    assert.match(await row(), new RegExp(`needs reply \\(@${bob.username}, (now|\\d+m)\\)$`));
  });

  it("`chat` opens with the mentions of you and replies to you since it was last open, once", async () => {
    const alice = await register("alice");
    const bob = await register("bob");
    const asked = seqOf(await ok("send", alice.username, "what time?", "--profile", bob.profile));
    // Bob has the chat open once (nothing to report), then is away while alice writes.
    assert.ok(!(await chatOpening(bob.profile, alice.username)).some((l) => l.includes("away")));
    await ok("send", bob.username, "something else", "--profile", alice.profile);
    const answer = seqOf(
      await ok("send", bob.username, "eight", "--reply-to", asked, "--profile", alice.profile),
    );
    const told = seqOf(
      await ok("send", bob.username, "ping", "--mention", bob.username, "--profile", alice.profile),
    );
    // A mention only in the text: found on bob's device after decryption, never told the server.
    const typed = seqOf(await ok("send", bob.username, `hey @${bob.username}!`, "--profile", alice.profile));

    const opening = await chatOpening(bob.profile, alice.username);
    const away = opening.find((l) => l.startsWith("-- in the "));
    assert.ok(away !== undefined, opening.join("\n"));
    assert.ok(away.includes(`2 mentions of you (#${told}, #${typed})`), away);
    assert.ok(away.includes(`1 reply to you (#${answer})`), away);
    // Seen now: the next opening has nothing to report.
    assert.ok(!(await chatOpening(bob.profile, alice.username)).some((l) => l.includes("away")));
  });

  it("finds a handle as a whole word and says how long ago compactly", () => {
    assert.ok(mentionsHandle("hi @bob!", "@bob"));
    assert.ok(mentionsHandle("@bob", "@bob"));
    assert.ok(!mentionsHandle("hi @bobby", "@bob"));
    assert.ok(mentionsHandle("@bobby and @bob", "@bob"));
    assert.deepEqual([ago(59_000), ago(60_000), ago(7_200_000), ago(200_000_000)], ["now", "1m", "2h", "2d"]);
  });
});
