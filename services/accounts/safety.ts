import { randomBytes } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { BlocksChangedSchema, BusEventSchema } from "../../gen/switchboard/internal/v1/events_pb.js";
import type { EventBus } from "../bus/types.js";
import { InvalidInputError, LimitError, NotFoundError } from "../common/errors.js";
import type { Logger } from "../common/log.js";
import { isStoreError } from "../store/errors.js";
import type { AccountStore, BlockRecord, DisclosedMessageRecord, ReportRecord } from "../store/types.js";
import { type AccountRate, enforce, type RefusalSink } from "./refusals.js";

/**
 * Blocks a user may hold. It bounds the gateways' cache entry of one user (about 40 bytes an id)
 * and DirectoryService.GetBlockedUsers answers.
 */
export const MAX_BLOCKS_PER_USER = 1000;

/** Bounds of one report: disclosed messages, bytes of one message's text, bytes of all text. */
export const REPORT_LIMITS = {
  messages: 50,
  textBytes: 4096,
  totalTextBytes: 65_536,
  reasonChars: 500,
} as const;

/** Reports an operator listing returns at most. */
export const MAX_REPORT_LISTING = 500;

/**
 * Users' blocks. The store holds them (both engines); every change is broadcast as BlocksChanged
 * so gateways drop their cached copy (services/gateway/blocks.ts), the way revocations reach them.
 * Only the blocker's own devices can list them: no call answers "who blocked me".
 */
export class Blocks {
  constructor(
    private readonly store: AccountStore,
    private readonly bus: EventBus,
    private readonly log: Logger,
    private readonly now: () => number,
    private readonly rate?: AccountRate | undefined,
    private readonly refusals?: RefusalSink,
  ) {}

  /** Spends one of the user's block changes: each is a store write and a broadcast to every gateway. */
  private async spend(userId: string): Promise<void> {
    if (this.refusals === undefined) return;
    await enforce(
      this.rate,
      userId,
      1,
      this.refusals,
      "block_rate",
      `blocks and unblocks are limited to ${this.rate?.limit.burst} per hour per user`,
      { userId },
    );
  }

  /** Tells every gateway: they drop their copy, and tell the user's streams (all devices). */
  private async changed(userId: string): Promise<void> {
    const deviceIds = (await this.store.listDevices(userId))
      .filter((d) => d.revokedAtMs === 0)
      .map((d) => d.deviceId);
    this.bus.broadcast([
      create(BusEventSchema, {
        event: { case: "blocksChanged", value: create(BlocksChangedSchema, { userId, deviceIds }) },
      }),
    ]);
  }

  /** Blocks target for userId; false when blocked already. */
  async block(userId: string, targetUserId: string): Promise<boolean> {
    if (targetUserId === userId) throw new InvalidInputError("user_id: you cannot block yourself");
    await this.spend(userId);
    if ((await this.store.getUser(targetUserId)) === undefined)
      throw new NotFoundError(`no user ${targetUserId}`);
    let added: boolean;
    try {
      added = await this.store.block(userId, targetUserId, this.now(), MAX_BLOCKS_PER_USER);
    } catch (err) {
      if (isStoreError(err, "limit")) {
        throw new LimitError(`at most ${MAX_BLOCKS_PER_USER} blocked users; unblock someone first`);
      }
      throw err;
    }
    // Broadcast even when nothing changed, for a gateway that missed the first one.
    await this.changed(userId);
    // Counts only: who blocked whom stays out of the logs.
    if (added) this.log.info({ userId }, "user blocked someone");
    return added;
  }

  /** Lifts a block; false when there was none. */
  async unblock(userId: string, targetUserId: string): Promise<boolean> {
    await this.spend(userId);
    const removed = await this.store.unblock(userId, targetUserId);
    await this.changed(userId);
    return removed;
  }

  /** The user's blocks, by blocked user id. */
  async list(userId: string): Promise<BlockRecord[]> {
    const blocks = await this.store.listBlocked(userId);
    return blocks.sort((a, b) => (a.blockedUserId < b.blockedUserId ? -1 : 1));
  }

  /** The blocked user ids of each user asked, in that order (for the gateways). */
  async ofUsers(userIds: readonly string[]): Promise<{ userId: string; blockedUserIds: string[] }[]> {
    const lists = await Promise.all(userIds.map((id) => this.store.listBlocked(id)));
    return userIds.map((userId, i) => ({ userId, blockedUserIds: lists[i]!.map((b) => b.blockedUserId) }));
  }
}

/** What a reporter sends (validated here, as the domain's bounds). */
export interface ReportInput {
  reportedUserId: string;
  reason: string;
  conversationId: string;
  targetSeq: number;
  messages: DisclosedMessageRecord[];
}

/** A new report id: the time in base 36 (fixed width, so ids sort by time) and 10 random bytes. */
function newReportId(atMs: number): string {
  return `rp_${atMs.toString(36).padStart(9, "0")}${randomBytes(10).toString("hex")}`;
}

/**
 * Users' reports of other users, with the plaintexts the reporter's device chose to disclose,
 * stored for operators (AdminService.ListReports). Rate-limited per reporter.
 */
export class Reports {
  constructor(
    private readonly store: AccountStore,
    private readonly rate: AccountRate | undefined,
    private readonly refusals: RefusalSink,
    private readonly log: Logger,
    private readonly now: () => number,
  ) {}

  /** Stores a report; returns its id. */
  async report(reporterUserId: string, input: ReportInput): Promise<string> {
    if (input.reportedUserId === reporterUserId)
      throw new InvalidInputError("reported_user_id: not yourself");
    if ([...input.reason].length > REPORT_LIMITS.reasonChars) {
      throw new InvalidInputError(`reason: at most ${REPORT_LIMITS.reasonChars} characters`);
    }
    if (input.messages.length > REPORT_LIMITS.messages) {
      throw new InvalidInputError(`messages: at most ${REPORT_LIMITS.messages}`);
    }
    let total = 0;
    for (const [i, m] of input.messages.entries()) {
      const bytes = Buffer.byteLength(m.text, "utf8");
      if (bytes > REPORT_LIMITS.textBytes) {
        throw new InvalidInputError(`messages[${i}].text: at most ${REPORT_LIMITS.textBytes} bytes`);
      }
      total += bytes;
    }
    if (total > REPORT_LIMITS.totalTextBytes) {
      throw new InvalidInputError(`messages: at most ${REPORT_LIMITS.totalTextBytes} bytes of text in all`);
    }
    // After the free checks, before any read: a flood costs the store nothing once refused.
    await enforce(
      this.rate,
      reporterUserId,
      1,
      this.refusals,
      "report_rate",
      `reports are limited to ${this.rate?.limit.burst} per day per user`,
      { userId: reporterUserId },
    );
    if ((await this.store.getUser(input.reportedUserId)) === undefined) {
      throw new NotFoundError(`no user ${input.reportedUserId}`);
    }
    const at = this.now();
    const record: ReportRecord = { reportId: newReportId(at), reporterUserId, createdAtMs: at, ...input };
    await this.store.putReport(record);
    this.log.info(
      { reportId: record.reportId, reportedUserId: input.reportedUserId, messages: input.messages.length },
      "user reported",
    );
    return record.reportId;
  }

  /** Reports newest first, of one user or everyone. */
  list(
    reportedUserId: string | undefined,
    limit: number,
  ): Promise<{ reports: ReportRecord[]; truncated: boolean }> {
    return this.store.listReports(reportedUserId, Math.min(Math.max(1, limit), MAX_REPORT_LISTING));
  }
}
