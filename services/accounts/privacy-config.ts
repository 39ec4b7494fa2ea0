import { InvalidInputError } from "../common/errors.js";
import type { PrivacyAudience } from "../store/types.js";

/**
 * The privacy settings that apply to a user until they choose their own. A user's stored record
 * holds only what they set, so changing a default here reaches every user who never chose.
 */
export interface PrivacyDefaults {
  /** Who may add a user to groups. */
  groupAdd: PrivacyAudience;
  /** Who may start a new direct conversation with a user. */
  directOpen: PrivacyAudience;
}

/**
 * Everyone, as WhatsApp ships: a new user must be reachable by someone who knows their username,
 * and "contacts" for new direct conversations would leave a new user unreachable by anyone they
 * share no group with. Operators of public deployments may tighten group adds to "contacts".
 */
export const defaultPrivacy: PrivacyDefaults = { groupAdd: "everyone", directOpen: "everyone" };

/** The audiences, in the order the docs and the CLI list them. */
export const PRIVACY_AUDIENCES: readonly PrivacyAudience[] = ["everyone", "contacts", "nobody"];

const ENV: Record<keyof PrivacyDefaults, string> = {
  groupAdd: "SWITCHBOARD_PRIVACY_GROUP_ADD_DEFAULT",
  directOpen: "SWITCHBOARD_PRIVACY_DIRECT_OPEN_DEFAULT",
};

/** Reads the defaults from explicit input over the environment over defaultPrivacy, validated. */
export function loadPrivacyDefaults(
  input: Partial<PrivacyDefaults> | undefined,
  env: NodeJS.ProcessEnv,
): PrivacyDefaults {
  const out: PrivacyDefaults = { ...defaultPrivacy };
  for (const key of Object.keys(ENV) as (keyof PrivacyDefaults)[]) {
    const raw = input?.[key] ?? env[ENV[key]];
    if (raw === undefined || raw === "") continue;
    if (!(PRIVACY_AUDIENCES as readonly string[]).includes(raw)) {
      throw new InvalidInputError(
        `configuration: ${ENV[key]} must be one of ${PRIVACY_AUDIENCES.join(", ")}, got "${raw}"`,
      );
    }
    out[key] = raw as PrivacyAudience;
  }
  return out;
}
