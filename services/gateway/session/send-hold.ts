/** How long a hold outlasts its refused send's retry hint when that send never comes back. */
export const HOLD_MAX_PAST_HINT_MS = 5_000;
/**
 * Conversations a stream may have held at once. Past it (a device refused in that many
 * conversations within a few seconds) a new refusal holds the whole stream instead, as one hold
 * for every conversation would: order is never given up, the memory a stream holds stays bounded.
 */
export const MAX_HELD_CONVERSATIONS = 256;
/** The least retry hint a held send is given: it must come back after the refused one. */
const HELD_RETRY_MIN_MS = 50;

/** The default clock: one function for every stream, not a closure per SendHold. */
const monotonicNow = (): number => performance.now();

interface Held {
  clientMsgId: string;
  ordinal: number;
  retryAt: number;
}

/**
 * The order of one stream's sends through refusals the device is expected to retry (overload,
 * a rate or in-flight limit with a hint, a device-set mismatch, a sequencer that did not answer).
 *
 * The device put its later sends on the stream before it learned of the refusal, so a later send
 * may be read after the refused one's retry hint has passed, or after the load that refused it
 * has gone: taking it then would give it a seq ahead of the refused send's retry. So once a send
 * is refused, every later send of the stream to the same conversation (later in frame order,
 * whatever stage refused the first) is refused too, until the refused send itself is sent again.
 * Order is per conversation (DESIGN.md), so sends to other conversations go on, as the SDK's
 * outbox expects. A device that gives the refused send up is held for at most
 * HOLD_MAX_PAST_HINT_MS past its hint.
 *
 * Order is by `ordinal`, the position of the send frame on the stream: a send read before the
 * refused one but still waiting for a check is not held, and a hold for an earlier send takes
 * the place of one for a later send.
 */
export class SendHold {
  /**
   * Per conversation, the earliest refused send its later sends wait for; made by the first
   * refusal (most streams never have one, and an empty Map is about 180 bytes a stream).
   */
  private held: Map<string, Held> | undefined;
  /** Holds every conversation: set only when MAX_HELD_CONVERSATIONS are held already. */
  private all: Held | undefined;

  constructor(private readonly now: () => number = monotonicNow) {}

  /** A send to a conversation was refused with an answer the device retries, with this hint. */
  refused(conversationId: string, clientMsgId: string, ordinal: number, retryAfterMs: number): void {
    const hold = { clientMsgId, ordinal, retryAt: this.now() + retryAfterMs };
    this.held ??= new Map();
    const held = this.held;
    const current = held.get(conversationId);
    if (current !== undefined) {
      if (current.ordinal < ordinal && !this.lapsed(current)) return;
      held.set(conversationId, hold);
      return;
    }
    if (held.size >= MAX_HELD_CONVERSATIONS) this.dropLapsed(held);
    if (held.size < MAX_HELD_CONVERSATIONS) {
      held.set(conversationId, hold);
      return;
    }
    const all = this.all;
    if (all !== undefined && all.ordinal < ordinal && !this.lapsed(all)) return;
    this.all = hold;
  }

  /**
   * Whether a send may go to the sequencer: undefined when it may, else the retry hint in
   * milliseconds to refuse it with. The held send coming back lifts its hold.
   */
  check(conversationId: string, clientMsgId: string, ordinal: number): number | undefined {
    const held = this.held;
    if ((held === undefined || held.size === 0) && this.all === undefined) return undefined; // every send, usually
    let mine = held?.get(conversationId);
    if (mine !== undefined && this.lifted(mine, clientMsgId, ordinal)) {
      held?.delete(conversationId);
      mine = undefined;
    }
    if (this.all !== undefined && this.lifted(this.all, clientMsgId, ordinal)) this.all = undefined;
    let retryAt = Number.NEGATIVE_INFINITY;
    if (mine !== undefined && ordinal > mine.ordinal) retryAt = mine.retryAt;
    const all = this.all;
    if (all !== undefined && ordinal > all.ordinal) retryAt = Math.max(retryAt, all.retryAt);
    if (retryAt === Number.NEGATIVE_INFINITY) return undefined;
    return Math.max(HELD_RETRY_MIN_MS, Math.ceil(retryAt - this.now()));
  }

  /** The client_msg_id a conversation's later sends wait for, if any (for the refusal's message). */
  heldFor(conversationId: string): string | undefined {
    return this.held?.get(conversationId)?.clientMsgId ?? this.all?.clientMsgId;
  }

  /** Conversations held now (lapsed holds included until they are next looked at). */
  get heldConversations(): number {
    return this.held?.size ?? 0;
  }

  /** True once a hold no longer applies: its send came back later on the stream, or it lapsed. */
  private lifted(h: Held, clientMsgId: string, ordinal: number): boolean {
    return ordinal > h.ordinal && (clientMsgId === h.clientMsgId || this.lapsed(h));
  }

  private dropLapsed(held: Map<string, Held>): void {
    for (const [id, h] of held) if (this.lapsed(h)) held.delete(id);
  }

  private lapsed(held: { retryAt: number }): boolean {
    return this.now() - held.retryAt >= HOLD_MAX_PAST_HINT_MS;
  }
}
