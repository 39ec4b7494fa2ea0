/**
 * Users' blocks and reports on ScyllaDB (the SafetyStore part of the accounts port; tables of
 * migration 0010). Plain writes throughout: a block is a user's own row, written by that user's
 * devices only, and a report is written once under a new id.
 */
import { StoreError } from "../errors.js";
import type { BlockRecord, ReportRecord, SafetyStore } from "../types.js";
import { type Cql, long, num } from "./schema.js";

/** Days back that an everyone listing of reports looks (one partition read per day). */
export const REPORT_LISTING_DAYS = 90;

const DAY_MS = 86_400_000;

export class ScyllaSafetyStore implements SafetyStore {
  constructor(private readonly cql: Cql) {}

  async block(userId: string, blockedUserId: string, atMs: number, maxBlocks: number): Promise<boolean> {
    const existing = await this.cql.one(
      "SELECT blocked_at_ms FROM user_blocks WHERE user_id = ? AND blocked_user_id = ?",
      [userId, blockedUserId],
    );
    if (existing !== undefined) return false;
    // Counted before the write: concurrent blocks of one user may pass the cap by a few, which
    // costs only a slightly longer list (the cap bounds the gateways' cache entries).
    const row = await this.cql.one("SELECT COUNT(*) AS n FROM user_blocks WHERE user_id = ?", [userId]);
    const count = num(row?.get("n"));
    if (count >= maxBlocks) throw new StoreError("limit", `${userId} has ${count} blocks, the most allowed`);
    await this.cql.run("INSERT INTO user_blocks (user_id, blocked_user_id, blocked_at_ms) VALUES (?, ?, ?)", [
      userId,
      blockedUserId,
      long(atMs),
    ]);
    return true;
  }

  async unblock(userId: string, blockedUserId: string): Promise<boolean> {
    const existing = await this.cql.one(
      "SELECT blocked_at_ms FROM user_blocks WHERE user_id = ? AND blocked_user_id = ?",
      [userId, blockedUserId],
    );
    if (existing === undefined) return false;
    await this.cql.run("DELETE FROM user_blocks WHERE user_id = ? AND blocked_user_id = ?", [
      userId,
      blockedUserId,
    ]);
    return true;
  }

  async listBlocked(userId: string): Promise<BlockRecord[]> {
    const out: BlockRecord[] = [];
    for await (const row of this.cql.pages(
      "SELECT blocked_user_id, blocked_at_ms FROM user_blocks WHERE user_id = ?",
      [userId],
    )) {
      out.push({
        blockedUserId: row.get("blocked_user_id") as string,
        blockedAtMs: num(row.get("blocked_at_ms")),
      });
    }
    return out;
  }

  async putReport(report: ReportRecord): Promise<void> {
    // The body first: a listing row never points at a missing body (a crash in between leaves an
    // unlisted body, harmless).
    await this.cql.run("INSERT INTO abuse_reports (report_id, body) VALUES (?, ?)", [
      report.reportId,
      JSON.stringify(report),
    ]);
    await Promise.all([
      this.cql.run("INSERT INTO abuse_reports_by_user (reported_user_id, report_id) VALUES (?, ?)", [
        report.reportedUserId,
        report.reportId,
      ]),
      this.cql.run("INSERT INTO abuse_reports_by_day (day, report_id) VALUES (?, ?)", [
        Math.floor(report.createdAtMs / DAY_MS),
        report.reportId,
      ]),
    ]);
  }

  async listReports(
    reportedUserId: string | undefined,
    limit: number,
  ): Promise<{ reports: ReportRecord[]; truncated: boolean }> {
    const ids: string[] = [];
    if (reportedUserId !== undefined) {
      const rows = await this.cql.run(
        "SELECT report_id FROM abuse_reports_by_user WHERE reported_user_id = ? ORDER BY report_id DESC LIMIT ?",
        [reportedUserId, limit + 1],
      );
      for (const row of rows.rows) ids.push(row.get("report_id") as string);
    } else {
      const today = Math.floor(Date.now() / DAY_MS);
      for (let day = today; day > today - REPORT_LISTING_DAYS && ids.length <= limit; day--) {
        const rows = await this.cql.run(
          "SELECT report_id FROM abuse_reports_by_day WHERE day = ? ORDER BY report_id DESC LIMIT ?",
          [day, limit + 1 - ids.length],
        );
        for (const row of rows.rows) ids.push(row.get("report_id") as string);
      }
    }
    const bodies = await Promise.all(
      ids
        .slice(0, limit)
        .map((id) => this.cql.one("SELECT body FROM abuse_reports WHERE report_id = ?", [id])),
    );
    const reports = bodies.flatMap((row) =>
      row === undefined ? [] : [JSON.parse(row.get("body") as string) as ReportRecord],
    );
    return { reports, truncated: ids.length > limit };
  }
}
