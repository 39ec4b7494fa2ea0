import { homedir } from "node:os";
import { join } from "node:path";

/**
 * The client commands' settings from the environment: the one place the SDK CLI reads
 * `process.env`. Read when a command runs, not when this module loads, so that a process (or a
 * test) that sets a variable before running a command is heard. A flag always wins over its
 * variable.
 *
 * - `SWITCHBOARD_URL` (flag `--server`): the URL of the server the commands talk to. Unset: an
 *   existing profile talks to the server it was made with; register and link use DEFAULT_SERVER.
 * - `SWITCHBOARD_PROFILE` (flag `--profile`): the profile directory (credentials, Signal keys,
 *   kept plaintexts). Unset: `~/.switchboard/profile`.
 */
export interface CliEnvironment {
  /** SWITCHBOARD_URL: the server's URL (`http://host:port`), or undefined when unset. */
  serverUrl: string | undefined;
  /** SWITCHBOARD_PROFILE: the profile directory, or undefined when unset. */
  profileDir: string | undefined;
}

/** The server a new profile (register, link) talks to when neither flag nor variable names one. */
export const DEFAULT_SERVER = "http://127.0.0.1:7420";

/** Reads the variables above; `env` is replaceable for tests. */
export function cliEnvironment(env: NodeJS.ProcessEnv = process.env): CliEnvironment {
  return { serverUrl: env.SWITCHBOARD_URL, profileDir: env.SWITCHBOARD_PROFILE };
}

/** The flags that override the variables (every client command takes them). */
interface LocationFlags {
  /** --server. */
  server?: string;
  /** --profile. */
  profile?: string;
}

/**
 * The server named by --server or SWITCHBOARD_URL, or undefined: an existing profile then talks
 * to the server it was made with.
 */
export function namedServer(flags: LocationFlags): string | undefined {
  return flags.server ?? cliEnvironment().serverUrl;
}

/** The server for a profile being made (register, link): named, else DEFAULT_SERVER. */
export function serverFor(flags: LocationFlags): string {
  return namedServer(flags) ?? DEFAULT_SERVER;
}

/** The profile directory: --profile, else SWITCHBOARD_PROFILE, else `~/.switchboard/profile`. */
export function profileFor(flags: LocationFlags): string {
  return flags.profile ?? cliEnvironment().profileDir ?? join(homedir(), ".switchboard", "profile");
}
