import { Command, InvalidArgumentError } from "commander";
import { registerClientCommands } from "../../sdk/cli/commands.js";
import { startServer } from "../server/index.js";

function port(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 65535)
    throw new InvalidArgumentError("a port number from 0 to 65535");
  return n;
}

const program = new Command("switchboard")
  .description("Switchboard: an open-source messaging backend")
  .showHelpAfterError();

program
  .command("start")
  .description("run every service in one process on the embedded storage")
  .option("--data-dir <dir>", "where the embedded store keeps its files (env SWITCHBOARD_DATA_DIR)")
  .option("--host <host>", "address to listen on (env SWITCHBOARD_HOST)")
  .option("--port <port>", "port to listen on, 0 for any free port (env SWITCHBOARD_PORT)", port)
  .option("--log-level <level>", "fatal, error, warn, info, debug or silent (env SWITCHBOARD_LOG_LEVEL)")
  .action(async (opts: { dataDir?: string; host?: string; port?: number; logLevel?: string }) => {
    const server = await startServer({
      ...(opts.dataDir !== undefined && { dataDir: opts.dataDir }),
      ...(opts.host !== undefined && { host: opts.host }),
      ...(opts.port !== undefined && { port: opts.port }),
      ...(opts.logLevel !== undefined && { logLevel: opts.logLevel }),
    });
    // Tests and scripts read this line to find the port.
    process.stdout.write(`switchboard listening on ${server.url} (data in ${server.config.dataDir})\n`);
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      process.stdout.write(`${signal}: shutting down\n`);
      server.close().then(
        () => process.exit(0),
        (err: unknown) => {
          console.error(err);
          process.exit(1);
        },
      );
    };
    process.on("SIGINT", () => stop("SIGINT"));
    process.on("SIGTERM", () => stop("SIGTERM"));
  });

registerClientCommands(program);

program.parseAsync(process.argv).catch((err: unknown) => {
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`switchboard: ${message}\n`);
  process.exit(1);
});
