/**
 * Feature flags for A/B tests: each flag has named variants with weights, and every user is
 * assigned one variant of each by a hash of the flag and the user id (services/accounts/flags.ts),
 * so the assignment needs no storage and is the same on every server and every device.
 */
import { z } from "zod";
import { fail } from "./error.js";
import { check, type Env, intVariable, text } from "./schema.js";

/** One flag: its variants and their weights, sorted by variant name. */
export interface FeatureFlag {
  /** The flag's name. */
  name: string;
  /**
   * The variants, sorted by name (so reordering them in the configuration moves nobody), each
   * with its weight: a user gets a variant with probability weight / the flag's total.
   */
  variants: { name: string; weight: number }[];
}

/** The feature flags section. */
export interface FeatureFlagsConfig {
  /** The flags, sorted by name; empty when none is configured. */
  flags: FeatureFlag[];
  /** How long clients may keep an answer before asking again, in seconds. */
  cacheSeconds: number;
}

/** Flags at most. */
export const MAX_FLAGS = 256;
/** Variants of one flag at most. */
export const MAX_VARIANTS = 32;
/** The bytes of SWITCHBOARD_FEATURE_FLAGS at most. */
export const MAX_FLAGS_JSON_BYTES = 65_536;
/** A flag's total weight at most (weights are integers: percentages, per-mille, ...). */
export const MAX_TOTAL_WEIGHT = 1_000_000;
/** The longest clients may be told to cache assignments, in seconds (a day). */
export const MAX_CACHE_SECONDS = 86_400;

const NAME = /^[a-z0-9_.-]{1,64}$/;

/** The feature flags' variables. */
export const flagVariables = z.object({
  SWITCHBOARD_FEATURE_FLAGS: text(),
  SWITCHBOARD_FEATURE_FLAGS_CACHE_SECONDS: intVariable("SWITCHBOARD_FEATURE_FLAGS_CACHE_SECONDS", 300, true),
});

const FLAGS_JSON = z.record(z.string(), z.record(z.string(), z.number()));

/**
 * The flags of SWITCHBOARD_FEATURE_FLAGS: a JSON object from flag name to an object from variant
 * name to weight, for example {"new_composer": {"control": 50, "treatment": 50}}.
 */
export function parseFeatureFlags(json: string | undefined): FeatureFlag[] {
  if (json === undefined || json.trim() === "") return [];
  const label = "SWITCHBOARD_FEATURE_FLAGS";
  if (Buffer.byteLength(json) > MAX_FLAGS_JSON_BYTES) fail(`${label} is over ${MAX_FLAGS_JSON_BYTES} bytes`);
  let raw: unknown;
  try {
    raw = JSON.parse(json);
  } catch {
    fail(`${label} is not JSON`);
  }
  const parsed = FLAGS_JSON.safeParse(raw);
  if (!parsed.success)
    fail(`${label} must be an object of flags, each an object of variant names to weights (numbers)`);
  const flags: FeatureFlag[] = [];
  for (const [name, variants] of Object.entries(parsed.data)) {
    if (!NAME.test(name)) fail(`${label}: flag "${name}" is not 1 to 64 characters of a-z, 0-9, _ . -`);
    const entries = Object.entries(variants);
    if (entries.length < 1 || entries.length > MAX_VARIANTS)
      fail(`${label}: flag "${name}" needs 1 to ${MAX_VARIANTS} variants`);
    let total = 0;
    for (const [variant, weight] of entries) {
      if (!NAME.test(variant))
        fail(`${label}: variant "${variant}" of "${name}" is not 1 to 64 characters of a-z, 0-9, _ . -`);
      if (!Number.isInteger(weight) || weight < 0)
        fail(`${label}: the weight of "${name}"."${variant}" must be a non-negative integer`);
      total += weight;
    }
    if (total < 1 || total > MAX_TOTAL_WEIGHT)
      fail(`${label}: the weights of "${name}" must add up to 1 to ${MAX_TOTAL_WEIGHT}`);
    flags.push({
      name,
      variants: entries
        .map(([v, weight]) => ({ name: v, weight }))
        .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)),
    });
  }
  if (flags.length > MAX_FLAGS) fail(`${label}: at most ${MAX_FLAGS} flags`);
  return flags.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** The feature flags from the environment, checked. */
export function loadFeatureFlags(env: Env): FeatureFlagsConfig {
  const vars = check(flagVariables, env);
  const cacheSeconds = vars.SWITCHBOARD_FEATURE_FLAGS_CACHE_SECONDS;
  if (cacheSeconds > MAX_CACHE_SECONDS)
    fail(`SWITCHBOARD_FEATURE_FLAGS_CACHE_SECONDS must be at most ${MAX_CACHE_SECONDS}`);
  return { flags: parseFeatureFlags(vars.SWITCHBOARD_FEATURE_FLAGS), cacheSeconds };
}
