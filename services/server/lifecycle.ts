import { chmod, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Config } from "../common/config.js";
import { newSecret } from "../common/ids.js";
import type { Logger } from "../common/log.js";
import type { StoreEngine } from "../store/types.js";

/**
 * Shutdown steps, run in reverse order of registration: what a step depends on was opened
 * before it, so it is closed after it.
 */
export class Closers {
  private readonly steps: Array<{ name: string; run: () => unknown }> = [];
  add(name: string, run: () => unknown): void {
    this.steps.push({ name, run });
  }
  async run(log: Logger): Promise<void> {
    for (const step of this.steps.splice(0).reverse()) {
      try {
        await step.run();
      } catch (err) {
        log.warn({ err, step: step.name }, "shutdown step failed");
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
