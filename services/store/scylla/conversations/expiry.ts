/**
 * The idempotency sweep: idempotency records are found by time through idempotency_by_time
 * (slot, shard) and deleted unless written again since.
 */
import { type Cql, IDEMPOTENCY_SHARDS, num, type Row } from "../schema.js";
import { slotOf } from "./layout.js";
import { inSlices } from "./parallel.js";

/** Parallel statements per expiry step, so a large backlog does not flood the driver's queue. */
const EXPIRE_CONCURRENCY = 64;

/** Removes idempotency records older than a time. */
export class IdempotencyExpiry {
  constructor(private readonly cql: Cql) {}

  async expireIdempotency(olderThanMs: number): Promise<number> {
    if (!Number.isFinite(olderThanMs)) return 0;
    const meta = async (name: string) => {
      const row = await this.cql.one("SELECT value FROM store_meta WHERE name = ?", [name]);
      return row === undefined ? undefined : num(row.get("value"));
    };
    const [swept, epoch] = await Promise.all([
      meta("idempotency_swept_before_slot"),
      meta("idempotency_epoch_ms"),
    ]);
    const last = slotOf(olderThanMs);
    // One slot back from where the last sweep ended catches records whose writer's clock lagged.
    const first = Math.max(0, (swept ?? slotOf(epoch ?? olderThanMs)) - 1);
    let removed = 0;
    for (let slot = first; slot <= last; slot++) {
      const shards = Array.from({ length: IDEMPOTENCY_SHARDS }, (_, shard) => shard);
      const counts = await Promise.all(
        shards.map((shard) => this.expireSlot(slot, shard, olderThanMs, slot < last)),
      );
      for (const c of counts) removed += c;
    }
    if (swept === undefined || last > swept) {
      await this.cql.run("UPDATE store_meta SET value = ? WHERE name = 'idempotency_swept_before_slot'", [
        last,
      ]);
    }
    return removed;
  }

  private async expireSlot(
    slot: number,
    shard: number,
    olderThanMs: number,
    whole: boolean,
  ): Promise<number> {
    const rows: Row[] = [];
    for await (const row of this.cql.pages(
      `SELECT at_ms, conversation_id, device_id, client_msg_id, write_ts FROM idempotency_by_time
        WHERE slot = ? AND shard = ? AND at_ms < ?`,
      [slot, shard, olderThanMs],
      { fetchSize: 1000 },
    )) {
      rows.push(row);
    }
    if (rows.length === 0) return 0;
    let removed = 0;
    await inSlices(rows, EXPIRE_CONCURRENCY, async (row) => {
      const key = [row.get("conversation_id"), row.get("device_id"), row.get("client_msg_id")];
      // At the record's own write timestamp, with no read first: the tombstone shadows only cells
      // written at or before it, so a record written again later (a later timestamp, and its own
      // index row) stays, whether it came before this delete or races it. Reading the record first
      // to check cost as much again as the delete (bench/scylla.ts measured both).
      await this.cql.run(
        "DELETE FROM idempotency USING TIMESTAMP ? WHERE conversation_id = ? AND device_id = ? AND client_msg_id = ?",
        [row.get("write_ts"), ...key],
      );
      removed++;
    });
    if (whole) {
      await this.cql.run("DELETE FROM idempotency_by_time WHERE slot = ? AND shard = ?", [slot, shard]);
    } else {
      await this.cql.run("DELETE FROM idempotency_by_time WHERE slot = ? AND shard = ? AND at_ms < ?", [
        slot,
        shard,
        olderThanMs,
      ]);
    }
    return removed;
  }
}
