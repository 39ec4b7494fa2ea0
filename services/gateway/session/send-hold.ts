/** How long a hold outlasts its refused send's retry hint when that send never comes back. */
export const HOLD_MAX_PAST_HINT_MS = 5_000;
/** The least retry hint a held send is given: it must come back after the refused one. */
const HELD_RETRY_MIN_MS = 50;

/**
 * The order of one stream's sends through refusals the device is expected to retry (overload,
 * a rate or in-flight limit with a hint, a device-set mismatch, a sequencer that did not answer).
 *
 * The device put its later sends on the stream before it learned of the refusal, so a later send
 * may be read after the refused one's retry hint has passed, or after the load that refused it
 * has gone: taking it then would give it a seq ahead of the refused send's retry. So once a send
 * is refused, every later send of the stream (later in frame order, whatever stage refused the
 * first) is refused too, until the refused send itself is sent again. A device that gives that
 * send up is held for at most HOLD_MAX_PAST_HINT_MS past its hint.
 *
 * Order is by `ordinal`, the position of the send frame on the stream: a send read before the
 * refused one but still waiting for a check is not held, and a hold for an earlier send takes
 * the place of one for a later send.
 */
export class SendHold {
  private held: { clientMsgId: string; ordinal: number; retryAt: number; hintMs: number } | undefined;

  constructor(private readonly now: () => number = () => performance.now()) {}

  /** A send was refused with an answer the device retries; `retryAfterMs` is the hint it got. */
  refused(clientMsgId: string, ordinal: number, retryAfterMs: number): void {
    const held = this.held;
    if (held !== undefined && held.ordinal < ordinal && !this.lapsed(held)) return;
    this.held = { clientMsgId, ordinal, retryAt: this.now() + retryAfterMs, hintMs: retryAfterMs };
  }

  /**
   * Whether a send may go to the sequencer: undefined when it may, else the retry hint in
   * milliseconds to refuse it with. The held send coming back lifts the hold.
   */
  check(clientMsgId: string, ordinal: number): number | undefined {
    const held = this.held;
    if (held === undefined || ordinal <= held.ordinal) return undefined;
    if (clientMsgId === held.clientMsgId || this.lapsed(held)) {
      this.held = undefined;
      return undefined;
    }
    return Math.max(HELD_RETRY_MIN_MS, Math.ceil(held.retryAt - this.now()));
  }

  /** The client_msg_id the stream's later sends wait for, if any (for the refusal's message). */
  get heldFor(): string | undefined {
    return this.held?.clientMsgId;
  }

  private lapsed(held: { retryAt: number }): boolean {
    return this.now() - held.retryAt >= HOLD_MAX_PAST_HINT_MS;
  }
}
