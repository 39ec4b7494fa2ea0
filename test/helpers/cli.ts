import assert from "node:assert/strict";
import type { PassThrough } from "node:stream";
import { Command } from "commander";
import { type CliIo, registerClientCommands } from "../../sdk/cli/commands.js";
import { TempServerSuite } from "./fixture.js";

/** One CLI command running in this process, with its output as it comes. */
export interface CliRun {
  out: string[];
  err: string[];
  /** Resolves with the exit code (0 unless the command failed); rejects on a usage error. */
  done: Promise<number>;
}

/** The outcome of a command that ran to its end. */
export interface CliRan {
  code: number;
  out: string[];
  err: string[];
}

export interface CliExtra {
  input?: PassThrough;
  interrupted?: Promise<void>;
  /** Keeps commander's usage errors off the test's stderr (they still reject `done`). */
  quietUsage?: boolean;
}

/** Starts a command as `switchboard ...args --server serverUrl` would, in this process. */
export function startCli(serverUrl: string, args: string[], extra: CliExtra = {}): CliRun {
  const out: string[] = [];
  const err: string[] = [];
  let code = 0;
  const io: CliIo = {
    out: (l) => out.push(...l.split("\n")),
    err: (l) => err.push(...l.split("\n")),
    exit: (c) => {
      code = c;
    },
    isTTY: false,
    ...(extra.input !== undefined && { input: extra.input }),
    ...(extra.interrupted !== undefined && { interrupted: extra.interrupted }),
  };
  const program = new Command("switchboard").exitOverride();
  if (extra.quietUsage === true) program.configureOutput({ writeErr: () => {} });
  registerClientCommands(program, io);
  const done = program.parseAsync([...args, "--server", serverUrl], { from: "user" }).then(() => code);
  return { out, err, done };
}

/** Runs a command to its end. */
export async function runCli(serverUrl: string, args: string[], extra: CliExtra = {}): Promise<CliRan> {
  const r = startCli(serverUrl, args, extra);
  return { code: await r.done, out: r.out, err: r.err };
}

/** Runs a command that must succeed; its output lines. */
export async function cliOk(serverUrl: string, args: string[]): Promise<string[]> {
  const r = await runCli(serverUrl, args);
  assert.equal(r.code, 0, `switchboard ${args.join(" ")} failed: ${r.err.join("\n")}`);
  return r.out;
}

/** A server process in a temporary directory for the suite, and the CLI against its current server. */
export class CliServerSuite extends TempServerSuite {
  readonly start = (args: string[], extra: CliExtra = {}): CliRun => startCli(this.server.url, args, extra);
  readonly cli = (...args: string[]): Promise<CliRan> => runCli(this.server.url, args);
  readonly ok = (...args: string[]): Promise<string[]> => cliOk(this.server.url, args);
}
