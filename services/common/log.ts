import { createRequire } from "node:module";
import { format } from "node:util";
import { pino } from "pino";
import { activeTraceIds } from "./telemetry.js";

/** The structured logger every service receives. Never log payloads, secrets or tokens. */
export type Logger = pino.Logger;

/** How log lines are written: one JSON object per line, or lines for people. */
export type LogFormat = "json" | "pretty";

/** Options for the process logger. */
export interface LogOptions {
  /** pino level name ("info", "debug", "silent", ...). */
  level: string;
  /** Static fields on every line (for example the role). */
  base?: Record<string, unknown>;
  /** The format; by default chosen by logFormatFor(process.stderr). */
  format?: LogFormat;
}

/**
 * Lines for people when the log goes to a terminal, JSON lines for machines everywhere else (a
 * file, a pipe, a container runtime). The log's own stream decides, stderr, since that is where
 * it is written: `switchboard start > out.txt` on a terminal still shows readable logs.
 */
export function logFormatFor(stream: { isTTY?: boolean }): LogFormat {
  return stream.isTTY === true ? "pretty" : "json";
}

// pino-pretty is loaded only for a terminal: its dependencies are no cost to processes that log
// JSON (every deployed one), and `require` keeps createLogger synchronous.
const require = createRequire(import.meta.url);

/** Creates the process logger on stderr, so stdout stays free for CLI output. */
export function createLogger(options: LogOptions): Logger {
  const format = options.format ?? logFormatFor(process.stderr);
  const destination =
    format === "pretty"
      ? // In this thread, as a stream, not as a pino transport (a worker thread per process):
        // it is only used on a terminal, at the pace people read. Like pino.destination below it
        // writes through sonic-boom, which drops lines to a closed pipe instead of throwing.
        (require("pino-pretty") as typeof import("pino-pretty"))({
          destination: 2,
          sync: false,
          translateTime: "SYS:HH:MM:ss.l",
          // The same on every line of one process; the JSON log keeps them.
          ignore: "pid,hostname,role,instance",
          singleLine: true,
        })
      : pino.destination({ fd: 2, sync: false });
  return pino(
    {
      level: options.level,
      base: options.base ?? {},
      redact: { paths: ["token", "secret", "payload", "*.token", "*.secret", "*.payload"], remove: true },
      // Every line logged inside a traced operation names its trace, so logs and traces join up.
      mixin: () => activeTraceIds() ?? {},
    },
    destination,
  );
}

/**
 * Routes what libraries write with console.error and console.warn through the process log, as
 * JSON lines at error and warn level, and returns how to undo it. lmdb-js reports a failed commit
 * (a full disk: EIO) with console.error and a raw stack, beside the rejection it also hands its
 * caller; without this, an operator reading the log finds lines that are not log lines. Only for
 * a process's own server (the CLI's start), never inside tests, whose console is the runner's.
 */
export function captureConsole(log: Logger): () => void {
  const original = { error: console.error, warn: console.warn };
  const route =
    (level: "error" | "warn") =>
    (...args: unknown[]) => {
      const err = args.find((a): a is Error => a instanceof Error);
      log[level]({ ...(err && { err }), console: format(...args) }, "a library wrote to the console");
    };
  console.error = route("error");
  console.warn = route("warn");
  return () => {
    console.error = original.error;
    console.warn = original.warn;
  };
}
