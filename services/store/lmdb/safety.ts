/**
 * Users' blocks and reports on LMDB (the SafetyStore part of the accounts port). Key layout:
 *
 *   userBlocks          [userId, blockedUserId]                     blockedAtMs
 *   reports             reportId                                    ReportRecord
 *   reportsByUser       [reportedUserId, reportId]                  true (listing index)
 */
import type { Database, Key } from "lmdb";
import { StoreError } from "../errors.js";
import type { BlockRecord, ReportRecord, SafetyStore } from "../types.js";
import type { WriteUnit } from "./environment.js";

/** The sub-databases of blocks and reports. */
export interface SafetyDbs {
  userBlocks: Database<number, Key>;
  reports: Database<ReportRecord, Key>;
  reportsByUser: Database<true, Key>;
}

// See conversations.ts: an exclusive upper bound for every key that starts with a prefix.
const HIGH = Buffer.from([0xff]);

// Only the known fields (msgpack would store anything else given).
function reportRecord(r: ReportRecord): ReportRecord {
  return {
    reportId: r.reportId,
    reporterUserId: r.reporterUserId,
    reportedUserId: r.reportedUserId,
    createdAtMs: r.createdAtMs,
    reason: r.reason,
    conversationId: r.conversationId,
    targetSeq: r.targetSeq,
    messages: r.messages.map((m) => ({
      conversationId: m.conversationId,
      seq: m.seq,
      senderUserId: m.senderUserId,
      sentAtMs: m.sentAtMs,
      text: m.text,
    })),
  };
}

export class LmdbSafetyStore implements SafetyStore {
  constructor(
    private readonly dbs: SafetyDbs,
    private readonly writeUnit: WriteUnit,
  ) {}

  async block(userId: string, blockedUserId: string, atMs: number, maxBlocks: number): Promise<boolean> {
    const { dbs } = this;
    // Counted and written in one unit, so concurrent blocks never pass the cap.
    return this.writeUnit(() => {
      if (dbs.userBlocks.doesExist([userId, blockedUserId])) return false;
      const count = dbs.userBlocks.getKeysCount({ start: [userId], end: [userId, HIGH] });
      if (count >= maxBlocks)
        throw new StoreError("limit", `${userId} has ${count} blocks, the most allowed`);
      dbs.userBlocks.put([userId, blockedUserId], atMs);
      return true;
    });
  }

  async unblock(userId: string, blockedUserId: string): Promise<boolean> {
    const { dbs } = this;
    return this.writeUnit(() => {
      if (!dbs.userBlocks.doesExist([userId, blockedUserId])) return false;
      dbs.userBlocks.remove([userId, blockedUserId]);
      return true;
    });
  }

  async listBlocked(userId: string): Promise<BlockRecord[]> {
    const out: BlockRecord[] = [];
    for (const { key, value } of this.dbs.userBlocks.getRange({ start: [userId], end: [userId, HIGH] })) {
      out.push({ blockedUserId: (key as [string, string])[1], blockedAtMs: value });
    }
    return out;
  }

  async putReport(report: ReportRecord): Promise<void> {
    const { dbs } = this;
    await this.writeUnit(() => {
      if (dbs.reports.doesExist(report.reportId)) {
        throw new StoreError("already_exists", `report ${report.reportId} exists`);
      }
      dbs.reports.put(report.reportId, reportRecord(report));
      dbs.reportsByUser.put([report.reportedUserId, report.reportId], true);
    });
  }

  async listReports(
    reportedUserId: string | undefined,
    limit: number,
  ): Promise<{ reports: ReportRecord[]; truncated: boolean }> {
    const ids: string[] = [];
    // Newest first: ids sort by time, so a reverse range read stops after limit + 1.
    if (reportedUserId === undefined) {
      for (const key of this.dbs.reports.getKeys({ reverse: true, limit: limit + 1 }))
        ids.push(key as string);
    } else {
      for (const key of this.dbs.reportsByUser.getKeys({
        start: [reportedUserId, HIGH],
        end: [reportedUserId],
        reverse: true,
        limit: limit + 1,
      })) {
        ids.push((key as [string, string])[1]);
      }
    }
    const reports: ReportRecord[] = [];
    for (const id of ids.slice(0, limit)) {
      const r = this.dbs.reports.get(id);
      if (r !== undefined) reports.push(r);
    }
    return { reports, truncated: ids.length > limit };
  }
}
