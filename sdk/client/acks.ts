import type { ClientContext } from "./context.js";
import type { StreamLoop } from "./stream.js";

/** Cursors per ack or read frame (the server's limit). */
const FRAME_CURSOR_LIMIT = 256;

/**
 * Tells the server how far this device has got: the delivered cursor (ack) after the app handled
 * entries, the read cursor (read receipts) when the app marks a conversation read. Batched by time
 * and count, and never ahead of what the profile has on disk.
 */
export class Acks {
  private readonly ackDue = new Set<string>();
  private readonly readDue = new Map<string, bigint>();
  private ackEntries = 0;
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;

  constructor(
    private readonly ctx: ClientContext,
    private readonly stream: StreamLoop,
  ) {}

  /** A conversation's cursor is due; `entries` handled since (the count that forces a flush). */
  schedule(conversationId: string, entries: number): void {
    this.ackDue.add(conversationId);
    this.ackEntries += entries;
    if (this.ackEntries >= this.ctx.tuning.ackEveryEntries) {
      void this.flush().catch(() => {});
      return;
    }
    this.timer ??= setTimeout(() => {
      this.timer = undefined;
      void this.flush().catch(() => {});
    }, this.ctx.tuning.ackDelayMs);
  }

  /** Marks a conversation read up to a seq (cumulative). */
  markRead(conversationId: string, seq: bigint | number): void {
    const upTo = BigInt(seq);
    const before = this.ctx.profile.cursor(conversationId)?.read ?? 0n;
    if (upTo <= before) return;
    this.ctx.profile.setRead(conversationId, upTo);
    const due = this.readDue.get(conversationId);
    if (due === undefined || upTo > due) this.readDue.set(conversationId, upTo);
    this.schedule(conversationId, 0);
  }

  /**
   * Sends the delivered and read cursors that are due. The cursors are made durable first: the
   * server must never believe the device has entries the device would forget in a crash.
   */
  flush(): Promise<void> {
    if (this.flushing !== undefined) {
      // One flush at a time keeps the frames in cursor order; run again after it.
      return this.flushing.then(() => this.flush());
    }
    this.flushing = this.flushNow().finally(() => {
      this.flushing = undefined;
    });
    return this.flushing;
  }

  /** Stops the batching timer (the client is closing). */
  dispose(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
  }

  private async flushNow(): Promise<void> {
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    const s = this.stream.ready;
    if (s === undefined || (this.ackDue.size === 0 && this.readDue.size === 0)) return;
    const acks = [...this.ackDue];
    const reads = [...this.readDue];
    this.ackDue.clear();
    this.readDue.clear();
    this.ackEntries = 0;
    // The cursors to ack are read before the flush: the flush writes them (or later ones), while
    // entries delivered during the flush may move a cursor past what it wrote.
    const ackCursors = acks.flatMap((conversationId) => {
      const c = this.ctx.profile.cursor(conversationId);
      return c === undefined || c.delivered === 0n ? [] : [{ conversationId, seq: c.delivered }];
    });
    const putBack = (): void => {
      for (const id of acks) this.ackDue.add(id);
      for (const [id, seq] of reads) if (!this.readDue.has(id)) this.readDue.set(id, seq);
    };
    try {
      await this.ctx.profile.flushCursors();
    } catch (err) {
      putBack();
      this.ctx.events.reportError(err);
      this.schedule(acks[0] ?? reads[0]?.[0] ?? "", 0);
      return;
    }
    if (this.stream.ready !== s) {
      // The stream went away meanwhile; the next one gets these.
      putBack();
      return;
    }
    for (let i = 0; i < ackCursors.length; i += FRAME_CURSOR_LIMIT) {
      this.stream.push(s, { case: "ack", value: { cursors: ackCursors.slice(i, i + FRAME_CURSOR_LIMIT) } });
    }
    const readCursors = reads.map(([conversationId, seq]) => ({ conversationId, seq }));
    for (let i = 0; i < readCursors.length; i += FRAME_CURSOR_LIMIT) {
      this.stream.push(s, { case: "read", value: { cursors: readCursors.slice(i, i + FRAME_CURSOR_LIMIT) } });
    }
  }
}
