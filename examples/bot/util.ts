import { setTimeout as sleep } from "node:timers/promises";

/** Where the bot writes what it does (stdout in main.ts). */
export type Log = (line: string) => void;

/** Exponential backoff with full jitter: uniform in [0, min(30 s, 250 ms * 2^attempt)). */
export function backoffMs(attempt: number): number {
  return Math.floor(Math.random() * Math.min(30_000, 250 * 2 ** Math.min(attempt, 10)));
}

/** Waits ms milliseconds, or less if the bot is stopping. */
export async function pause(ms: number, signal: AbortSignal): Promise<void> {
  await sleep(ms, undefined, { signal }).catch(() => {});
}
