import { existsSync } from "node:fs";
import { join } from "node:path";
import type { ExitStatus } from "./supervisor.js";

// How the launcher finds the program it runs, watches processes it did not spawn itself, and
// stops what it runs within a deadline.

/**
 * The checkout (or image) root: the directory above this file that holds bin/switchboard.js. From
 * the sources that is two levels up; from the compiled build (dist/services/mesh) three.
 */
export function findRoot(): string {
  for (const up of ["../../", "../../../"]) {
    const dir = new URL(up, import.meta.url).pathname;
    if (existsSync(join(dir, "bin/switchboard.js"))) return dir.replace(/\/$/, "");
  }
  throw new Error("cannot find bin/switchboard.js above services/mesh");
}

/** The checkout (or image) root the mesh runs bin/switchboard.js from. */
export const root = findRoot();

/**
 * Watches a process this program did not spawn itself (the servers' module holds its handle) by
 * its PID, every 250 ms; the exit status is not visible that way.
 */
export function watchPid(pid: number): { exited: Promise<ExitStatus>; cancel: () => void } {
  let cancel = (): void => {};
  const exited = new Promise<ExitStatus>((resolve) => {
    const timer = setInterval(() => {
      try {
        process.kill(pid, 0);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ESRCH") return;
        clearInterval(timer);
        resolve({ code: null, signal: null, note: "watched by its PID" });
      }
    }, 250);
    timer.unref();
    cancel = () => {
      clearInterval(timer);
      resolve({ code: null, signal: null, deliberate: true });
    };
  });
  return { exited, cancel };
}

/** Waits for `promise`, but no later than `deadline` (epoch milliseconds). */
export async function withDeadline(promise: Promise<unknown>, deadline: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    promise.catch(() => {}),
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, Math.max(0, deadline - Date.now()));
    }),
  ]);
  clearTimeout(timer);
}

/** Stops a backend with SIGTERM, and SIGKILL if it is still there at the deadline. */
export async function stopBackend(
  server: { stop(signal?: NodeJS.Signals): Promise<void> },
  deadline: number,
): Promise<void> {
  const timer = setTimeout(() => void server.stop("SIGKILL"), Math.max(0, deadline - Date.now()));
  await server.stop("SIGTERM");
  clearTimeout(timer);
}
