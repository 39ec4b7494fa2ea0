import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import wavefile from "wavefile";
import { type Coturn, coturnMissing, startCoturn } from "../../services/mesh/coturn.js";
import { eventually } from "../../test/helpers/inbox.js";
import { removeDir, type ServerProcess, startServerProcess } from "../../test/helpers/server.js";

const root = new URL("../../", import.meta.url).pathname;
const SECRET = "cli-call-test-secret-shared-with-coturn";

/** A `switchboard` process (bin/switchboard.js), as a user runs it, with its output as it comes. */
class Sb {
  readonly out: string[] = [];
  readonly err: string[] = [];
  readonly child: ChildProcess;
  readonly exited: Promise<number | null>;

  constructor(args: string[], serverUrl: string) {
    const env = { ...process.env };
    delete env.SWITCHBOARD_URL;
    delete env.SWITCHBOARD_PROFILE;
    this.child = spawn(process.execPath, [join(root, "bin/switchboard.js"), ...args, "--server", serverUrl], {
      cwd: root,
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    const lines = (into: string[]) => (d: Buffer) => into.push(...d.toString().split("\n").filter(Boolean));
    this.child.stdout?.on("data", lines(this.out));
    this.child.stderr?.on("data", lines(this.err));
    this.exited = new Promise((resolve) => this.child.once("close", (code) => resolve(code)));
  }

  /** Both outputs, for a failing assertion's message. */
  get shown(): string {
    return [...this.out, ...this.err].join("\n");
  }

  stop(): void {
    if (this.child.exitCode === null && this.child.pid !== undefined) process.kill(this.child.pid, "SIGTERM");
  }
}

/** The number after `label` on the report line that starts with `line`. */
function reported(p: Sb, line: string, pattern: RegExp): RegExpExecArray {
  const l = p.out.find((o) => o.startsWith(line));
  const m = l === undefined ? null : pattern.exec(l);
  assert.ok(m !== null, `no "${line}" line matching ${pattern} in:\n${p.shown}`);
  return m;
}

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
  let relay: Coturn;
  let server: ServerProcess;
  let base: string;
  const running: Sb[] = [];
  const sb = (...args: string[]) => {
    const p = new Sb(args, server.url);
    running.push(p);
    return p;
  };
  const ok = async (...args: string[]) => {
    const p = sb(...args);
    assert.equal(await p.exited, 0, `switchboard ${args.join(" ")}:\n${p.shown}`);
    return p.out;
  };

  before(async () => {
    relay = await startCoturn(SECRET);
    server = await startServerProcess({
      env: { SWITCHBOARD_TURN_URLS: relay.url, SWITCHBOARD_TURN_SECRET: SECRET },
    });
    base = await mkdtemp(join(tmpdir(), "sb-call-cli-"));
  });
  after(async () => {
    for (const p of running) p.stop();
    await Promise.all(running.map((p) => p.exited));
    await server?.stop();
    if (server) await removeDir(server.dataDir);
    await relay?.stop();
    if (base) await removeDir(base);
  });

  it("alice calls bob with a 440 Hz tone, bob answers with a WAV file; each hears the other's pitch through the relay and reports the round trip", async (t) => {
    const alice = join(base, "alice");
    const bob = join(base, "bob");
    await ok("register", "alice_call", "--profile", alice);
    await ok("register", "bob_call", "--profile", bob);
    const wav = join(base, "answer-tone.wav");
    await wavOfTone(wav, 550);

    const answering = sb("answer", "--profile", bob, "--relay-only", "--file", wav, "--from", "alice_call");
    await eventually(
      () => {
        if (answering.child.exitCode !== null) assert.fail(`answer exited:\n${answering.shown}`);
        return answering.err.some((l) => l.includes("waiting for a call"));
      },
      () => `bob is not waiting:\n${answering.shown}`,
      60_000,
    );
    const calling = sb(
      "call",
      "@bob_call",
      "--profile",
      alice,
      "--relay-only",
      "--tone",
      "440",
      "--seconds",
      "3",
    );
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
    const carol = join(base, "carol");
    await ok("register", "carol_call", "--profile", carol);
    await ok("register", "dave_call", "--profile", join(base, "dave"));
    // dave's device has no stream: nothing rings, nothing answers.
    const calling = sb("call", "dave_call", "--profile", carol, "--relay-only", "--ring-timeout", "2");
    assert.equal(await calling.exited, 1, calling.shown);
    assert.ok(
      calling.err.some((l) => l === "switchboard: no answer from @dave_call within 2 s"),
      calling.shown,
    );
  });

  it("--relay-only on a server without relays fails at once, saying so", async () => {
    const bare = await startServerProcess();
    try {
      const run = async (...args: string[]) => {
        const p = new Sb(args, bare.url);
        running.push(p);
        return { code: await p.exited, p };
      };
      const erin = join(base, "erin");
      const frank = join(base, "frank");
      for (const [name, profile] of [
        ["erin_call", erin],
        ["frank_call", frank],
      ]) {
        assert.equal((await run("register", name!, "--profile", profile!)).code, 0);
      }
      const expected =
        "switchboard: --relay-only, but this server hands out no TURN relay (SWITCHBOARD_TURN_URLS)";
      const answering = await run("answer", "--profile", frank, "--relay-only");
      assert.equal(answering.code, 1, answering.p.shown);
      assert.ok(answering.p.err.includes(expected), answering.p.shown);
      const calling = await run("call", "frank_call", "--profile", erin, "--relay-only");
      assert.equal(calling.code, 1, calling.p.shown);
      assert.ok(calling.p.err.includes(expected), calling.p.shown);
      assert.ok(!calling.p.err.some((l) => l.startsWith("-- calling")), "nothing rang");
    } finally {
      await bare.stop();
      await removeDir(bare.dataDir);
    }
  });
});
