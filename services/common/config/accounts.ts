/** The accounts service's abuse controls and the privacy settings of users who never chose. */
import { z } from "zod";
import { fail } from "./error.js";
import { check, type Env, int, intVariable, nonEmptyText, oneOf, oneOfVariable, without } from "./schema.js";

/** "open": anyone may register; "invite": only with an operator's invite token. */
export type RegistrationMode = "open" | "invite";

/** The registration modes, in the order messages list them. */
export const REGISTRATION_MODES: readonly RegistrationMode[] = ["open", "invite"];

/**
 * Abuse controls of the accounts service (issue 15). Each "per period" count is a rate limit whose
 * burst is the same count: a quiet key may spend a whole period's allowance at once, then gets one
 * more every period / count. 0 turns a limit off. Limits are kept in the shared rate limiter
 * (Redis when SWITCHBOARD_ROUTES=redis), so every accounts process enforces one budget.
 */
export interface AccountLimits {
  /** Registrations per source address (IPv6: per /64) per hour. */
  registrationsPerAddressPerHour: number;
  /** Registrations per hour on the whole deployment. */
  registrationsPerHour: number;
  /** Peers (addresses or CIDR ranges) whose X-Forwarded-For names the caller; none by default. */
  trustedProxies: string[];
  /** Usernames (and display names) refused, matched by confusable skeleton. */
  reservedUsernames: string[];
  /** Users and usernames one user may look up per minute (LookupUsers; each id or name counts one). */
  lookupsPerMinute: number;
  /** GetBundles calls one user may make per minute. */
  bundleFetchesPerMinute: number;
  /**
   * One-time prekeys one user may take from one device of another user per day; past it, bundles
   * carry only the signed prekey and the Kyber last-resort prekey, which still open a session.
   */
  oneTimePrekeysPerPairPerDay: number;
  /** Reports (ReportUser) one user may make per day. */
  reportsPerDay: number;
  /** Blocks and unblocks (BlockUser, UnblockUser) one user may make per hour. */
  blockChangesPerHour: number;
  /**
   * "open": anyone may register (within the rate limits); "invite": only with a token from an
   * operator's invite (`switchboard admin invite create`). SWITCHBOARD_REGISTRATION, default open.
   */
  registration: RegistrationMode;
}

/** Who a privacy setting lets through (the store's PrivacyAudience). */
export type PrivacyAudience = "everyone" | "contacts" | "nobody";

/** The audiences, in the order the docs and the CLI list them. */
export const PRIVACY_AUDIENCES: readonly PrivacyAudience[] = ["everyone", "contacts", "nobody"];

/**
 * The privacy settings that apply to a user until they choose their own. A user's stored record
 * holds only what they set, so changing a default here reaches every user who never chose.
 */
export interface PrivacyDefaults {
  /** Who may add a user to groups. */
  groupAdd: PrivacyAudience;
  /** Who may start a new direct conversation with a user. */
  directOpen: PrivacyAudience;
  /** Who sees a user's online state and last seen ("contacts": a direct conversation). */
  lastSeen: PrivacyAudience;
  /** Whether a user's read receipts reach others (reciprocal). */
  readReceipts: boolean;
  /** Who sees a user's display name ("contacts": a direct conversation). */
  profile: PrivacyAudience;
}

/** The values of an on/off setting's variable. */
const SWITCHES = ["on", "off"] as const;

/**
 * Everyone, as WhatsApp ships: a new user must be reachable by someone who knows their username,
 * and "contacts" for new direct conversations would leave a new user unreachable by anyone they
 * share no group with. Operators of public deployments may tighten group adds to "contacts".
 */
export const defaultPrivacy: PrivacyDefaults = {
  groupAdd: "everyone",
  directOpen: "everyone",
  lastSeen: "everyone",
  readReceipts: true,
  profile: "everyone",
};

/**
 * The reserved usernames when SWITCHBOARD_RESERVED_USERNAMES is unset: names people read as the
 * operator speaking (staff roles, the product's name, infrastructure words). They are matched
 * loosely (services/accounts/usernames.ts), so "adm1n", "support_" and a Cyrillic "ѕupport" are
 * refused too.
 */
const DEFAULT_RESERVED_USERNAMES = [
  "admin",
  "administrator",
  "root",
  "support",
  "help",
  "helpdesk",
  "security",
  "system",
  "switchboard",
  "official",
  "staff",
  "moderator",
  "mod",
  "operator",
  "abuse",
  "postmaster",
  "webmaster",
  "hostmaster",
  "noreply",
  "no_reply",
  "info",
  "billing",
  "api",
  "bot",
  "server",
  "everyone",
  "null",
  "undefined",
];

const ADDRESS_OR_RANGE = /^[0-9A-Fa-f:.]+(\/\d{1,3})?$/;

/** The counts' variables and defaults, in the order they are checked. */
const COUNTS = {
  registrationsPerAddressPerHour: ["SWITCHBOARD_REGISTRATIONS_PER_ADDRESS_PER_HOUR", 10],
  registrationsPerHour: ["SWITCHBOARD_REGISTRATIONS_PER_HOUR", 600],
  lookupsPerMinute: ["SWITCHBOARD_LOOKUPS_PER_MINUTE", 300],
  bundleFetchesPerMinute: ["SWITCHBOARD_BUNDLE_FETCHES_PER_MINUTE", 1200],
  oneTimePrekeysPerPairPerDay: ["SWITCHBOARD_ONE_TIME_PREKEYS_PER_PAIR_PER_DAY", 4],
  reportsPerDay: ["SWITCHBOARD_REPORTS_PER_DAY", 20],
  blockChangesPerHour: ["SWITCHBOARD_BLOCK_CHANGES_PER_HOUR", 120],
} as const;

type Count = keyof typeof COUNTS;

const count = (key: Count) => intVariable(COUNTS[key][0], COUNTS[key][1], true);

/** The accounts variables, in the order they are checked. */
export const accountVariables = z.object({
  /** Set but empty: no reserved names. */
  SWITCHBOARD_RESERVED_USERNAMES: z
    .string()
    .optional()
    .transform((raw) =>
      raw === undefined
        ? DEFAULT_RESERVED_USERNAMES
        : raw
            .split(",")
            .map((s) => s.trim())
            .filter((s) => s !== ""),
    ),
  SWITCHBOARD_TRUSTED_PROXIES: z
    .string()
    .optional()
    .transform((raw) =>
      (raw ?? "")
        .split(",")
        .map((s) => s.trim())
        .filter((s) => s !== ""),
    ),
  SWITCHBOARD_REGISTRATIONS_PER_ADDRESS_PER_HOUR: count("registrationsPerAddressPerHour"),
  SWITCHBOARD_REGISTRATIONS_PER_HOUR: count("registrationsPerHour"),
  SWITCHBOARD_LOOKUPS_PER_MINUTE: count("lookupsPerMinute"),
  SWITCHBOARD_BUNDLE_FETCHES_PER_MINUTE: count("bundleFetchesPerMinute"),
  SWITCHBOARD_ONE_TIME_PREKEYS_PER_PAIR_PER_DAY: count("oneTimePrekeysPerPairPerDay"),
  SWITCHBOARD_REPORTS_PER_DAY: count("reportsPerDay"),
  SWITCHBOARD_BLOCK_CHANGES_PER_HOUR: count("blockChangesPerHour"),
  SWITCHBOARD_REGISTRATION: nonEmptyText()
    .pipe(oneOfVariable("SWITCHBOARD_REGISTRATION", REGISTRATION_MODES))
    .transform((mode) => mode ?? "open"),
});

/** The privacy defaults' variables; unset or empty keeps defaultPrivacy. */
export const privacyVariables = z.object({
  SWITCHBOARD_PRIVACY_GROUP_ADD_DEFAULT: nonEmptyText()
    .pipe(oneOfVariable("SWITCHBOARD_PRIVACY_GROUP_ADD_DEFAULT", PRIVACY_AUDIENCES))
    .transform((a) => a ?? defaultPrivacy.groupAdd),
  SWITCHBOARD_PRIVACY_DIRECT_OPEN_DEFAULT: nonEmptyText()
    .pipe(oneOfVariable("SWITCHBOARD_PRIVACY_DIRECT_OPEN_DEFAULT", PRIVACY_AUDIENCES))
    .transform((a) => a ?? defaultPrivacy.directOpen),
  SWITCHBOARD_PRIVACY_LAST_SEEN_DEFAULT: nonEmptyText()
    .pipe(oneOfVariable("SWITCHBOARD_PRIVACY_LAST_SEEN_DEFAULT", PRIVACY_AUDIENCES))
    .transform((a) => a ?? defaultPrivacy.lastSeen),
  SWITCHBOARD_PRIVACY_READ_RECEIPTS_DEFAULT: nonEmptyText()
    .pipe(oneOfVariable("SWITCHBOARD_PRIVACY_READ_RECEIPTS_DEFAULT", SWITCHES))
    // Kept as "on"/"off" here (what the docs show); loadPrivacyDefaults makes it a boolean.
    .transform((a) => a ?? (defaultPrivacy.readReceipts ? "on" : "off")),
  SWITCHBOARD_PRIVACY_PROFILE_DEFAULT: nonEmptyText()
    .pipe(oneOfVariable("SWITCHBOARD_PRIVACY_PROFILE_DEFAULT", PRIVACY_AUDIENCES))
    .transform((a) => a ?? defaultPrivacy.profile),
});

export function loadAccountLimits(input: Partial<AccountLimits> | undefined, env: Env): AccountLimits {
  const given = Object.fromEntries(
    (Object.keys(COUNTS) as Count[]).map((key) => [COUNTS[key][0], input?.[key]]),
  );
  const vars = check(
    accountVariables,
    without(env, {
      ...given,
      SWITCHBOARD_RESERVED_USERNAMES: input?.reservedUsernames,
      SWITCHBOARD_TRUSTED_PROXIES: input?.trustedProxies,
      SWITCHBOARD_REGISTRATION: input?.registration,
    }),
  );
  const proxies = input?.trustedProxies ?? vars.SWITCHBOARD_TRUSTED_PROXIES;
  for (const p of proxies) {
    if (!ADDRESS_OR_RANGE.test(p)) fail(`SWITCHBOARD_TRUSTED_PROXIES: not an address or CIDR range: "${p}"`);
  }
  // Input counts are named by their variable too.
  const countOf = (key: Count) => {
    const value = input?.[key];
    return value === undefined ? vars[COUNTS[key][0]] : int(COUNTS[key][0], value);
  };
  return {
    registrationsPerAddressPerHour: countOf("registrationsPerAddressPerHour"),
    registrationsPerHour: countOf("registrationsPerHour"),
    trustedProxies: proxies,
    reservedUsernames: input?.reservedUsernames ?? vars.SWITCHBOARD_RESERVED_USERNAMES,
    lookupsPerMinute: countOf("lookupsPerMinute"),
    bundleFetchesPerMinute: countOf("bundleFetchesPerMinute"),
    oneTimePrekeysPerPairPerDay: countOf("oneTimePrekeysPerPairPerDay"),
    reportsPerDay: countOf("reportsPerDay"),
    blockChangesPerHour: countOf("blockChangesPerHour"),
    registration:
      input?.registration === undefined
        ? vars.SWITCHBOARD_REGISTRATION
        : oneOf("SWITCHBOARD_REGISTRATION", input.registration, REGISTRATION_MODES),
  };
}

/**
 * The privacy defaults from explicit input over the environment over defaultPrivacy; an unknown
 * audience is a ConfigurationError naming its variable.
 */
export function loadPrivacyDefaults(input: Partial<PrivacyDefaults> | undefined, env: Env): PrivacyDefaults {
  const vars = check(
    privacyVariables,
    without(env, {
      SWITCHBOARD_PRIVACY_GROUP_ADD_DEFAULT: input?.groupAdd,
      SWITCHBOARD_PRIVACY_DIRECT_OPEN_DEFAULT: input?.directOpen,
      SWITCHBOARD_PRIVACY_LAST_SEEN_DEFAULT: input?.lastSeen,
      SWITCHBOARD_PRIVACY_READ_RECEIPTS_DEFAULT:
        input?.readReceipts === undefined ? undefined : input.readReceipts ? "on" : "off",
      SWITCHBOARD_PRIVACY_PROFILE_DEFAULT: input?.profile,
    }),
  );
  // Given but empty is the default too.
  const audience = (
    variable: string,
    value: string | undefined,
    fromEnv: PrivacyAudience,
    key: "groupAdd" | "directOpen" | "lastSeen" | "profile",
  ) =>
    value === undefined
      ? fromEnv
      : value === ""
        ? defaultPrivacy[key]
        : oneOf(variable, value, PRIVACY_AUDIENCES);
  return {
    groupAdd: audience(
      "SWITCHBOARD_PRIVACY_GROUP_ADD_DEFAULT",
      input?.groupAdd,
      vars.SWITCHBOARD_PRIVACY_GROUP_ADD_DEFAULT,
      "groupAdd",
    ),
    directOpen: audience(
      "SWITCHBOARD_PRIVACY_DIRECT_OPEN_DEFAULT",
      input?.directOpen,
      vars.SWITCHBOARD_PRIVACY_DIRECT_OPEN_DEFAULT,
      "directOpen",
    ),
    lastSeen: audience(
      "SWITCHBOARD_PRIVACY_LAST_SEEN_DEFAULT",
      input?.lastSeen,
      vars.SWITCHBOARD_PRIVACY_LAST_SEEN_DEFAULT,
      "lastSeen",
    ),
    readReceipts: input?.readReceipts ?? vars.SWITCHBOARD_PRIVACY_READ_RECEIPTS_DEFAULT === "on",
    profile: audience(
      "SWITCHBOARD_PRIVACY_PROFILE_DEFAULT",
      input?.profile,
      vars.SWITCHBOARD_PRIVACY_PROFILE_DEFAULT,
      "profile",
    ),
  };
}
