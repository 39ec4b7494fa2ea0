import { Code, type ConnectError } from "@connectrpc/connect";
import {
  PrivacyAudience,
  PrivacyRefusalSchema,
  type PrivacySettings,
} from "../gen/switchboard/v1/accounts_pb.js";

/** Who may do something that involves a user. */
export type Audience = "everyone" | "contacts" | "nobody";

/** The audiences, in the order the CLI lists them. */
export const AUDIENCES: readonly Audience[] = ["everyone", "contacts", "nobody"];

/**
 * A user's privacy settings. For groupAdd and directOpen "contacts" means the users who share at
 * least one conversation (direct or group) with this user when they try; for lastSeen, the users
 * who have a direct conversation with them.
 */
export interface PrivacyChoices {
  /** Who may add this user to groups (CreateGroup, AddMembers). */
  groupAdd: Audience;
  /** Who may start a new direct conversation with this user; existing ones are never affected. */
  directOpen: Audience;
  /**
   * Who sees this user's online state and last seen. Reciprocal: this user sees someone's only
   * when each one's setting admits the other. A hidden user's presence never arrives (as for a
   * user who blocked you), so an app cannot tell why.
   */
  lastSeen: Audience;
  /**
   * Whether this user's read receipts reach others. Reciprocal: off, this user gets no one's read
   * receipts (and other members' readUpTo shows nothing read). Delivered receipts stay.
   */
  readReceipts: boolean;
  /**
   * Who sees this user's display name (in lookupUsers); "contacts" as for lastSeen. To anyone
   * else it is the username, as for a user who never set one. Not reciprocal.
   */
  profile: Audience;
}

const TO_WIRE: Record<Audience, PrivacyAudience> = {
  everyone: PrivacyAudience.EVERYONE,
  contacts: PrivacyAudience.CONTACTS,
  nobody: PrivacyAudience.NOBODY,
};

function fromWire(value: PrivacyAudience | undefined, field: string): Audience {
  const found = AUDIENCES.find((a) => TO_WIRE[a] === value);
  if (found === undefined) throw new Error(`the server sent an unknown audience for ${field}: ${value}`);
  return found;
}

/** Settings from the wire (GetPrivacy, SetPrivacy). */
export function privacyFromWire(settings: PrivacySettings | undefined): PrivacyChoices {
  return {
    groupAdd: fromWire(settings?.groupAdd, "group_add"),
    directOpen: fromWire(settings?.directOpen, "direct_open"),
    lastSeen: fromWire(settings?.lastSeen, "last_seen"),
    // Always present in answers; a server older than the setting has them all on.
    readReceipts: settings?.readReceipts ?? true,
    profile: fromWire(settings?.profile, "profile"),
  };
}

/** Changes for SetPrivacy: settings not given stay unspecified, which the server leaves alone. */
export function privacyChangesToWire(changes: Partial<PrivacyChoices>): {
  groupAdd?: PrivacyAudience;
  directOpen?: PrivacyAudience;
  lastSeen?: PrivacyAudience;
  readReceipts?: boolean;
  profile?: PrivacyAudience;
} {
  return {
    ...(changes.groupAdd !== undefined && { groupAdd: TO_WIRE[changes.groupAdd] }),
    ...(changes.directOpen !== undefined && { directOpen: TO_WIRE[changes.directOpen] }),
    ...(changes.lastSeen !== undefined && { lastSeen: TO_WIRE[changes.lastSeen] }),
    ...(changes.readReceipts !== undefined && { readReceipts: changes.readReceipts }),
    ...(changes.profile !== undefined && { profile: TO_WIRE[changes.profile] }),
  };
}

/**
 * The users whose privacy settings refused a CreateGroup, AddMembers or OpenDirect
 * (PERMISSION_DENIED with a PrivacyRefusal detail); undefined for any other error.
 */
export function privacyRefusalOf(error: ConnectError): string[] | undefined {
  if (error.code !== Code.PermissionDenied) return undefined;
  return error.findDetails(PrivacyRefusalSchema)[0]?.userIds;
}
