import { chmod, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Config } from "../common/config.js";
import { newSecret } from "../common/ids.js";
import type { Logger } from "../common/log.js";
import type { StoreEngine } from "../store/types.js";

/** How long one shutdown step may take before the next one runs anyway, in milliseconds. */
export const CLOSE_STEP_TIMEOUT_MS = 15_000;

/**
 * Shutdown steps, run in reverse order of registration: what a step depends on was opened
 * before it, so it is closed after it. Each step has a deadline: a store or a connection that
 * hangs (a database that stopped answering, a disk that blocks) must not keep the process from
 * stopping; what it held is then left to the operating system, and the log says which step.
 */
export class Closers {
  private readonly steps: Array<{ name: string; run: () => unknown }> = [];
  add(name: string, run: () => unknown): void {
    this.steps.push({ name, run });
  }
  async run(log: Logger, stepTimeoutMs = CLOSE_STEP_TIMEOUT_MS): Promise<void> {
    for (const step of this.steps.splice(0).reverse()) {
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<"late">((resolve) => {
        timer = setTimeout(() => resolve("late"), stepTimeoutMs);
      });
      try {
        const outcome = await Promise.race([Promise.resolve().then(step.run), late]);
        if (outcome === "late") {
          log.error(
            { step: step.name, timeoutMs: stepTimeoutMs },
            "shutdown step did not finish in time; going on",
          );
        }
      } catch (err) {
        log.warn({ err, step: step.name }, "shutdown step failed");
      } finally {
        clearTimeout(timer);
      }
    }
  }
}

/**
 * Why the process is not ready: each part that can be unready adds a check, and /readyz lists
 * the problems in the order the checks were added.
 */
export class Readiness {
  private readonly checks: Array<() => string | undefined> = [];
  add(check: () => string | undefined): void {
    this.checks.push(check);
  }
  problems(): string[] {
    return this.checks.map((check) => check()).filter((p): p is string => !!p);
  }
}

/**
 * The store's readiness check: why its writes are failing (a full disk), for engines that can
 * tell (the embedded one; StoreEngine leaves it optional by shape until every engine reports).
 */
export function storeWriteCheck(store: StoreEngine): () => string | undefined {
  const reporting = store as StoreEngine & { writeProblem?: () => string | undefined };
  return () => reporting.writeProblem?.();
}

/**
 * The access token key: configured, or generated once into the data directory (readable by the
 * owner only) so tokens survive restarts of a single-process deployment.
 */
export async function tokenKey(config: Config): Promise<Uint8Array> {
  if (config.tokenKey !== undefined) return config.tokenKey;
  const path = join(config.dataDir, "token.key");
  try {
    return Buffer.from((await readFile(path, "utf8")).trim(), "base64url");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    const key = newSecret(32);
    await writeFile(path, `${key}\n`, { mode: 0o600, flag: "wx" });
    await chmod(path, 0o600);
    return Buffer.from(key, "base64url");
  }
}
