import { create } from "@bufbuild/protobuf";
import type { Client } from "@connectrpc/connect";
import type { DirectoryService } from "../../gen/switchboard/internal/v1/directory_pb.js";
import type { SequencerService } from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import { PrivacyRefusalSchema } from "../../gen/switchboard/v1/accounts_pb.js";
import { audienceFromWire } from "../accounts/index.js";
import { PermissionError } from "../common/errors.js";
import type { RefusalFields } from "../common/refusals.js";
import type { PrivacyAudience } from "../store/types.js";
import type { BlockLists } from "./blocks.js";

/**
 * Consent: users' privacy settings decide who may add them to groups (`group_add`) and who may
 * start a new direct conversation with them (`direct_open`). The gateway checks them before it
 * asks the sequencer to create a group, add members or create a direct conversation; an existing
 * direct conversation is never affected.
 *
 * "Contacts" are the users who share at least one conversation (direct or group) with the user
 * at the time of the request, the rule presence visibility already follows. A direct-only rule
 * would make "contacts" the same as "nobody" for direct_open (a pair with a direct conversation
 * needs no new one), so one rule serves both settings.
 *
 * The check and the sequencer's write are two calls, so a setting changed between them applies
 * from the next request on.
 */
export type ConsentKind = "group_add" | "direct_open";

/** Ids per DirectoryService.GetUserPrivacy call (its cap). */
const PRIVACY_BATCH = 1024;
/** Ids per SequencerService.FindContacts call (its documented cap). */
const CONTACTS_BATCH = 256;
/**
 * Where consent refusals are counted and logged: the process's refusal sink
 * (services/common/refusals.ts: the `switchboard.refusals` metric and its folded log), seen
 * through consent's two reasons, so a misspelt reason is a type error rather than a new label.
 */
export interface ConsentRefusalSink {
  /** Records one refusal; `fields` carry ids and counts, never anyone's settings. */
  refuse(reason: `consent_${ConsentKind}`, message: string, fields?: RefusalFields): void;
}

/**
 * The error a refused call gets: PERMISSION_DENIED naming the users, with a PrivacyRefusal detail
 * (which the SDK reads) that the boundary sends with it.
 */
export function consentError(kind: ConsentKind, userIds: readonly string[]): PermissionError {
  const who = userIds.join(", ");
  const verb = userIds.length === 1 ? "does" : "do";
  const message =
    kind === "group_add"
      ? `${who} ${verb} not accept group invitations from you; nobody was added`
      : `${who} ${verb} not accept new direct conversations from you`;
  return new PermissionError(message, {
    details: [{ desc: PrivacyRefusalSchema, value: create(PrivacyRefusalSchema, { userIds: [...userIds] }) }],
  });
}

/** Checks users' privacy settings on behalf of the gateway's ConversationService. */
export class Consent {
  constructor(
    private readonly directory: Client<typeof DirectoryService>,
    private readonly sequencer: Client<typeof SequencerService>,
    private readonly refusals: ConsentRefusalSink,
    private readonly blocks?: Pick<BlockLists, "blockedAmong">,
  ) {}

  /**
   * The users among targets whose setting of this kind does not admit the actor, in the order
   * given. Targets are existing users other than the actor.
   */
  async refusing(
    actorUserId: string,
    targetUserIds: readonly string[],
    kind: ConsentKind,
  ): Promise<string[]> {
    const targets = [...new Set(targetUserIds)].filter((id) => id !== actorUserId);
    if (targets.length === 0) return [];
    // A user who blocked the actor refuses as a "nobody" setting would, with the same error, so
    // the actor cannot tell a block from a privacy setting.
    const blockers = new Set(
      this.blocks === undefined ? [] : await this.blocks.blockedAmong(targets, actorUserId),
    );
    const audiences = new Map<string, PrivacyAudience>();
    for (let i = 0; i < targets.length; i += PRIVACY_BATCH) {
      const { users } = await this.directory.getUserPrivacy({ userIds: targets.slice(i, i + PRIVACY_BATCH) });
      for (const u of users) {
        const wire = kind === "group_add" ? u.settings?.groupAdd : u.settings?.directOpen;
        // A setting this gateway cannot read (a newer accounts service) refuses: fail closed.
        audiences.set(u.userId, (wire === undefined ? undefined : audienceFromWire(wire)) ?? "nobody");
      }
    }
    const askContacts = targets.filter((id) => (audiences.get(id) ?? "nobody") === "contacts");
    const contacts = new Set<string>();
    for (let i = 0; i < askContacts.length; i += CONTACTS_BATCH) {
      const { contactUserIds } = await this.sequencer.findContacts({
        userId: actorUserId,
        peerUserIds: askContacts.slice(i, i + CONTACTS_BATCH),
      });
      for (const id of contactUserIds) contacts.add(id);
    }
    return targets.filter((id) => {
      if (blockers.has(id)) return true;
      const audience = audiences.get(id) ?? "nobody";
      return audience === "nobody" || (audience === "contacts" && !contacts.has(id));
    });
  }

  /** Throws the consent error when any target refuses the actor; counts and logs the refusal. */
  async require(actorUserId: string, targetUserIds: readonly string[], kind: ConsentKind): Promise<void> {
    const refused = await this.refusing(actorUserId, targetUserIds, kind);
    if (refused.length === 0) return;
    throw this.refused(actorUserId, refused, kind);
  }

  /**
   * Counts and logs a refusal in the refusal sink (reason `consent_group_add` or
   * `consent_direct_open`; the sink folds repeats into one line per reason per window) and
   * returns its error.
   */
  refused(actorUserId: string, refusedUserIds: readonly string[], kind: ConsentKind): PermissionError {
    this.refusals.refuse(`consent_${kind}`, "refused by the users' privacy settings", {
      actorUserId,
      refused: refusedUserIds.length,
      code: "permission_denied",
    });
    return consentError(kind, refusedUserIds);
  }
}
