import type { ChildProcess } from "node:child_process";

/** `switchboard start` prints this line once it accepts connections; scripts wait for it. */
export const LISTENING_LINE = /listening on (http:\/\/\S+)/;

/**
 * Waits for a spawned `switchboard start` to print its URL. Rejects if it exits first or takes
 * longer than timeoutMs, quoting `recentLogs()` (its stderr) so the cause is in the failure.
 */
export function waitForListening(
  child: ChildProcess,
  recentLogs: () => string[],
  timeoutMs: number,
): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    let out = "";
    const timer = setTimeout(
      () => reject(new Error(`server did not start in ${timeoutMs / 1000} s:\n${recentLogs().join("\n")}`)),
      timeoutMs,
    );
    child.stdout?.setEncoding("utf8").on("data", (chunk: string) => {
      // Only the first lines matter; later output (say --trace-gc) is read and dropped.
      if (out.length > 64 * 1024) return;
      out += chunk;
      const match = LISTENING_LINE.exec(out);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]!);
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code} before listening:\n${recentLogs().join("\n")}`));
    });
  });
}
