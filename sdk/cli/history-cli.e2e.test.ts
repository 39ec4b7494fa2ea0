import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import { CliServerSuite } from "../../test/helpers/cli.js";
import { eventually } from "../../test/helpers/inbox.js";

// The CLI's side of history for a newly linked device (sdk/history.e2e.test.ts covers the SDK):
// `link --wait-history` on the new device, `link-approve --history 7d` on the old one, and
// `history` on the new device showing what was sent before it existed.

describe("the CLI: history for a newly linked device (commands against a server process)", () => {
  const fx = new CliServerSuite("sb-cli-history-");
  const { start, ok } = fx;

  async function register(name: string): Promise<{ username: string; profile: string }> {
    const profile = join(fx.base, `profile-${name}`);
    await ok("register", name, "--profile", profile);
    return { username: name, profile };
  }

  it("link --wait-history imports what link-approve --history sends; history shows it", async () => {
    const alice = await register("alice_h");
    const bob = await register("bob_h");
    await ok("send", alice.username, "HIST-CLI before the link, from bob", "--profile", bob.profile);
    await ok("send", bob.username, "HIST-CLI before the link, from alice", "--profile", alice.profile);
    // The old device reads its history (and keeps the plaintexts).
    const old = await ok("history", bob.username, "--profile", alice.profile);
    assert.ok(
      old.some((l) => l.includes("HIST-CLI before the link, from bob")),
      old.join("\n"),
    );

    const made = start(["link-code", "--profile", alice.profile]);
    assert.equal(await made.done, 0);
    const code = made.out[0];
    assert.ok(code !== undefined);
    // The code's hint offers the history.
    assert.ok(
      made.err.some((l) => l.includes("switchboard link-approve --history 7d")),
      made.err.join("\n"),
    );
    const fresh = join(fx.base, "profile-alice-new");
    const linking = start(["link", code, "--profile", fresh, "--wait-history", "60"]);
    await eventually(
      () => linking.err.some((l) => l.includes("switchboard link-approve")),
      () => `the link did not get to waiting:\n${linking.out.join("\n")}\n${linking.err.join("\n")}`,
    );
    // Three entries: the conversation's creation and the two messages.
    const sent = await ok("link-approve", "--history", "7d", "--profile", alice.profile);
    assert.match(
      sent.at(-1) ?? "",
      /^sent 3 entries from 1 conversations since .* to device dv_\w+ \(\d+ bytes, end-to-end encrypted\)$/,
    );
    assert.equal(await linking.done, 0, linking.err.join("\n"));
    assert.ok(
      linking.out.some((l) => /^imported 3 entries in 1 conversations from device dv_/.test(l)),
      linking.out.join("\n"),
    );

    const shown = await ok("history", bob.username, "--profile", fresh);
    const texts = shown.join("\n");
    assert.match(texts, /@bob_h: HIST-CLI before the link, from bob/);
    assert.match(texts, /HIST-CLI before the link, from alice/);

    // A bad --history is refused before anything is sent.
    await assert.rejects(
      start(["link-approve", "--history", "0d", "--profile", alice.profile]).done,
      /days: more than 0 and at most 3650/,
    );
  });
});
