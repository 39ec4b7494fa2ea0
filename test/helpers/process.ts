import { spawn } from "node:child_process";

/** What a finished child process printed, and how it exited. */
export interface Finished {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs node with these arguments to its end, collecting its output. */
export function runNode(args: string[], options: { cwd: string; env: NodeJS.ProcessEnv }): Promise<Finished> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, args, options);
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    // "close", not "exit": the output may still be in the pipes when the process exits.
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

const root = new URL("../../", import.meta.url).pathname;

/**
 * Runs the `switchboard` command (bin/switchboard.js) as its own process, as an operator or a
 * user would, with exactly this environment, to its end.
 */
export function runSwitchboard(args: readonly string[], env: NodeJS.ProcessEnv): Promise<Finished> {
  return runNode([`${root}bin/switchboard.js`, ...args], { cwd: root, env });
}
