import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

/**
 * --cpu-quota: a CPU budget of its own for each mesh process of the roles named, enforced by the
 * kernel's CFS bandwidth control (a cgroup per process). The issue's scaling run pins roles to
 * cores of their own; a 2-core machine has too few cores for that, but it can give every gateway
 * and sequencer a quarter of one, and then watch throughput follow their count while the rest of
 * the machine (fanout, presence, NATS, Redis, the bench) has room to spare.
 *
 * The period is 10 ms rather than the kernel's 100 ms: a process that spends its quota waits for
 * the next period, so a long period turns a budget into stalls of up to 75 ms at a quarter of a
 * core. Linux only; cgroup v1's cpu controller (cpu.cfs_quota_us) or v2's (cpu.max), as root.
 */

/** The roles a budget can name: the mesh's services and its two backends. */
export const QUOTA_ROLES = [
  "gateway",
  "sequencer",
  "fanout",
  "presence",
  "accounts",
  "nats",
  "redis",
] as const;

/** CFS period, in microseconds. */
export const QUOTA_PERIOD_US = 10_000;

/** The kernel refuses quotas under 1 ms. */
const MIN_QUOTA_US = 1_000;

/** "gateway=0.25,sequencer=0.25" as role -> cores (fractions of one CPU; 1 is a whole CPU). */
export function parseCpuQuota(raw: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const part of raw.split(",")) {
    const m = /^\s*([a-z]+)\s*=\s*([0-9.]+)\s*$/.exec(part);
    if (m === null) throw new Error(`--cpu-quota: ROLE=CORES[,ROLE=CORES...], got ${JSON.stringify(part)}`);
    const [, role, coresText] = m as unknown as [string, string, string];
    if (!(QUOTA_ROLES as readonly string[]).includes(role))
      throw new Error(`--cpu-quota: role ${role} is not one of ${QUOTA_ROLES.join(", ")}`);
    if (out.has(role)) throw new Error(`--cpu-quota: ${role} is named twice`);
    const cores = Number(coresText);
    if (!Number.isFinite(cores) || cores * QUOTA_PERIOD_US < MIN_QUOTA_US || cores > 1024)
      throw new Error(
        `--cpu-quota: ${role}'s cores must be from ${MIN_QUOTA_US / QUOTA_PERIOD_US} to 1024, got ${coresText}`,
      );
    out.set(role, cores);
  }
  return out;
}

/** Where the cpu controller is mounted, and which interface it speaks. */
export interface CpuController {
  version: 1 | 2;
  /** The hierarchy's root: budgets are made in a directory under it, and processes go back to it. */
  root: string;
}

/** The cpu controller under `cgroupRoot`: v1's cpu hierarchy, else v2's unified one if it has cpu. */
export function findCpuController(cgroupRoot = "/sys/fs/cgroup"): CpuController | undefined {
  for (const dir of [join(cgroupRoot, "cpu"), join(cgroupRoot, "cpu,cpuacct")]) {
    if (existsSync(join(dir, "cpu.cfs_quota_us"))) return { version: 1, root: dir };
  }
  const controllers = join(cgroupRoot, "cgroup.controllers");
  if (existsSync(controllers) && readFileSync(controllers, "utf8").split(/\s+/).includes("cpu"))
    return { version: 2, root: cgroupRoot };
  return undefined;
}

/** A budgeted process's throttling so far, from its cgroup's cpu.stat. */
export interface Throttling {
  /** Periods in which the process ran. */
  periods: number;
  /** Periods in which it spent its quota and waited. */
  throttled: number;
  /** Time its run queues spent throttled, in seconds, summed over the CPUs (so it can exceed the wall time). */
  throttledSeconds: number;
}

/** Reads cpu.stat's counters (v1 gives throttled_time in ns, v2 throttled_usec). */
export function parseCpuStat(text: string): Throttling {
  const field = (name: string) => Number(new RegExp(`^${name} (\\d+)$`, "m").exec(text)?.[1] ?? 0);
  const ns = field("throttled_time");
  const us = field("throttled_usec");
  return {
    periods: field("nr_periods"),
    throttled: field("nr_throttled"),
    throttledSeconds: ns > 0 ? ns / 1e9 : us / 1e6,
  };
}

/** One process under a budget. */
export interface Budgeted {
  name: string;
  pid: number;
  cores: number;
  dir: string;
}

/**
 * The budgets of one run: a directory `switchboard-bench-<pid>` under the controller's root with
 * one cgroup per process. Threads a process starts later stay in its cgroup.
 */
export class CpuQuotas {
  private constructor(
    private readonly controller: CpuController,
    private readonly parent: string,
    readonly budgeted: readonly Budgeted[],
  ) {}

  /**
   * Puts each process whose role `spec` names into a cgroup of its own with that budget. Throws
   * (having undone what it did) when the controller is missing or not writable.
   */
  static apply(
    spec: ReadonlyMap<string, number>,
    processes: readonly { name: string; role: string; pid: number }[],
    controller: CpuController | undefined = findCpuController(),
  ): CpuQuotas {
    if (controller === undefined)
      throw new Error(
        "--cpu-quota: no cgroup cpu controller (cgroup v1's cpu or v2's cpu.max) under /sys/fs/cgroup",
      );
    const parent = join(controller.root, `switchboard-bench-${process.pid}`);
    const budgeted: Budgeted[] = [];
    const quotas = new CpuQuotas(controller, parent, budgeted);
    try {
      mkdirSync(parent);
      // v2 hands a controller to a cgroup's children only when its parent enables it.
      if (controller.version === 2) writeFileSync(join(parent, "cgroup.subtree_control"), "+cpu");
      for (const p of processes) {
        const cores = spec.get(p.role);
        if (cores === undefined) continue;
        const dir = join(parent, p.name);
        mkdirSync(dir);
        budgeted.push({ name: p.name, pid: p.pid, cores, dir });
        const quotaUs = String(Math.round(cores * QUOTA_PERIOD_US));
        if (controller.version === 1) {
          writeFileSync(join(dir, "cpu.cfs_period_us"), String(QUOTA_PERIOD_US));
          writeFileSync(join(dir, "cpu.cfs_quota_us"), quotaUs);
        } else {
          writeFileSync(join(dir, "cpu.max"), `${quotaUs} ${QUOTA_PERIOD_US}`);
        }
        // The process id moves every thread of the process.
        writeFileSync(join(dir, "cgroup.procs"), String(p.pid));
      }
    } catch (err) {
      quotas.release();
      throw new Error(
        `--cpu-quota: could not set the budgets under ${controller.root} (root is needed): ${err instanceof Error ? err.message : err}`,
      );
    }
    return quotas;
  }

  /** Each budgeted process's throttling so far, by name. */
  throttling(): Map<string, Throttling> {
    const out = new Map<string, Throttling>();
    for (const b of this.budgeted) {
      try {
        out.set(b.name, parseCpuStat(readFileSync(join(b.dir, "cpu.stat"), "utf8")));
      } catch {
        // Gone with its process.
      }
    }
    return out;
  }

  /** The line the bench logs when the budgets are set. */
  describe(): string {
    return `limited ${this.budgeted.map((b) => `${b.name} (pid ${b.pid}) to ${b.cores} of a CPU`).join(", ")} (CFS bandwidth, cgroup v${this.controller.version}, ${QUOTA_PERIOD_US / 1000} ms periods)`;
  }

  /** Moves any process still running back to the root and removes the cgroups. */
  release(): void {
    for (const b of this.budgeted) {
      try {
        const left = readFileSync(join(b.dir, "cgroup.procs"), "utf8").split("\n").filter(Boolean);
        for (const pid of left) writeFileSync(join(this.controller.root, "cgroup.procs"), pid);
      } catch {
        // Nothing to move.
      }
      removeDir(b.dir);
    }
    removeDir(this.parent);
  }
}

/** rmdir, as a cgroup is removed; a missing or busy one is left (its name says whose it was). */
function removeDir(dir: string): void {
  try {
    rmdirSync(dir);
  } catch {
    // Already gone, or a process is still in it.
  }
}
