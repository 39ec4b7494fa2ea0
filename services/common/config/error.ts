/**
 * A setting that cannot be used: a start-up failure, not a request's. It is never mapped to a wire
 * code (the process has no clients yet); the CLI prints its message and exits with status 1.
 * Messages name the variable (or the loadConfig field) so the operator knows what to change.
 */
export class ConfigurationError extends Error {
  override readonly name = "ConfigurationError";
}

/** Stops start-up with a message in the "configuration: ..." form most settings use. */
export function fail(message: string): never {
  throw new ConfigurationError(`configuration: ${message}`);
}
