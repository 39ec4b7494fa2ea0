import type { Logger } from "../../common/log.js";
import type { PushMessage, PushOutcome, PushProvider, PushTarget } from "../types.js";

/**
 * The embedded default for a kind with no credentials configured: the push is logged (content
 * free, like every push) and counted as delivered, so `npm start` needs no provider accounts.
 */
export class LogPushProvider implements PushProvider {
  constructor(
    readonly kind: PushTarget["kind"],
    private readonly log: Logger,
  ) {}

  async send(_target: PushTarget, message: PushMessage): Promise<PushOutcome> {
    this.log.info(
      { kind: this.kind, conversationId: message.conversationId, seq: message.seq, urgency: message.urgency },
      "push (log only: no provider configured)",
    );
    return { status: "delivered" };
  }

  async close(): Promise<void> {}
}
