import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import wavefile from "wavefile";
import { coturnMissing } from "../../services/mesh/coturn.js";
import { CallCliSuite, reported } from "../../test/helpers/call-cli.js";
import { eventually } from "../../test/helpers/inbox.js";

/** A stereo 16-bit WAV at 44.1 kHz of a sine wave: a file the CLI must mix down and resample. */
async function wavOfTone(path: string, hz: number): Promise<void> {
  const rate = 44_100;
  const samples = Int16Array.from({ length: rate }, (_, i) =>
    Math.round(12_000 * Math.sin((2 * Math.PI * hz * i) / rate)),
  );
  const wav = new wavefile.WaveFile();
  wav.fromScratch(2, rate, "16", [samples, samples]);
  await writeFile(path, wav.toBuffer());
}

describe("switchboard call and answer: CLI processes on both sides, a server process, TURN forced on a real coturn", {
  skip: coturnMissing(),
}, () => {
  const fx = new CallCliSuite();
  const { sb, ok } = fx;
  before(() => fx.start());
  after(() => fx.stop());

  it("alice calls bob with a 440 Hz tone, bob answers with a WAV file; each hears the other's pitch through the relay and reports the round trip", async (t) => {
    const alice = join(fx.base, "alice");
    const bob = join(fx.base, "bob");
    await ok("register", "alice_call", "--profile", alice);
    await ok("register", "bob_call", "--profile", bob);
    const wav = join(fx.base, "answer-tone.wav");
    await wavOfTone(wav, 550);

    const answering = sb(["answer", "--profile", bob, "--relay-only", "--file", wav, "--from", "alice_call"]);
    await eventually(
      () => {
        if (answering.child.exitCode !== null) assert.fail(`answer exited:\n${answering.shown}`);
        return answering.err.some((l) => l.includes("waiting for a call"));
      },
      () => `bob is not waiting:\n${answering.shown}`,
      60_000,
    );
    const calling = sb([
      "call",
      "@bob_call",
      "--profile",
      alice,
      "--relay-only",
      "--tone",
      "440",
      "--seconds",
      "3",
    ]);
    assert.equal(await calling.exited, 0, calling.shown);
    // alice hung up after 3 s: bob's command sees it and reports.
    assert.equal(await answering.exited, 0, answering.shown);

    assert.ok(
      calling.err.some((l) => l === "-- ringing"),
      calling.shown,
    );
    assert.ok(
      answering.err.some((l) => l.includes("@alice_call is calling")),
      answering.shown,
    );
    assert.ok(
      answering.err.some((l) => l.includes("@alice_call hung up")),
      answering.shown,
    );

    t.diagnostic(`caller: ${calling.out.join(" | ")}`);
    t.diagnostic(`callee: ${answering.out.join(" | ")}`);
    // Both ends went through the relay: their nominated candidate is the relayed one.
    reported(calling, "call with @bob_call:", /path relay\b/);
    reported(answering, "call with @alice_call:", /path relay\b/);
    reported(calling, "sent:", /^sent: 440 Hz tone, [1-9]\d* packets/);
    reported(answering, "sent:", /^sent: answer-tone\.wav \(1\.0 s\), [1-9]\d* packets/);

    // Each heard the other's audio: packets, and the pitch decoded from them.
    const aliceHeard = reported(calling, "heard:", /^heard: (\d+) packets .*, (\d+) Hz, level (-?\d+) dBFS/);
    const bobHeard = reported(answering, "heard:", /^heard: (\d+) packets .*, (\d+) Hz, level (-?\d+) dBFS/);
    assert.ok(Number(aliceHeard[1]) > 0 && Number(bobHeard[1]) > 0, `${calling.shown}\n${answering.shown}`);
    assert.ok(Math.abs(Number(aliceHeard[2]) - 550) <= 15, `alice heard ${aliceHeard[2]} Hz, not bob's 550`);
    assert.ok(Math.abs(Number(bobHeard[2]) - 440) <= 15, `bob heard ${bobHeard[2]} Hz, not alice's 440`);
    assert.ok(Number(aliceHeard[3]) > -30, `alice heard near silence: ${aliceHeard[3]} dBFS`);

    // The caller waited for RTCP to measure the round trip before it hung up.
    const rtt = reported(calling, "round trip:", /^round trip: (\d+\.\d) ms \(RTCP\)$/);
    assert.ok(Number(rtt[1]) >= 0, rtt[0]);

    // The server logged the call: both sides' history shows it answered.
    const history = await ok("history", "bob_call", "--profile", alice);
    assert.ok(
      history.some((l) => /you audio call to @bob_call: answered, \d+:\d\d$/.test(l)),
      history.join("\n"),
    );
  });

  it("a call nobody answers gives up after --ring-timeout, with exit code 1", async () => {
    const carol = join(fx.base, "carol");
    await ok("register", "carol_call", "--profile", carol);
    await ok("register", "dave_call", "--profile", join(fx.base, "dave"));
    // dave's device has no stream: nothing rings, nothing answers.
    const calling = sb(["call", "dave_call", "--profile", carol, "--relay-only", "--ring-timeout", "2"]);
    assert.equal(await calling.exited, 1, calling.shown);
    assert.ok(
      calling.err.some((l) => l === "switchboard: no answer from @dave_call within 2 s"),
      calling.shown,
    );
  });
});
