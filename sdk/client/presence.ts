import type { ActiveStream, StreamLoop } from "./stream.js";

/**
 * Typing indicators and presence subscriptions. Indicators are dropped while offline; the
 * subscriptions are kept and sent again on every new stream.
 */
export class Presence {
  private readonly subscriptions = new Set<string>();

  constructor(private readonly stream: StreamLoop) {}

  /** This user started (true) or stopped (false) typing in a conversation. */
  setTyping(conversationId: string, active: boolean): void {
    const s = this.stream.ready;
    if (s === undefined) return;
    this.stream.push(s, { case: "typing", value: { conversationId, active } });
  }

  /** Follows users' presence. */
  subscribe(userIds: readonly string[]): void {
    const fresh = userIds.filter((id) => !this.subscriptions.has(id));
    for (const id of fresh) this.subscriptions.add(id);
    const s = this.stream.ready;
    if (fresh.length > 0 && s !== undefined) {
      this.stream.push(s, { case: "presenceSubscribe", value: { subscribeUserIds: fresh } });
    }
  }

  /** Stops following users' presence. */
  unsubscribe(userIds: readonly string[]): void {
    const gone = userIds.filter((id) => this.subscriptions.delete(id));
    const s = this.stream.ready;
    if (gone.length > 0 && s !== undefined) {
      this.stream.push(s, { case: "presenceSubscribe", value: { unsubscribeUserIds: gone } });
    }
  }

  /** Stream s was accepted: the subscriptions go to the server again. */
  resubscribe(s: ActiveStream): void {
    if (this.subscriptions.size === 0) return;
    this.stream.push(s, { case: "presenceSubscribe", value: { subscribeUserIds: [...this.subscriptions] } });
  }
}
