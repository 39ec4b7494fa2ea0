/** Browsers: which web origins may call the device API (CORS). */
import { z } from "zod";
import { fail } from "./error.js";
import { check, type Env, listOf, without } from "./schema.js";

/** What the network face allows web pages (docs/protocol.md, "The web binding"). */
export interface WebConfig {
  /**
   * Origins (`https://app.example.com`, scheme, host and port only) whose pages may call the
   * device API from a browser; `["*"]` allows every origin. Empty: no CORS headers, so only a
   * page served from the server's own origin (through a proxy) can call it.
   */
  corsOrigins: string[];
}

/** The web settings' variables. */
export const webVariables = z.object({
  SWITCHBOARD_CORS_ORIGINS: listOf(),
});

/** The web settings from explicit input over the environment; each origin checked. */
export function loadWeb(input: Partial<WebConfig> | undefined, env: Env): WebConfig {
  const vars = check(webVariables, without(env, { SWITCHBOARD_CORS_ORIGINS: input?.corsOrigins }));
  const origins = input?.corsOrigins ?? vars.SWITCHBOARD_CORS_ORIGINS;
  if (origins.includes("*") && origins.length > 1) {
    fail('SWITCHBOARD_CORS_ORIGINS: "*" allows every origin and stands alone');
  }
  for (const origin of origins) {
    if (origin === "*") continue;
    let parsed: URL | undefined;
    try {
      parsed = new URL(origin);
    } catch {
      parsed = undefined;
    }
    // Browsers send the serialized origin; anything else (a path, a trailing slash, upper case)
    // would never match one.
    if (parsed === undefined || !/^https?:$/.test(parsed.protocol) || parsed.origin !== origin) {
      const hint =
        parsed !== undefined && /^https?:$/.test(parsed.protocol) ? ` (write "${parsed.origin}")` : "";
      fail(`SWITCHBOARD_CORS_ORIGINS: not an http(s) origin: "${origin}"${hint}`);
    }
  }
  return { corsOrigins: origins };
}
