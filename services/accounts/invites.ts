import { InvalidInputError, NotFoundError } from "../common/errors.js";
import { newId, newSecret, sha256Hex } from "../common/ids.js";
import type { Logger } from "../common/log.js";
import type { AccountStore, InviteRecord, InviteRefusal } from "../store/types.js";

// How registration is opened (to anyone, or only to invite holders) is a setting.
export type { RegistrationMode } from "../common/config.js";

/** Bounds of one invite as an operator makes it. */
export const INVITE_LIMITS = {
  /** Uses when none are asked for. */
  defaultUses: 1,
  /** Most uses of one invite. */
  maxUses: 10_000,
  /** Lifetime when none is asked for, in milliseconds (7 days). */
  defaultTtlMs: 7 * 86_400_000,
  /** Shortest lifetime, in milliseconds. */
  minTtlMs: 1_000,
  /** Longest lifetime, in milliseconds (365 days). */
  maxTtlMs: 365 * 86_400_000,
  /** Longest note, in characters. */
  maxNoteChars: 200,
  /** Most invites one listing returns. */
  maxListed: 1_000,
} as const;

/** The one answer to every token that does not give a use, so a guesser learns nothing more. */
export const INVALID_INVITE = "invalid or used invite";

/** The answer to a registration without a token when invites are required. */
export const INVITE_REQUIRED = "registration needs an invite";

/**
 * A token is `<invite id>_<secret>`: the id finds the record in one read (no index by hash), and
 * only the hash of the whole token is stored, so a leaked store gives out no working token.
 */
const TOKEN = /^(iv_[0-9a-z]{26})_[A-Za-z0-9_-]{43}$/;

/** The invite id a token names, or undefined when it is not shaped like a token. */
export function inviteIdOf(token: string): string | undefined {
  return TOKEN.exec(token)?.[1];
}

/** A new invite's parameters; absent ones take the defaults of INVITE_LIMITS. */
export interface NewInvite {
  /** Registrations it allows. */
  uses?: number;
  /** Lifetime, in milliseconds. */
  ttlMs?: number;
  /** A note for operators. */
  note?: string;
}

/** What a registration got from its token: a use to keep or give back, or why it got none. */
export type InviteUse = { inviteId: string } | { refused: InviteRefusal | "malformed" };

/** Registration invites: made, listed and revoked by operators, spent by registrations. */
export class Invites {
  constructor(
    private readonly store: AccountStore,
    private readonly log: Logger,
    private readonly now: () => number,
  ) {}

  /** Makes an invite; the token is returned here only. */
  async create(params: NewInvite): Promise<{ invite: InviteRecord; token: string }> {
    const uses = params.uses ?? INVITE_LIMITS.defaultUses;
    if (!Number.isInteger(uses) || uses < 1 || uses > INVITE_LIMITS.maxUses) {
      throw new InvalidInputError(`uses: 1 to ${INVITE_LIMITS.maxUses}`);
    }
    const ttlMs = params.ttlMs ?? INVITE_LIMITS.defaultTtlMs;
    if (!Number.isInteger(ttlMs) || ttlMs < INVITE_LIMITS.minTtlMs || ttlMs > INVITE_LIMITS.maxTtlMs) {
      throw new InvalidInputError("ttl: 1 second to 365 days");
    }
    const note = params.note ?? "";
    // Control characters would let a note rewrite the operator's terminal in `invite list`.
    if ([...note].length > INVITE_LIMITS.maxNoteChars || /\p{Cc}/u.test(note)) {
      throw new InvalidInputError(
        `note: at most ${INVITE_LIMITS.maxNoteChars} characters, no control characters`,
      );
    }
    const id = newId("iv");
    const token = `${id}_${newSecret()}`;
    const createdAtMs = this.now();
    const invite: InviteRecord = {
      id,
      tokenHash: sha256Hex(token),
      usesLeft: uses,
      maxUses: uses,
      createdAtMs,
      expiresAtMs: createdAtMs + ttlMs,
      revokedAtMs: 0,
      note,
    };
    await this.store.putInvite(invite);
    this.log.info({ inviteId: id, uses, expiresAtMs: invite.expiresAtMs }, "invite created");
    return { invite, token };
  }

  /** Invites, newest first. */
  list(): Promise<{ invites: InviteRecord[]; truncated: boolean }> {
    return this.store.listInvites(INVITE_LIMITS.maxListed);
  }

  /** Revokes an invite; NOT_FOUND for an unknown one. */
  async revoke(id: string): Promise<{ invite: InviteRecord; alreadyRevoked: boolean }> {
    const before = await this.store.getInvite(id);
    if (before === undefined) throw new NotFoundError(`no invite ${id}`);
    const invite = (await this.store.revokeInvite(id, this.now())) ?? before;
    if (before.revokedAtMs === 0) this.log.info({ inviteId: id }, "invite revoked");
    return { invite, alreadyRevoked: before.revokedAtMs !== 0 };
  }

  /** Takes one use of the invite the token names, or says why not. */
  async take(token: string): Promise<InviteUse> {
    const id = inviteIdOf(token);
    if (id === undefined) return { refused: "malformed" };
    const result = await this.store.takeInviteUse(id, sha256Hex(token), this.now());
    return "taken" in result ? { inviteId: id } : result;
  }

  /** Gives back a use whose registration did not happen. */
  giveBack(inviteId: string): Promise<void> {
    return this.store.returnInviteUse(inviteId);
  }
}
