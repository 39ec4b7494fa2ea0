import { create } from "@bufbuild/protobuf";
import { type Client, Code, ConnectError } from "@connectrpc/connect";
import type { Counter } from "@opentelemetry/api";
import type { DirectoryService } from "../../gen/switchboard/internal/v1/directory_pb.js";
import type { SequencerService } from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import { PrivacyRefusalSchema } from "../../gen/switchboard/v1/accounts_pb.js";
import { audienceFromWire } from "../accounts/privacy.js";
import type { Logger } from "../common/log.js";
import { meter } from "../common/telemetry.js";
import type { PrivacyAudience } from "../store/types.js";

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
/** A refusal reason is logged at most once per this many milliseconds per actor. */
const LOG_INTERVAL_MS = 10_000;
/** Actors whose last log time is remembered at most (the log fold is best effort past that). */
const LOGGED_MAX = 10_000;

/** The error a refused call gets: PERMISSION_DENIED naming the users, with a PrivacyRefusal. */
export function consentError(kind: ConsentKind, userIds: readonly string[]): ConnectError {
  const who = userIds.join(", ");
  const verb = userIds.length === 1 ? "does" : "do";
  const message =
    kind === "group_add"
      ? `${who} ${verb} not accept group invitations from you; nobody was added`
      : `${who} ${verb} not accept new direct conversations from you`;
  return new ConnectError(message, Code.PermissionDenied, undefined, [
    { desc: PrivacyRefusalSchema, value: create(PrivacyRefusalSchema, { userIds: [...userIds] }) },
  ]);
}

/** Checks users' privacy settings on behalf of the gateway's ConversationService. */
export class Consent {
  /** Refusals by kind since start, for tests. */
  readonly refusals = new Map<ConsentKind, number>();
  private readonly counter: Counter;
  private readonly loggedAt = new Map<string, number>();

  constructor(
    private readonly directory: Client<typeof DirectoryService>,
    private readonly sequencer: Client<typeof SequencerService>,
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {
    this.counter = meter().createCounter("switchboard.consent.refusals", {
      description: "Group adds and new direct conversations refused by the users' privacy settings, by kind",
    });
  }

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

  /** Counts a refusal, logs it (once per actor and kind per interval) and returns its error. */
  refused(actorUserId: string, refusedUserIds: readonly string[], kind: ConsentKind): ConnectError {
    this.refusals.set(kind, (this.refusals.get(kind) ?? 0) + 1);
    this.counter.add(1, { kind });
    const key = `${kind}\n${actorUserId}`;
    const now = this.now();
    const last = this.loggedAt.get(key);
    if (last === undefined || now - last >= LOG_INTERVAL_MS) {
      if (this.loggedAt.size >= LOGGED_MAX) this.loggedAt.clear();
      this.loggedAt.set(key, now);
      this.log.info(
        { refusal: `consent_${kind}`, actorUserId, refused: refusedUserIds.length },
        "refused by the users' privacy settings",
      );
    }
    return consentError(kind, refusedUserIds);
  }
}
