import { execFileSync } from "node:child_process";
import { availableParallelism } from "node:os";

/**
 * --pin: the spawned server's main thread alone on CPU 0, and every other thread, the server's
 * (its store's write thread, V8's and libuv's) and the bench's, on CPU 1. On a machine whose
 * cores the bench shares with the server, this measures what the server's own thread does with a
 * core to itself, apart from the bench and the server's helper threads taking turns on it.
 *
 * Affinity is set once, when the send phase starts (every thread the run uses exists by then: the
 * write thread starts with registration's first write); a thread created later inherits its
 * creator's, so one the main thread starts would share CPU 0. Linux only, with util-linux's
 * `taskset`; a Linux process's main thread has the process's id as its thread id.
 */
export function checkPinnable(): void {
  if (process.platform !== "linux") throw new Error("--pin: Linux only (taskset)");
  if (availableParallelism() < 2) throw new Error("--pin: needs two CPUs or more");
  try {
    execFileSync("taskset", ["--version"], { stdio: "ignore", timeout: 5_000 });
  } catch {
    throw new Error("--pin: taskset (util-linux) is not installed");
  }
}

/** Pins as described above; returns the line the bench logs. */
export function pinServerMainThread(serverPid: number): string {
  const taskset = (args: string[]) => execFileSync("taskset", args, { stdio: "ignore", timeout: 5_000 });
  taskset(["-a", "-p", "-c", "1", String(process.pid)]);
  taskset(["-a", "-p", "-c", "1", String(serverPid)]);
  taskset(["-p", "-c", "0", String(serverPid)]);
  return `pinned the server's main thread (pid ${serverPid}) to CPU 0, its other threads and the bench's to CPU 1`;
}
