import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { coturnMissing } from "../../services/mesh/coturn.js";
import { CallCliSuite, reported } from "../../test/helpers/call-cli.js";
import { eventually } from "../../test/helpers/inbox.js";
import { removeDir, startServerProcess } from "../../test/helpers/server.js";

// How `call` and `answer` end when things go wrong: the peer's process dies mid-call, or a
// relay-only call meets a server without relays. (A file of its own: the first waits for the
// server's 5 s grace for the killed device, or ICE's 30 s consent timeout, whichever ends it.)
describe("switchboard call and answer when things go wrong (CLI processes, a server process, a real coturn)", {
  skip: coturnMissing(),
}, () => {
  const fx = new CallCliSuite();
  const { sb, ok } = fx;
  before(() => fx.start());
  after(() => fx.stop());

  it("a caller killed mid-call does not leave `answer` waiting: it ends, says how, and reports what it heard", async (t) => {
    const gina = join(fx.base, "gina");
    const hank = join(fx.base, "hank");
    await ok("register", "gina_call", "--profile", gina);
    await ok("register", "hank_call", "--profile", hank);
    const answering = sb(["answer", "--profile", hank, "--relay-only"]);
    await eventually(
      () => answering.err.some((l) => l.includes("waiting for a call")),
      () => `hank is not waiting:\n${answering.shown}`,
      60_000,
    );
    const calling = sb(["call", "hank_call", "--profile", gina, "--relay-only"]);
    await eventually(
      () => answering.err.includes("-- connected") && calling.err.some((l) => l.startsWith("-- connected")),
      () => `no call:\n${calling.shown}\n${answering.shown}`,
      60_000,
    );
    // Gone without a hang-up: no process left to send one.
    process.kill(calling.child.pid!, "SIGKILL");
    const code = await Promise.race([
      answering.exited,
      new Promise<"still waiting">((r) => setTimeout(() => r("still waiting"), 90_000).unref()),
    ]);
    t.diagnostic(`answer: exit ${code}: ${answering.shown.split("\n").join(" | ")}`);
    const ended = answering.err.find((l) => l.endsWith("hung up") || l.includes("connection to"));
    assert.ok(ended !== undefined, `answer did not end the call:\n${answering.shown}`);
    reported(answering, "heard:", /^heard: \d+ packets/);
    if (ended.includes("connection to")) {
      assert.equal(code, 1);
      assert.ok(answering.err.includes("switchboard: lost the connection to @gina_call without a hang-up"));
    } else assert.equal(code, 0);
  });

  it("--relay-only on a server without relays fails at once, saying so", async () => {
    const bare = await startServerProcess();
    try {
      const run = async (...args: string[]) => {
        const p = sb(args, bare.url);
        return { code: await p.exited, p };
      };
      const erin = join(fx.base, "erin");
      const frank = join(fx.base, "frank");
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
