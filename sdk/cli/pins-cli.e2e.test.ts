import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import { CliServerSuite } from "../../test/helpers/cli.js";

/**
 * Pins through the CLI and the SDK under it (client.pins, pin entries decoded as kind "pin"),
 * end-to-end encrypted profiles against a server process.
 */
describe("the CLI's pin, unpin and pins", () => {
  const fx = new CliServerSuite("sb-cli-pins-");
  const { cli, ok } = fx;
  let n = 0;

  async function register(name: string): Promise<{ username: string; profile: string }> {
    n += 1;
    const username = `${name}_${n}`;
    const profile = join(fx.base, `profile-${username}`);
    await ok("register", username, "--profile", profile);
    return { username, profile };
  }

  it("pins a message, lists it on the other side, shows pin and unpin in history, unpins", async () => {
    const alice = await register("alice");
    const bob = await register("bob");
    const sent = await ok("send", bob.username, "the address is 1 Main St", "--profile", alice.profile);
    const seq = /sent #(\d+)/.exec(sent.join("\n"))?.[1];
    assert.ok(seq !== undefined, sent.join("\n"));

    // Either member of a direct conversation may pin, the other's message too.
    const pinned = await ok("pin", alice.username, seq, "--profile", bob.profile);
    assert.match(pinned.join("\n"), new RegExp(`^pinned #${seq} \\(#\\d+\\)$`, "m"));
    const listed = await ok("pins", bob.username, "--profile", alice.profile);
    assert.equal(listed.length, 2, listed.join("\n"));
    assert.match(listed[0]!, new RegExp(`^#${seq} pinned by @${bob.username} at \\d{4}-`));
    // With the message itself, decrypted on this device, as history shows it.
    assert.match(listed[1]!, new RegExp(`^  #${seq} .*you: the address is 1 Main St`));

    // Pinning it again is refused with the server's reason; so is a message that does not exist.
    const twice = await cli("pin", alice.username, seq, "--profile", bob.profile);
    assert.notEqual(twice.code, 0);
    assert.match(twice.err.join("\n"), /already pinned/);
    const missing = await cli("pin", alice.username, "999", "--profile", bob.profile);
    assert.notEqual(missing.code, 0);
    assert.match(missing.err.join("\n"), /target_seq: no such entry/);
    const notSeq = await cli("pin", alice.username, "x1", "--profile", bob.profile);
    assert.notEqual(notSeq.code, 0);
    assert.match(notSeq.err.join("\n"), /not a message number/);

    await ok("unpin", bob.username, seq, "--profile", alice.profile);
    assert.deepEqual(await ok("pins", alice.username, "--profile", bob.profile), ["no pinned messages"]);
    // The SDK decodes both entries (kind "pin", targetSeq, unpin) and history shows them in order.
    const lines = await ok("history", bob.username, "--profile", alice.profile);
    const pinLine = lines.findIndex((l) => l.includes(`pinned #${seq}`) && !l.includes("unpinned"));
    const unpinLine = lines.findIndex((l) => l.includes(`unpinned #${seq}`));
    assert.ok(pinLine >= 0 && unpinLine > pinLine, lines.join("\n"));
    assert.match(lines[pinLine]!, new RegExp(`@${bob.username} pinned #${seq}`));
  });
});
