import { pino } from "pino";
import { activeTraceIds } from "./telemetry.js";

/** The structured logger every service receives. Never log payloads, secrets or tokens. */
export type Logger = pino.Logger;

/** Options for the process logger. */
export interface LogOptions {
  /** pino level name ("info", "debug", "silent", ...). */
  level: string;
  /** Static fields on every line (for example the role). */
  base?: Record<string, unknown>;
}

/** Creates the process logger: JSON lines on stderr, so stdout stays free for CLI output. */
export function createLogger(options: LogOptions): Logger {
  return pino(
    {
      level: options.level,
      base: options.base ?? {},
      redact: { paths: ["token", "secret", "payload", "*.token", "*.secret", "*.payload"], remove: true },
      // Every line logged inside a traced operation names its trace, so logs and traces join up.
      mixin: () => activeTraceIds() ?? {},
    },
    pino.destination({ fd: 2, sync: false }),
  );
}
