/**
 * Restarts the mesh's processes when they die, as Kubernetes would restart a pod's container:
 * with a growing delay between attempts (so a process that crashes at start-up does not spin),
 * the delay forgotten once a process has stayed up long enough, and a bound on restarts within a
 * window, after which the process is given up on (loudly) while every other process keeps running.
 * It knows nothing of what it restarts: each unit hands it a start function and the exit of its
 * running incarnation.
 */

/** How a process ended, as far as the launcher can tell. */
export interface ExitStatus {
  /** The exit code, or null when it was killed by a signal or the launcher cannot see it. */
  code: number | null;
  /** The signal that killed it, or null. */
  signal: NodeJS.Signals | null;
  /** True when the launcher itself stopped it on purpose (a shutdown, a test's kill): no restart. */
  deliberate?: boolean;
  /** Why nothing more precise is known (a server watched by its PID only). */
  note?: string;
}

/** One running incarnation of a supervised process. */
export interface Incarnation {
  pid: number;
  /** Resolves once this incarnation has ended. */
  exited: Promise<ExitStatus>;
}

/** When and how often to restart. */
export interface RestartPolicy {
  /** The delay before the first restart, in milliseconds (default 500). */
  initialDelayMs: number;
  /** The longest delay between restarts, in milliseconds; each attempt doubles it up to this (default 30,000). */
  maxDelayMs: number;
  /** A process that stayed up this long (milliseconds) starts again from the initial delay (default 60,000). */
  resetAfterMs: number;
  /** The most restarts of one process within `windowMs`; one more and it is given up on (default 10). */
  maxRestarts: number;
  /** The window `maxRestarts` counts over, in milliseconds (default 600,000: ten minutes). */
  windowMs: number;
}

export const DEFAULT_RESTART_POLICY: RestartPolicy = {
  initialDelayMs: 500,
  maxDelayMs: 30_000,
  resetAfterMs: 60_000,
  maxRestarts: 10,
  windowMs: 600_000,
};

/** One process the supervisor restarts. */
export interface Supervised {
  /** Its name in the log lines: "gateway-0", "nats-server". */
  name: string;
  /**
   * Starts a new incarnation and resolves once it serves. Rejects if it cannot, having made sure
   * the failed attempt's process is gone (the attempt counts as a death).
   */
  start(): Promise<Incarnation>;
}

/** The delay before restart number `attempt` (1-based): initial, doubled per attempt, capped. */
export function restartDelayMs(policy: RestartPolicy, attempt: number): number {
  return Math.min(policy.maxDelayMs, policy.initialDelayMs * 2 ** Math.max(0, attempt - 1));
}

/** "exit code 1", "signal SIGKILL". */
export function describeExit(status: ExitStatus): string {
  const how =
    status.signal !== null
      ? `signal ${status.signal}`
      : status.code !== null
        ? `exit code ${status.code}`
        : "exit status unknown";
  return status.note ? `${how} (${status.note})` : how;
}

const seconds = (ms: number): string => `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s`;

/** Watches processes and restarts them by its policy; `say` receives one line per event. */
export class Supervisor {
  private stopping = false;
  private readonly timers = new Set<{ timer: NodeJS.Timeout; wake: () => void }>();
  private readonly watched = new Set<string>();
  private readonly given = new Set<string>();
  /** Restarts in flight, so a shutdown can wait for them and stop what they started. */
  private readonly starting = new Set<Promise<unknown>>();

  constructor(
    private readonly policy: RestartPolicy,
    private readonly say: (line: string) => void,
  ) {}

  /** True while `name` is watched (false once it was given up on or stopped deliberately). */
  isWatching(name: string): boolean {
    return this.watched.has(name);
  }

  /** The processes given up on, for a status line. */
  get givenUp(): string[] {
    return [...this.given];
  }

  /** Watches a running incarnation; when it dies (not deliberately), restarts it by the policy. */
  watch(unit: Supervised, running: Incarnation): void {
    if (this.stopping || this.watched.has(unit.name)) return;
    this.watched.add(unit.name);
    this.given.delete(unit.name);
    void this.loop(unit, running);
  }

  private async loop(unit: Supervised, first: Incarnation): Promise<void> {
    // Forgotten in the same step as the loop ends, so a `watch` right after a deliberate kill's
    // exit (a test's restart) arms it again.
    try {
      await this.restartForever(unit, first);
    } finally {
      this.watched.delete(unit.name);
    }
  }

  private async restartForever(unit: Supervised, first: Incarnation): Promise<void> {
    let running = first;
    let upSince = Date.now();
    // Consecutive restarts since the process last stayed up `resetAfterMs`: the backoff's exponent.
    let attempt = 0;
    // When each restart happened, for the bound per window.
    const restarts: number[] = [];
    for (;;) {
      const status = await running.exited;
      if (this.stopping || status.deliberate) return;
      const upMs = Date.now() - upSince;
      if (upMs >= this.policy.resetAfterMs) attempt = 0;
      this.say(`${unit.name} (pid ${running.pid}) died: ${describeExit(status)} after ${seconds(upMs)} up`);
      for (;;) {
        const now = Date.now();
        while (restarts.length > 0 && restarts[0]! <= now - this.policy.windowMs) restarts.shift();
        if (restarts.length >= this.policy.maxRestarts) {
          this.given.add(unit.name);
          this.say(
            `GIVING UP on ${unit.name}: it died ${restarts.length + 1} times within ` +
              `${seconds(this.policy.windowMs)}; it stays down, every other process keeps running. ` +
              `Read its log, fix the cause, then restart the mesh.`,
          );
          return;
        }
        attempt++;
        const delay = restartDelayMs(this.policy, attempt);
        this.say(`restarting ${unit.name} in ${seconds(delay)} (attempt ${attempt})`);
        if (!(await this.sleep(delay))) return;
        restarts.push(Date.now());
        try {
          const start = unit.start();
          this.starting.add(start);
          try {
            running = await start;
          } finally {
            this.starting.delete(start);
          }
        } catch (err) {
          if (this.stopping) return;
          const message = err instanceof Error ? err.message.split("\n")[0] : String(err);
          this.say(`${unit.name} failed to start (attempt ${attempt}): ${message}`);
          continue;
        }
        upSince = Date.now();
        this.say(`${unit.name} is back (pid ${running.pid}, attempt ${attempt})`);
        break;
      }
    }
  }

  /** Waits `ms`; resolves false at once if the supervisor is stopped meanwhile. */
  private sleep(ms: number): Promise<boolean> {
    if (this.stopping) return Promise.resolve(false);
    return new Promise((resolve) => {
      const entry = {
        timer: setTimeout(() => {
          this.timers.delete(entry);
          resolve(!this.stopping);
        }, ms),
        wake: () => resolve(false),
      };
      this.timers.add(entry);
    });
  }

  /**
   * Restarts nothing from now on: pending restarts are cancelled, and restarts already starting a
   * process are waited for (their own start-up timeouts bound the wait) so the caller can stop
   * what they started.
   */
  async stop(): Promise<void> {
    this.stopping = true;
    for (const entry of this.timers) {
      clearTimeout(entry.timer);
      entry.wake();
    }
    this.timers.clear();
    await Promise.allSettled([...this.starting]);
  }
}
