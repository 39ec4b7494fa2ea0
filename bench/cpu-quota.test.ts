import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { CpuQuotas, findCpuController, parseCpuQuota, parseCpuStat } from "./cpu-quota.js";

describe("--cpu-quota", () => {
  it("parses a budget per role and refuses what the kernel or the mesh would not take", () => {
    assert.deepEqual(
      [...parseCpuQuota("gateway=0.25, sequencer=0.5")],
      [
        ["gateway", 0.25],
        ["sequencer", 0.5],
      ],
    );
    assert.throws(() => parseCpuQuota("gatway=0.25"), /role gatway is not one of/);
    assert.throws(() => parseCpuQuota("gateway=0.05"), /from 0.1 to 1024/);
    assert.throws(() => parseCpuQuota("gateway=0.2,gateway=0.3"), /named twice/);
    assert.throws(() => parseCpuQuota("gateway"), /ROLE=CORES/);
  });

  it("reads throttling from cgroup v1's and v2's cpu.stat", () => {
    assert.deepEqual(
      parseCpuStat("nr_periods 120\nnr_throttled 30\nthrottled_time 1500000000\nnr_bursts 0\n"),
      {
        periods: 120,
        throttled: 30,
        throttledSeconds: 1.5,
      },
    );
    assert.deepEqual(
      parseCpuStat("usage_usec 9\nnr_periods 40\nnr_throttled 4\nthrottled_usec 250000\nnr_bursts 0\n"),
      { periods: 40, throttled: 4, throttledSeconds: 0.25 },
    );
  });

  it("finds v1's cpu hierarchy before v2's, and v2's only when it has the cpu controller", async () => {
    const root = await mkdtemp(join(tmpdir(), "bench-cgroup-"));
    try {
      assert.equal(findCpuController(root), undefined);
      writeFileSync(join(root, "cgroup.controllers"), "memory pids\n");
      assert.equal(findCpuController(root), undefined);
      writeFileSync(join(root, "cgroup.controllers"), "cpuset cpu io memory pids\n");
      assert.deepEqual(findCpuController(root), { version: 2, root });
      mkdirSync(join(root, "cpu"));
      writeFileSync(join(root, "cpu", "cpu.cfs_quota_us"), "-1\n");
      assert.deepEqual(findCpuController(root), { version: 1, root: join(root, "cpu") });
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  it("writes v2's cpu.max and enables cpu for the children", async () => {
    const root = await mkdtemp(join(tmpdir(), "bench-cgroup-"));
    try {
      const quotas = CpuQuotas.apply(
        new Map([["sequencer", 0.25]]),
        [
          { name: "sequencer-0", role: "sequencer", pid: 4242 },
          { name: "gateway-0", role: "gateway", pid: 4343 },
        ],
        { version: 2, root },
      );
      const parent = join(root, `switchboard-bench-${process.pid}`);
      assert.equal(readFileSync(join(parent, "cgroup.subtree_control"), "utf8"), "+cpu");
      assert.equal(readFileSync(join(parent, "sequencer-0", "cpu.max"), "utf8"), "2500 10000");
      assert.equal(readFileSync(join(parent, "sequencer-0", "cgroup.procs"), "utf8"), "4242");
      assert.equal(existsSync(join(parent, "gateway-0")), false, "a role not named keeps the whole machine");
      assert.deepEqual(
        quotas.budgeted.map((b) => [b.name, b.cores]),
        [["sequencer-0", 0.25]],
      );
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  const controller = process.platform === "linux" ? findCpuController() : undefined;
  const skip = budgetable(controller);
  it("holds a real process, and the threads it starts later, to its budget", { skip }, async () => {
    // An idle main thread that starts a spinning worker thread when told: the thread is born
    // after the budget was set, as a service's threads may be.
    const child = spawn(
      process.execPath,
      [
        "-e",
        `const { Worker } = require("node:worker_threads");
         process.stdin.once("data", () => {
           new Worker("for (;;) {}", { eval: true }).once("online", () => process.stdout.write("spinning\\n"));
         });`,
      ],
      { stdio: ["pipe", "pipe", "inherit"] },
    );
    const exited = once(child, "exit");
    let quotas: CpuQuotas | undefined;
    try {
      await once(child, "spawn");
      quotas = CpuQuotas.apply(
        new Map([["gateway", 0.2]]),
        [{ name: "gateway-0", role: "gateway", pid: child.pid! }],
        controller,
      );
      const dir = quotas.budgeted[0]!.dir;
      const started = once(child.stdout!, "data");
      child.stdin!.write("go\n");
      await started;
      // The kernel counts a period as throttled when the process spent its 2 ms of it.
      let throttled = 0;
      for (let i = 0; i < 100 && throttled === 0; i++) {
        await sleep(50);
        throttled = quotas.throttling().get("gateway-0")?.throttled ?? 0;
      }
      assert.ok(throttled > 0, "a spinning thread on a fifth of a CPU was never throttled");
      const name = dir.split("/").slice(-2).join("/");
      const tasks = readdirSync(`/proc/${child.pid}/task`);
      assert.ok(tasks.length > 1);
      for (const tid of tasks) {
        const cgroups = readFileSync(`/proc/${child.pid}/task/${tid}/cgroup`, "utf8");
        assert.ok(cgroups.includes(name), `thread ${tid} is outside ${name}: ${cgroups}`);
      }
      child.kill("SIGKILL");
      await exited;
      quotas.release();
      assert.equal(existsSync(dir), false);
      assert.equal(existsSync(join(dir, "..")), false);
    } finally {
      child.kill("SIGKILL");
      quotas?.release();
    }
  });
});

/** Why the real test cannot run here, or false: Linux, a cpu controller, and a writable one. */
function budgetable(controller: ReturnType<typeof findCpuController>): string | false {
  if (process.platform !== "linux") return "cgroups are Linux's";
  if (controller === undefined) return "no cgroup cpu controller under /sys/fs/cgroup";
  const probe = join(controller.root, `switchboard-bench-probe-${process.pid}`);
  try {
    mkdirSync(probe);
    rmdirSync(probe);
    return false;
  } catch (err) {
    return `cannot make a cgroup under ${controller.root}: ${(err as Error).message}`;
  }
}
