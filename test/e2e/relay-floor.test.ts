import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import * as http2 from "node:http2";
import { after, before, describe, it } from "node:test";
import { runNode } from "../helpers/process.js";

const root = new URL("../../", import.meta.url).pathname;

/**
 * bench/relay-floor.ts is the floor docs/benchmarks.md measures the latency targets against
 * (twenty-seventh pass). It only means something while the bench, unchanged, runs against it as it
 * runs against the server: every send answered and relayed once, in order, and acks turned into
 * receipts. A protocol change that the floor does not follow fails here, not in a measurement.
 * It serves on node:http2 (the main port's) or on the stream port's own HTTP/2 (`--h2 own`), and
 * both floors are held to the bench.
 */
for (const h2 of ["node", "own"] as const) {
  describe(`the relay floor under the bench, on ${h2 === "node" ? "node:http2" : "the stream port's HTTP/2"}`, () => {
    let floor: ChildProcess;
    let url = "";
    let pid = 0;
    const exited: Promise<number | null>[] = [];

    before(async () => {
      floor = spawn(process.execPath, ["--import", "tsx", "bench/relay-floor.ts", "0", "--h2", h2], {
        cwd: root,
        stdio: ["ignore", "pipe", "pipe"],
      });
      exited.push(new Promise((resolve) => floor.once("exit", resolve)));
      const output: string[] = [];
      floor.stderr?.setEncoding("utf8").on("data", (chunk: string) => output.push(chunk));
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`the floor did not listen in 30 s: ${output.join("")}`)),
          30_000,
        );
        floor.stdout?.setEncoding("utf8").on("data", (chunk: string) => {
          const m = /listening on (http:\/\/\S+) \(pid (\d+), HTTP\/2: (\w+)\)/.exec(chunk);
          if (m === null) return;
          clearTimeout(timer);
          if (m[3] !== h2) {
            reject(new Error(`asked for HTTP/2 ${h2}, the floor serves ${m[3]}`));
            return;
          }
          url = m[1]!;
          pid = Number(m[2]);
          resolve();
        });
        floor.once("exit", (code) => reject(new Error(`the floor exited (${code}): ${output.join("")}`)));
      });
    });

    after(async () => {
      if (floor.exitCode === null) process.kill(pid, "SIGTERM");
      await Promise.all(exited);
    });

    /** One short bench run against the floor; its --json summary. */
    async function bench(args: string[]) {
      const run = await runNode(
        [
          "--import",
          "tsx",
          "bench/main.ts",
          "--url",
          url,
          "--server-pid",
          String(pid),
          "--warmup",
          "1",
          "--duration",
          "2",
          "--json",
          ...args,
        ],
        { cwd: root, env: process.env },
      );
      assert.equal(run.code, 0, run.stderr);
      return JSON.parse(run.stdout) as {
        throughput: { receiptsPerSecond: number };
        benchEventLoop: {
          generators: number;
          utilizationMax: number;
          delayP99MaxMs: number;
          delayMaxMs: number;
          niceMin: number;
          niceMax: number;
        };
        correctness: {
          expectedDeliveries: number;
          receivedDeliveries: number;
          unansweredSends: number;
          duplicates: number;
          gaps: number;
          frameErrors: number;
          streamsEnded: number;
        };
      };
    }

    /** The run's accounting is whole, and its generator's thread ran at `nice`. */
    function assertWhole(r: Awaited<ReturnType<typeof bench>>, nice = 0): void {
      const c = r.correctness;
      assert.ok(c.expectedDeliveries > 0, "sends were acked in the window");
      assert.equal(c.receivedDeliveries, c.expectedDeliveries);
      assert.deepEqual(
        [c.unansweredSends, c.duplicates, c.gaps, c.frameErrors, c.streamsEnded],
        [0, 0, 0, 0, 0],
        "nothing unanswered, duplicated, missing, refused or ended",
      );
      assert.ok(r.throughput.receiptsPerSecond > 0, "acks came back as receipts");
      // The generator's own loop was watched over the window: it did work, it ran late at some
      // point, and the latest is no earlier than the 99th percentile.
      const loop = r.benchEventLoop;
      assert.equal(loop.generators, 1);
      assert.ok(loop.utilizationMax > 0 && loop.utilizationMax <= 1, `utilisation ${loop.utilizationMax}`);
      assert.ok(loop.delayMaxMs > 0 && loop.delayMaxMs >= loop.delayP99MaxMs, JSON.stringify(loop));
      assert.ok(loop.delayMaxMs < 2_000, `a generator of 20 devices stalled ${loop.delayMaxMs} ms`);
      assert.deepEqual([loop.niceMin, loop.niceMax], [nice, nice], "the generator thread's nice value");
    }

    it("serves on the HTTP/2 asked for", { timeout: 30_000 }, async () => {
      // The two announce different settings: the stream port's HTTP/2 keeps no HPACK table of
      // ours (a table size of 0), node:http2 keeps the protocol's default 4,096.
      const session = http2.connect(url);
      try {
        const settings = await new Promise<http2.Settings>((resolve, reject) => {
          session.once("remoteSettings", resolve);
          session.once("error", reject);
        });
        assert.equal(settings.headerTableSize, h2 === "own" ? 0 : 4_096);
      } finally {
        session.destroy();
      }
    });

    it("answers and relays every 1:1 send once, in order", { timeout: 60_000 }, async () => {
      assertWhole(await bench(["--devices", "20", "--rate", "200"]));
    });

    it("relays a group send to every other member", { timeout: 60_000 }, async () => {
      // The bench owes each acked send to the four other members of its group of five.
      assertWhole(await bench(["--devices", "20", "--mode", "group", "--group-size", "5", "--rate", "50"]));
    });

    // The bench's own option, not the floor's: once is enough.
    if (h2 === "node") {
      it("runs its load generator at the nice value asked for", { timeout: 60_000 }, async () => {
        // A value above 0 needs no privilege, so the test runs as any user; the bench reads it
        // back on the generator's thread.
        assertWhole(await bench(["--devices", "20", "--rate", "200", "--bench-nice", "5"]), 5);
      });
    }
  });
}
