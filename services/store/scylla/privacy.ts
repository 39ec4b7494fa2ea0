/**
 * Users' privacy settings on ScyllaDB (the AccountStore's privacy methods): one row per setting in
 * `user_privacy` (migration 0004), so a setting added later needs no schema change and a change
 * of one setting never overwrites a concurrent change of another.
 */
import type { PrivacyAudience, PrivacyRecord } from "../types.js";
import type { Cql } from "./schema.js";

/** The rows of user_privacy: a PrivacyRecord field, its row name and whether it is an on/off switch. */
const PRIVACY_NAMES: readonly (readonly [keyof PrivacyRecord, string, "audience" | "switch"])[] = [
  ["groupAdd", "group_add", "audience"],
  ["directOpen", "direct_open", "audience"],
  ["lastSeen", "last_seen", "audience"],
  ["readReceipts", "read_receipts", "switch"],
  ["profile", "profile", "audience"],
];

const AUDIENCES: ReadonlySet<string> = new Set<PrivacyAudience>(["everyone", "contacts", "nobody"]);

/** A switch's row value ("on" or "off"), so the value column stays text for every setting. */
function switchText(value: boolean): string {
  return value ? "on" : "off";
}

/** Users whose settings getPrivacy reads at once (one single-partition read each). */
const PRIVACY_READ_CONCURRENCY = 32;

/** The user_privacy rows; the caller checks that a user exists before setting theirs. */
export class ScyllaPrivacy {
  constructor(private readonly cql: Cql) {}

  async getPrivacy(userIds: readonly string[]): Promise<Map<string, PrivacyRecord>> {
    const out = new Map<string, PrivacyRecord>();
    const unique = [...new Set(userIds)];
    for (let i = 0; i < unique.length; i += PRIVACY_READ_CONCURRENCY) {
      const chunk = unique.slice(i, i + PRIVACY_READ_CONCURRENCY);
      const records = await Promise.all(chunk.map((id) => this.readPrivacy(id)));
      for (const [j, id] of chunk.entries()) out.set(id, records[j]!);
    }
    return out;
  }

  /** Writes the given settings (plain last-write-wins rows: nothing is compared). */
  async setPrivacy(userId: string, changes: PrivacyRecord): Promise<PrivacyRecord> {
    const now = Date.now();
    const writes = PRIVACY_NAMES.flatMap(([field, name]) => {
      const value = changes[field];
      return value === undefined
        ? []
        : [
            {
              query: "INSERT INTO user_privacy (user_id, name, value, updated_at_ms) VALUES (?, ?, ?, ?)",
              params: [userId, name, typeof value === "boolean" ? switchText(value) : value, now],
            },
          ];
    });
    // One partition, so the batch is atomic without the batch log.
    if (writes.length > 0) await this.cql.batch(writes);
    return this.readPrivacy(userId);
  }

  // Rows of settings this build does not know (written by a newer one) are left out.
  private async readPrivacy(userId: string): Promise<PrivacyRecord> {
    const record: PrivacyRecord = {};
    const result = await this.cql.run("SELECT name, value FROM user_privacy WHERE user_id = ?", [userId]);
    for (const row of result.rows ?? []) {
      const known = PRIVACY_NAMES.find(([, name]) => name === row.get("name"));
      const value = row.get("value") as string | null;
      if (known === undefined || value === null) continue;
      const [field, , kind] = known;
      if (kind === "switch" && field === "readReceipts") {
        if (value === "on" || value === "off") record[field] = value === "on";
      } else if (kind === "audience" && field !== "readReceipts" && AUDIENCES.has(value)) {
        record[field] = value as PrivacyAudience;
      }
    }
    return record;
  }
}
