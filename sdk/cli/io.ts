import { Code, ConnectError } from "@connectrpc/connect";

/** Where command output goes; replaceable so the commands can run inside tests. */
export interface CliIo {
  /** A line of results. */
  out(line: string): void;
  /** A line of diagnostics. */
  err(line: string): void;
  /** Ends the process (or records the code, in tests). */
  exit(code: number): void;
  /** Whether output is an interactive terminal (colours, line editing). */
  isTTY: boolean;
  /** Lines typed by the user; defaults to process.stdin. */
  input?: NodeJS.ReadableStream;
  /** Resolves when the user asks to stop (Ctrl-C); defaults to SIGINT/SIGTERM. */
  interrupted?: Promise<void>;
}

/** The process's own terminal: what `switchboard` uses outside tests. */
export const processIo: CliIo = {
  out: (line) => process.stdout.write(`${line}\n`),
  err: (line) => process.stderr.write(`${line}\n`),
  exit: (code) => {
    process.exitCode = code;
    // Let buffered output drain before the process ends.
    setImmediate(() => process.exit(code));
  },
  isTTY: process.stdout.isTTY === true,
};

/** Resolves when the user asks a long-running command (listen, chat) to stop. */
export function interrupted(io: CliIo): Promise<void> {
  if (io.interrupted !== undefined) return io.interrupted;
  return new Promise((resolve) => {
    process.once("SIGINT", () => resolve());
    process.once("SIGTERM", () => resolve());
  });
}

/** Wraps an action: one clear line on stderr and exit code 1 on failure. */
export function run<A extends unknown[]>(
  io: CliIo,
  action: (...args: A) => Promise<void>,
): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await action(...args);
    } catch (err) {
      io.err(`switchboard: ${describeError(err)}`);
      io.exit(1);
    }
  };
}

/** One line for people: what went wrong, with the gRPC code name where there is one. */
export function describeError(err: unknown): string {
  if (err instanceof ConnectError) {
    const hint =
      err.code === Code.Unavailable && /ECONNREFUSED|ENOTFOUND|ETIMEDOUT/.test(err.rawMessage)
        ? " (is the server running? see --server)"
        : "";
    const noKeys =
      err.code === Code.FailedPrecondition &&
      err.rawMessage.includes("no device of the conversation has keys")
        ? " (nobody there uses end-to-end encryption yet; a client without it is reached from a profile registered with --no-encryption)"
        : "";
    const invite =
      err.code === Code.PermissionDenied && err.rawMessage === "registration needs an invite"
        ? " (this server registers by invite only: ask its operator for one and pass --invite <token>)"
        : "";
    return `${err.rawMessage} [${Code[err.code] ?? err.code}]${hint}${noKeys}${invite}`;
  }
  return err instanceof Error ? err.message : String(err);
}
