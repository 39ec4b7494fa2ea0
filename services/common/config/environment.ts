/**
 * The process environment and the settings file: the one place in services/ that reads
 * process.env. Everything else receives an Env (loadConfig's argument) or the Config built from it.
 */
import type { Env } from "./schema.js";
import { readSettingsFile } from "./settings-file.js";

/** The variables a launcher forwards to the processes it starts. */
const SETTING_PREFIX = /^(SWITCHBOARD|SCYLLA)_/;

/**
 * This process's environment (live, not a copy). Besides settings it holds what child processes
 * need to run (PATH and the like), which is why a launcher passes it on whole.
 */
export function environment(): NodeJS.ProcessEnv {
  return process.env;
}

/**
 * The settings of a start-up: a settings file's (when one is named), with the environment over
 * them, as a copy the caller may change.
 */
export async function settingsEnvironment(
  file: string | undefined,
): Promise<Record<string, string | undefined>> {
  return file === undefined ? { ...process.env } : { ...(await readSettingsFile(file)), ...process.env };
}

/** The SWITCHBOARD_* and SCYLLA_* variables of an environment, set ones only. */
export function settingVariables(env: Env = environment()): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (v !== undefined && SETTING_PREFIX.test(k)) out[k] = v;
  return out;
}
