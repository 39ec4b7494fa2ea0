import { readFile } from "node:fs/promises";
import { ConfigurationError } from "./error.js";

/** Settings a file may hold: the same names as the environment, so there is one list to learn. */
export const SETTING_NAME = /^(SWITCHBOARD|SCYLLA)_[A-Z0-9_]+$/;

/**
 * Reads a JSON settings file: an object of SWITCHBOARD_* and SCYLLA_* names to strings, numbers,
 * booleans or lists of strings (joined with commas). Anything else stops start-up with the file and
 * the key named, so a typo never silently falls back to a default.
 */
export async function readSettingsFile(path: string): Promise<Record<string, string>> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(await readFile(path, "utf8"));
  } catch (err) {
    throw new ConfigurationError(`settings file ${path}: ${(err as Error).message}`);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new ConfigurationError(`settings file ${path}: expected a JSON object of setting names to values`);
  }
  const settings: Record<string, string> = {};
  for (const [key, value] of Object.entries(parsed)) {
    if (!SETTING_NAME.test(key)) {
      throw new ConfigurationError(
        `settings file ${path}: "${key}" is not a setting name (SWITCHBOARD_* or SCYLLA_*)`,
      );
    }
    if (typeof value === "string") settings[key] = value;
    else if (typeof value === "number" || typeof value === "boolean") settings[key] = String(value);
    else if (Array.isArray(value) && value.every((v) => typeof v === "string"))
      settings[key] = value.join(",");
    else
      throw new ConfigurationError(
        `settings file ${path}: "${key}" must be a string, number, boolean or list of strings`,
      );
  }
  return settings;
}
