import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";
import { CliServerSuite } from "../../test/helpers/cli.js";

/**
 * `avatar set|remove|show` through the CLI and the SDK under it, end-to-end encrypted profiles
 * against a server process: the picture is set, opened by a contact once their messages brought
 * the key, hidden by `privacy --name-visible-to`, replaced and removed.
 */
describe("the CLI's avatar", () => {
  const fx = new CliServerSuite("sb-cli-avatar-");
  const { cli, ok } = fx;
  let n = 0;

  async function register(name: string): Promise<{ username: string; profile: string }> {
    n += 1;
    const username = `${name}_${n}`;
    const profile = join(fx.base, `profile-${username}`);
    await ok("register", username, "--profile", profile);
    return { username, profile };
  }

  it("sets, shows and saves, hides, replaces and removes an avatar", async () => {
    const alice = await register("alice");
    const bob = await register("bob");
    const picture = join(fx.base, "me.png");
    const bytes = randomBytes(30_000);
    await writeFile(picture, bytes);

    const set = await ok("avatar", "set", picture, "--profile", alice.profile);
    assert.match(set.join("\n"), /^avatar set: 29\.3 KiB encrypted as m_[0-9a-z]{26}$/m);

    // Bob has no key yet: the error says how to get it.
    const early = await cli("avatar", "show", alice.username, "--profile", bob.profile);
    assert.notEqual(early.code, 0);
    assert.match(early.err.join("\n"), /cannot be opened yet: .* read them first \(history /);

    // A message from alice brings her device's profile key; reading it stores the key.
    await ok("send", bob.username, "hi bob", "--profile", alice.profile);
    await ok("history", alice.username, "--profile", bob.profile);
    const out = join(fx.base, "alice.png");
    const shown = await ok("avatar", "show", alice.username, "--out", out, "--profile", bob.profile);
    assert.match(shown.join("\n"), new RegExp(`^avatar of @${alice.username}: 29\\.3 KiB \\(m_`, "m"));
    assert.ok((await readFile(out)).equals(bytes), "the saved picture is alice's");
    // An existing file is kept unless --force.
    const again = await cli("avatar", "show", alice.username, "--out", out, "--profile", bob.profile);
    assert.notEqual(again.code, 0);
    assert.match(again.err.join("\n"), /already exists/);

    // Hidden: bob is told exactly what a user without an avatar tells him.
    await ok("privacy", "--name-visible-to", "nobody", "--profile", alice.profile);
    const hidden = await ok("avatar", "show", alice.username, "--profile", bob.profile);
    assert.deepEqual(hidden, [`@${alice.username} has no avatar you can see`]);
    await ok("privacy", "--name-visible-to", "everyone", "--profile", alice.profile);

    const second = randomBytes(1_000);
    await writeFile(picture, second);
    await ok("avatar", "set", picture, "--profile", alice.profile);
    await ok("avatar", "show", alice.username, "--out", out, "--force", "--profile", bob.profile);
    assert.ok((await readFile(out)).equals(second), "the new picture, with no new message");

    assert.deepEqual(await ok("avatar", "remove", "--profile", alice.profile), ["avatar removed"]);
    assert.deepEqual(await ok("avatar", "show", alice.username, "--profile", bob.profile), [
      `@${alice.username} has no avatar you can see`,
    ]);
    assert.deepEqual(await ok("avatar", "remove", "--profile", alice.profile), ["you have no avatar"]);

    // Too large: refused before anything is read or sent.
    const big = join(fx.base, "big.bin");
    await writeFile(big, Buffer.alloc(1024 * 1024));
    const refused = await cli("avatar", "set", big, "--profile", alice.profile);
    assert.notEqual(refused.code, 0);
    assert.match(refused.err.join("\n"), /at most 1048548 bytes/);
  });
});
