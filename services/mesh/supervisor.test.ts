import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  DEFAULT_RESTART_POLICY,
  describeExit,
  type ExitStatus,
  type Incarnation,
  restartDelayMs,
  Supervisor,
} from "./supervisor.js";

/** An incarnation the test ends by hand. */
function incarnation(pid: number): Incarnation & { end: (status: ExitStatus) => void } {
  let end: (status: ExitStatus) => void = () => {};
  const exited = new Promise<ExitStatus>((resolve) => {
    end = resolve;
  });
  return { pid, exited, end };
}

/** A line with its uptime (which depends on the machine's speed) blanked. */
const uptimeless = (line: string): string => line.replace(/after [\d.]+ s up/, "after _ up");

const crash: ExitStatus = { code: null, signal: "SIGKILL" };

/** Waits until the supervisor said a line matching `pattern`. */
async function said(lines: string[], pattern: RegExp): Promise<void> {
  for (let i = 0; i < 500 && !lines.some((l) => pattern.test(l)); i++) {
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
  assert.ok(
    lines.some((l) => pattern.test(l)),
    `no line matches ${pattern}:\n${lines.join("\n")}`,
  );
}

describe("mesh supervisor", () => {
  it("doubles the delay from 0.5 s up to 30 s by default", () => {
    const delays = [1, 2, 3, 4, 5, 6, 7, 8].map((a) => restartDelayMs(DEFAULT_RESTART_POLICY, a));
    assert.deepEqual(delays, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
  });

  it("names the signal or the exit code", () => {
    assert.equal(describeExit(crash), "signal SIGKILL");
    assert.equal(describeExit({ code: 3, signal: null }), "exit code 3");
    assert.equal(
      describeExit({ code: null, signal: null, note: "watched by its PID" }),
      "exit status unknown (watched by its PID)",
    );
  });

  it("restarts a process that keeps dying with growing attempts, then gives up on it loudly", async () => {
    const lines: string[] = [];
    const policy = {
      initialDelayMs: 1,
      maxDelayMs: 4,
      resetAfterMs: 60_000,
      maxRestarts: 3,
      windowMs: 60_000,
    };
    const supervisor = new Supervisor(policy, (l) => lines.push(l));
    let pid = 100;
    const first = incarnation(pid);
    supervisor.watch(
      {
        name: "fanout-0",
        start: async () => {
          const next = incarnation(++pid);
          // Dies as soon as it is up: a crash loop.
          setImmediate(() => next.end({ code: 1, signal: null }));
          return next;
        },
      },
      first,
    );
    first.end(crash);
    await said(lines, /GIVING UP on fanout-0/);
    assert.deepEqual(lines.map(uptimeless), [
      "fanout-0 (pid 100) died: signal SIGKILL after _ up",
      "restarting fanout-0 in 0.0 s (attempt 1)",
      "fanout-0 is back (pid 101, attempt 1)",
      "fanout-0 (pid 101) died: exit code 1 after _ up",
      "restarting fanout-0 in 0.0 s (attempt 2)",
      "fanout-0 is back (pid 102, attempt 2)",
      "fanout-0 (pid 102) died: exit code 1 after _ up",
      "restarting fanout-0 in 0.0 s (attempt 3)",
      "fanout-0 is back (pid 103, attempt 3)",
      "fanout-0 (pid 103) died: exit code 1 after _ up",
      lines[10]!,
    ]);
    assert.match(
      lines[10]!,
      /^GIVING UP on fanout-0: it died 4 times within 60 s; .*every other process keeps running/,
    );
    assert.deepEqual(supervisor.givenUp, ["fanout-0"]);
    assert.equal(supervisor.isWatching("fanout-0"), false);
  });

  it("counts a failed start as an attempt and tries again", async () => {
    const lines: string[] = [];
    const policy = { ...DEFAULT_RESTART_POLICY, initialDelayMs: 1, maxDelayMs: 2 };
    const supervisor = new Supervisor(policy, (l) => lines.push(l));
    const first = incarnation(1);
    let starts = 0;
    const second = incarnation(2);
    supervisor.watch(
      {
        name: "nats-server",
        start: async () => {
          starts++;
          if (starts === 1) throw new Error("nats-server did not answer on port 4222");
          return second;
        },
      },
      first,
    );
    first.end({ code: null, signal: null, note: "watched by its PID" });
    await said(lines, /is back/);
    assert.deepEqual(lines.slice(1), [
      "restarting nats-server in 0.0 s (attempt 1)",
      "nats-server failed to start (attempt 1): nats-server did not answer on port 4222",
      "restarting nats-server in 0.0 s (attempt 2)",
      "nats-server is back (pid 2, attempt 2)",
    ]);
    await supervisor.stop();
    second.end(crash);
  });

  it("restarts nothing after a deliberate exit or once stopped", async () => {
    const lines: string[] = [];
    const supervisor = new Supervisor(
      { ...DEFAULT_RESTART_POLICY, initialDelayMs: 60_000, maxDelayMs: 60_000 },
      (l) => lines.push(l),
    );
    let starts = 0;
    const unit = (name: string) => ({
      name,
      start: async () => {
        starts++;
        return incarnation(9);
      },
    });
    const killed = incarnation(1);
    supervisor.watch(unit("gateway-0"), killed);
    killed.end({ ...crash, deliberate: true });
    const waiting = incarnation(2);
    supervisor.watch(unit("gateway-1"), waiting);
    waiting.end(crash);
    await said(lines, /restarting gateway-1 in 60 s/);
    // The pending restart (a minute away) is cancelled by the stop, at once.
    await supervisor.stop();
    assert.equal(starts, 0);
    assert.equal(supervisor.isWatching("gateway-0"), false);
    assert.deepEqual(lines.map(uptimeless), [
      "gateway-1 (pid 2) died: signal SIGKILL after _ up",
      "restarting gateway-1 in 60 s (attempt 1)",
    ]);
  });
});
