/**
 * Sequencer shard leases on ScyllaDB (the ShardLeaseStore port; the protocol that uses them is
 * services/sequencer/ownership.ts, described in docs/scylla.md).
 *
 * Two tables. `sequencer_replicas` holds one heartbeat row per live replica, written without LWT
 * and with a TTL, so a replica that dies disappears on its own. `shard_leases` holds one row per
 * shard, written only by LWT conditioned on the row's epoch, so of any number of replicas that try
 * to move a lease at once exactly one succeeds, and the epoch grows by one at every move.
 */
import type { ShardLease, ShardLeaseStore } from "../types.js";
import { unknownOutcome } from "./outcome.js";
import { type Cql, long, num } from "./schema.js";

export class ScyllaShardLeases implements ShardLeaseStore {
  constructor(private readonly cql: Cql) {}

  async heartbeat(ordinal: number, incarnation: string, ttlSeconds: number): Promise<void> {
    await this.cql.run(
      "INSERT INTO sequencer_replicas (ordinal, incarnation, started_at_ms) VALUES (?, ?, ?) USING TTL ?",
      [ordinal, incarnation, long(Date.now()), ttlSeconds],
    );
  }

  async liveReplicas(): Promise<Set<number>> {
    // A handful of rows (one per replica): a whole-table read is the right tool here.
    const live = new Set<number>();
    for await (const row of this.cql.pages("SELECT ordinal FROM sequencer_replicas", []))
      live.add(row.get("ordinal") as number);
    return live;
  }

  async leases(): Promise<ShardLease[]> {
    // LOCAL_SERIAL: every move is an LWT, and a serial read sees the last one that won (and
    // finishes one left in flight), never an older holder.
    const leases: ShardLease[] = [];
    for await (const row of this.cql.pages("SELECT shard, owner, epoch FROM shard_leases", [], {
      serial: true,
    })) {
      leases.push({
        shard: row.get("shard") as number,
        owner: row.get("owner") as number,
        epoch: num(row.get("epoch")),
      });
    }
    return leases;
  }

  async transfer(
    shard: number,
    fromEpoch: number | undefined,
    owner: number,
  ): Promise<ShardLease | undefined> {
    const epoch = (fromEpoch ?? 0) + 1;
    const now = long(Date.now());
    try {
      const result =
        fromEpoch === undefined
          ? await this.cql.lwt(
              "INSERT INTO shard_leases (shard, owner, epoch, moved_at_ms) VALUES (?, ?, ?, ?) IF NOT EXISTS",
              [shard, owner, long(epoch), now],
            )
          : await this.cql.lwt(
              "UPDATE shard_leases SET owner = ?, epoch = ?, moved_at_ms = ? WHERE shard = ? IF epoch = ?",
              [owner, long(epoch), now, shard, long(fromEpoch)],
            );
      return result.wasApplied() ? { shard, owner, epoch } : undefined;
    } catch (err) {
      if (!unknownOutcome(err)) throw err;
      // The Paxos round may have been accepted; a serial read settles it for good. The epoch is
      // ours only if the row now says exactly what this move wrote.
      const row = await this.cql.one("SELECT owner, epoch FROM shard_leases WHERE shard = ?", [shard], {
        serial: true,
      });
      const won = row !== undefined && num(row.get("epoch")) === epoch && row.get("owner") === owner;
      return won ? { shard, owner, epoch } : undefined;
    }
  }
}
