import type { ServerConnection } from "../transport.js";
import type { IncomingEntry } from "../types.js";

/** A user this user blocked. */
export interface BlockedUser {
  /** The blocked user. */
  userId: string;
  /** When, in milliseconds since the Unix epoch. */
  blockedAtMs: bigint;
}

/** What a report says and discloses. */
export interface ReportOptions {
  /** Why, in the reporter's words (at most 500 characters). */
  reason?: string;
  /** The conversation whose messages are disclosed (and of the reported message). */
  conversationId?: string;
  /** The reported message's seq in conversationId. */
  targetSeq?: bigint | number;
  /**
   * How many of the conversation's last entries to look through and disclose the messages of
   * (0, the default, discloses nothing; at most 50). They are decrypted on this device and sent
   * as plaintext to the operators: the server sees what is disclosed, nothing else.
   */
  disclose?: number;
}

/** The server's bounds of a report (services/accounts/safety.ts). */
export const REPORT_BOUNDS = { messages: 50, textBytes: 4096, totalTextBytes: 65_536 } as const;

type History = (
  conversationId: string,
  options: { afterSeq?: bigint | number; limit?: number },
) => Promise<{ entries: IncomingEntry[]; lastSeq: bigint; hasMore: boolean }>;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A message's text cut to at most `bytes` of UTF-8 (never in the middle of a character). */
function cut(text: string, bytes: number): string {
  if (encoder.encode(text).length <= bytes) return text;
  let out = "";
  let used = 0;
  for (const ch of text) {
    const n = encoder.encode(ch).length;
    if (used + n > bytes) break;
    out += ch;
    used += n;
  }
  return out;
}

/** Blocking and reporting (AccountService.BlockUser, UnblockUser, ListBlockedUsers, ReportUser). */
export class Safety {
  constructor(
    private readonly conn: ServerConnection,
    private readonly history: History,
  ) {}

  /** Blocks a user; false when blocked already. */
  async block(userId: string): Promise<boolean> {
    return (await this.conn.accounts.blockUser({ userId })).newlyBlocked;
  }

  /** Lifts a block; false when there was none. */
  async unblock(userId: string): Promise<boolean> {
    return (await this.conn.accounts.unblockUser({ userId })).wasBlocked;
  }

  /** The users this user blocked, from any of their devices. */
  async blocked(): Promise<BlockedUser[]> {
    const res = await this.conn.accounts.listBlockedUsers({});
    return res.blocked.map((b) => ({ userId: b.userId, blockedAtMs: b.blockedAtMs }));
  }

  /**
   * Reports a user to the operators, disclosing the messages of the conversation's last
   * `disclose` entries as this device decrypted them (within the server's bounds: the oldest are
   * left out first). Returns the report's id. RESOURCE_EXHAUSTED past the per-user rate.
   */
  async report(userId: string, options: ReportOptions = {}): Promise<string> {
    const conversationId = options.conversationId ?? "";
    const disclose = Math.min(Math.max(0, options.disclose ?? 0), REPORT_BOUNDS.messages);
    const messages =
      conversationId !== "" && disclose > 0 ? await this.lastMessages(conversationId, disclose) : [];
    const res = await this.conn.accounts.reportUser({
      reportedUserId: userId,
      reason: options.reason ?? "",
      conversationId,
      targetSeq: BigInt(options.targetSeq ?? 0),
      messages,
    });
    return res.reportId;
  }

  private async lastMessages(conversationId: string, count: number) {
    const { lastSeq } = await this.history(conversationId, { afterSeq: 0, limit: 1 });
    const after = lastSeq > BigInt(count) ? lastSeq - BigInt(count) : 0n;
    const { entries } = await this.history(conversationId, { afterSeq: after, limit: count });
    const out: {
      conversationId: string;
      seq: bigint;
      senderUserId: string;
      sentAtMs: bigint;
      text: string;
    }[] = [];
    let total = 0;
    // Newest first, so the bytes bound drops the oldest.
    for (const e of [...entries].reverse()) {
      if (e.kind !== "message" || e.payload === undefined || e.redacted || e.decodeError !== undefined)
        continue;
      const text = cut(decoder.decode(e.payload), REPORT_BOUNDS.textBytes);
      const bytes = encoder.encode(text).length;
      if (total + bytes > REPORT_BOUNDS.totalTextBytes) break;
      total += bytes;
      out.push({ conversationId, seq: e.seq, senderUserId: e.senderUserId, sentAtMs: e.serverTimeMs, text });
    }
    return out.reverse();
  }
}
