/**
 * What `switchboard` does when the reader of its output goes away (`switchboard ... | head`).
 *
 * Node.js ignores SIGPIPE, so a write to a closed pipe fails with EPIPE as an 'error' event on
 * process.stdout (or stderr); unhandled, it ends the process with a stack trace. A command that
 * only prints should instead end quietly, as `git log | head` does, and a server must not end at
 * all: `switchboard start | head -1` reads the listening line and the server goes on serving, its
 * later lines going nowhere, until a signal stops it.
 */

/** "exit": end quietly with code 0 (commands that print results); "ignore": keep running (servers). */
export type ClosedOutputMode = "exit" | "ignore";

let mode: ClosedOutputMode = "exit";

/** Whether an error is the reader of a pipe having gone away (or a write after that). */
export function isClosedOutput(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === "EPIPE" || code === "ERR_STREAM_DESTROYED";
}

/**
 * Handles a closed stdout or stderr for the rest of the process. Other write errors are rethrown
 * as they would have been without a listener.
 */
export function handleClosedOutput(initial: ClosedOutputMode = "exit"): void {
  mode = initial;
  for (const stream of [process.stdout, process.stderr]) {
    stream.on("error", (err: Error) => {
      if (!isClosedOutput(err)) throw err;
      // Exit code 0, not 141 (128 + SIGPIPE): the reader had what it wanted, and a shell with
      // pipefail would otherwise call a successful `| head` a failure. A command that had
      // already failed keeps its code.
      if (mode === "exit") process.exit(process.exitCode ?? 0);
    });
  }
}

/** Switches to keeping the process running on a closed output (the server commands). */
export function keepRunningOnClosedOutput(): void {
  mode = "ignore";
}
