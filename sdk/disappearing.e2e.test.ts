import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import { cliOk } from "../test/helpers/cli.js";
import { eventually, Inbox } from "../test/helpers/inbox.js";
import { readFilesUnder } from "../test/helpers/scan.js";
import { SdkServerSuite } from "../test/helpers/sdk-devices.js";

/** A timer short enough to wait out, offered besides the default ones. */
const SHORT = 3;

/** The files of a profile directory whose bytes contain text. */
async function holding(dir: string, text: string): Promise<string[]> {
  const needle = Buffer.from(text);
  return (await readFilesUnder(dir)).filter((f) => f.bytes.includes(needle)).map((f) => f.path);
}

/**
 * Disappearing messages on devices: the SDK and the CLI against a server process, end-to-end
 * encrypted. A device keeps the plaintext of what it decrypted or sent (the ciphertext cannot be
 * opened twice); when the message disappears, that goes from the profile too.
 */
describe("disappearing messages (SDK and CLI against a server process)", () => {
  const fx = new SdkServerSuite("sb-disappearing-", {
    SWITCHBOARD_DISAPPEARING_TIMERS: `${SHORT},86400,604800,7776000`,
  });

  it("a disappeared message leaves no plaintext on either device, and the CLI shows the timer and the gap-free log", async () => {
    const alice = await fx.devices.register("alice");
    const bob = await fx.devices.register("bob");
    const aliceDir = join(fx.base, "profile-alice-0");
    const bobDir = join(fx.base, "profile-bob-1");
    const inbox = new Inbox("bob", bob);
    await alice.connect();
    await bob.connect();
    const id = (await alice.openDirect(bob.userId)).conversationId;
    await alice.send(id, "secret-kept forever");

    const timer = await alice.setDisappearingTimer(id, SHORT);
    assert.equal(timer?.body.case, "disappearing");
    const told = await inbox.entry(id, timer!.seq);
    assert.equal(told.kind, "disappearing");
    assert.equal(told.disappearing?.durationSeconds, SHORT);

    const secret = "secret-vanishing a1b2c3";
    const sent = await alice.send(id, secret);
    await inbox.has(secret);
    const received = inbox.byText(secret)!;
    assert.ok(received.expiresAtMs !== undefined && received.expiresAtMs > received.serverTimeMs);
    // Both devices keep the plaintext while the message lives: bob what he decrypted, alice what she sent.
    assert.notDeepEqual(await holding(bobDir, secret), [], "bob keeps the plaintext before the expiry");
    assert.notDeepEqual(await holding(aliceDir, secret), [], "alice keeps the plaintext before the expiry");

    await eventually(
      () => Date.now() > Number(received.expiresAtMs) + 50,
      () => "the expiry never came",
    );
    // Bob reads the log: the seq is there, as expired, and his copy of the plaintext is gone.
    const page = await bob.getHistory(id, {});
    const gone = page.entries.find((e) => e.seq === sent.seq);
    assert.equal(gone?.kind, "expired");
    assert.equal(gone?.payload, undefined);
    assert.deepEqual(await holding(bobDir, secret), []);
    assert.ok(
      page.entries.some((e) => e.kind === "message"),
      "the message sent before the timer stays",
    );

    // Alice's own copy goes when her client opens again (the sweep at open), without asking the server.
    await alice.close();
    const reopened = await fx.devices.reopen(aliceDir);
    await reopened.close();
    assert.deepEqual(await holding(aliceDir, secret), []);

    // The CLI: the timer in the history, the disappeared seq in its place, and the timer turned off.
    const history = await cliOk(fx.server.url, ["history", id, "--profile", aliceDir]);
    assert.ok(
      history.some((l) => l.includes(`set messages to disappear after ${SHORT} seconds`)),
      history.join("\n"),
    );
    assert.ok(
      history.some((l) => l === `#${sent.seq} (disappeared)`),
      history.join("\n"),
    );
    const off = await cliOk(fx.server.url, ["disappearing", id, "off", "--profile", aliceDir]);
    assert.match(off.join("\n"), /^disappearing messages off \(#\d+\)$/);
    const week = await cliOk(fx.server.url, ["disappearing", id, "7d", "--profile", aliceDir]);
    assert.match(week.join("\n"), /^disappearing messages after 7 days \(#\d+\)$/);
    const same = await cliOk(fx.server.url, ["disappearing", id, "7d", "--profile", aliceDir]);
    assert.deepEqual(same, ["disappearing messages were already 7 days"]);
  });
});
