/**
 * Which fanout worker consumes which partition of committed events. Each worker that consumes
 * is a member: it keeps a key of its own alive in a JetStream key-value bucket and holds leases,
 * one key per partition, that it renews by compare-and-set. A worker takes its fair share of the
 * partitions, gives back what is above it when others join, and takes over the partitions of one
 * that stopped (at once) or died (when its leases expire). One worker at a time per partition
 * keeps each conversation's events in commit order on their way to the gateways; two workers on
 * one consumer would split a group's entries and make every member's stream put them back in
 * order (docs/benchmarks.md, the thirtieth pass).
 *
 * A lease is a liveness claim, not a lock the correctness rests on: a worker stalled past its
 * lease may handle a batch the next owner also handles. The gateways drop what they already sent
 * and read the log for a gap, as they do for any redelivery.
 */
import { randomBytes } from "node:crypto";
import type { JetStreamClient, JetStreamManager, KV } from "nats";
import type { Logger } from "../../common/log.js";
import { fnv1a } from "../../common/shard.js";
import { type Link, sleep } from "./connection.js";
import type { Settings } from "./settings.js";
import { PARTITIONS } from "./subjects.js";

/** A lease is renewed this many times within its life, so that one late renewal does not lose it. */
const RENEWALS_PER_LEASE = 3;

/** What a member does when partitions come and go. */
export interface PartitionHolder {
  /** Starts consuming a partition this member now holds. */
  gained(partition: number): void;
  /**
   * Stops fetching from a partition and resolves once its fetches in flight have run out and
   * everything they brought is settled. Called before a lease is given back, and when one was
   * lost.
   */
  stopped(partition: number): Promise<void>;
}

/** The bucket of a consumer group's leases. */
export function leaseBucket(settings: Settings): string {
  return `${settings.stream}_${settings.durable}_leases`;
}

/** This member's leases: the partitions it holds and the revision of each lease key. */
export class PartitionLeases {
  readonly memberId = `${process.pid}-${randomBytes(6).toString("hex")}`;
  /** Every key this member writes holds its id, so an operator sees who holds what (`nats kv ls`). */
  private readonly value = new TextEncoder().encode(this.memberId);
  private readonly held = new Map<number, number>();
  /** Held partitions being stopped to be given back: still renewed until their batch settles. */
  private readonly releasing = new Set<number>();
  /** Held partitions stopped, whose leases the next round deletes. */
  private readonly released = new Set<number>();
  private kv: KV | undefined;
  private stopping = false;
  private signalStop: () => void = () => {};
  private readonly stopSignal = new Promise<void>((resolve) => {
    this.signalStop = resolve;
  });
  private loop: Promise<void> = Promise.resolve();

  constructor(
    private readonly link: Link,
    private readonly js: JetStreamClient,
    private readonly jsm: JetStreamManager,
    private readonly settings: Settings,
    private readonly holder: PartitionHolder,
    private readonly log: Logger,
  ) {}

  /** The partitions this member holds now, those it is giving back included. */
  partitions(): number[] {
    return [...this.held.keys()].sort((a, b) => a - b);
  }

  /** Whether this member holds a partition and is not giving it back. */
  holds(partition: number): boolean {
    return this.held.has(partition) && !this.releasing.has(partition) && !this.released.has(partition);
  }

  start(): void {
    this.loop = this.run();
  }

  /** Stops consuming and gives every lease back, so that the other members take them at once. */
  async stop(): Promise<void> {
    if (this.stopping) return this.loop;
    this.stopping = true;
    this.signalStop();
    await this.loop;
    // Rounds have ended: nothing else writes the lease keys now.
    await Promise.all(this.partitions().map((p) => this.holder.stopped(p)));
    await Promise.all(this.partitions().map((p) => this.deleteLease(p)));
    await this.leave();
  }

  private async run(): Promise<void> {
    const tick = this.settings.leaseMs / RENEWALS_PER_LEASE;
    let failing = false;
    while (!this.stopping) {
      if (!this.link.ready()) {
        if (this.link.connection.isClosed()) return;
        await Promise.race([this.link.reconnected(), this.stopSignal]);
        continue;
      }
      try {
        await this.round();
        if (failing) this.log.info({ member: this.memberId }, "fanout partition leases renewed again");
        failing = false;
      } catch (err) {
        if (this.stopping || this.link.connection.isClosed()) return;
        if (!failing)
          this.log.warn({ err, member: this.memberId }, "fanout partition leases failing; retrying");
        failing = true;
      }
      await sleep(tick, this.stopSignal);
    }
  }

  /**
   * One round: say this member is alive, give back what has stopped, renew the rest, and give
   * back or take to reach the fair share. Only rounds (and stop, after them) write lease keys,
   * so a renewal never races a give-back. A round never waits for a handler: a partition being
   * given back stays held, and renewed, until its batch in hand is settled.
   */
  private async round(): Promise<void> {
    const kv = await this.bucket();
    await kv.put(this.memberKey(), this.value);
    const fair = Math.ceil(PARTITIONS / (await this.members()));
    for (const partition of [...this.released]) await this.deleteLease(partition);
    await Promise.all(
      [...this.held].map(async ([partition, revision]) => {
        try {
          this.held.set(partition, await kv.update(leaseKey(partition), this.value, revision));
        } catch (err) {
          // Expired and perhaps taken: whoever holds it now consumes it.
          this.held.delete(partition);
          this.releasing.delete(partition);
          this.log.warn({ err, partition, member: this.memberId }, "fanout partition lease lost");
          this.stopConsuming(partition);
        }
      }),
    );
    const kept = this.partitions().filter((p) => !this.releasing.has(p));
    // Above the fair share when others joined: the highest partitions go back first.
    for (const partition of kept.slice(fair)) {
      this.releasing.add(partition);
      this.stopConsuming(partition).then(() => {
        if (this.releasing.delete(partition)) this.released.add(partition);
      });
    }
    let holding = kept.length;
    if (holding >= fair || this.stopping) return;
    // Members start their search at different partitions, so that they rarely race for one.
    const start = fnv1a(this.memberId) % PARTITIONS;
    for (let i = 0; i < PARTITIONS && holding < fair && !this.stopping; i++) {
      const partition = (start + i) % PARTITIONS;
      if (this.held.has(partition)) continue;
      let revision: number;
      try {
        revision = await kv.create(leaseKey(partition), this.value);
      } catch (err) {
        if (!isHeldElsewhere(err)) throw err;
        continue;
      }
      this.held.set(partition, revision);
      holding++;
      this.holder.gained(partition);
    }
  }

  private stopConsuming(partition: number): Promise<void> {
    return this.holder.stopped(partition).catch((err: unknown) => {
      this.log.warn({ err, partition }, "fanout partition not stopped cleanly");
    });
  }

  /** Deletes a lease this member no longer consumes, if it is still this member's. */
  private async deleteLease(partition: number): Promise<void> {
    const revision = this.held.get(partition);
    this.held.delete(partition);
    this.released.delete(partition);
    this.releasing.delete(partition);
    if (revision === undefined) return;
    try {
      await (await this.bucket()).delete(leaseKey(partition), { previousSeq: revision });
    } catch (err) {
      // It expires on its own; the others wait for that instead.
      this.log.warn({ err, partition }, "fanout partition lease not given back");
    }
  }

  /** Removes this member's key, so that the others count one member fewer at once. */
  private async leave(): Promise<void> {
    if (this.kv === undefined || this.link.connection.isClosed()) return;
    try {
      await this.jsm.streams.purge(`KV_${leaseBucket(this.settings)}`, {
        filter: `$KV.${leaseBucket(this.settings)}.${this.memberKey()}`,
      });
    } catch (err) {
      this.log.warn({ err }, "fanout member key not removed; it expires on its own");
    }
  }

  /** Members alive: the member keys in the bucket (keys expire with their member). */
  private async members(): Promise<number> {
    const bucket = leaseBucket(this.settings);
    const info = await this.jsm.streams.info(`KV_${bucket}`, { subjects_filter: `$KV.${bucket}.m.>` });
    // This member's own key was just written; count it even if the info raced the write.
    return Math.max(1, Object.keys(info.state.subjects ?? {}).length);
  }

  private async bucket(): Promise<KV> {
    this.kv ??= await this.js.views.kv(leaseBucket(this.settings), {
      history: 1,
      ttl: this.settings.leaseMs,
      replicas: this.settings.replicas,
    });
    return this.kv;
  }

  private memberKey(): string {
    return `m.${this.memberId}`;
  }
}

function leaseKey(partition: number): string {
  return `p.${partition}`;
}

/** True when a create failed because the key exists: another member holds the lease. */
function isHeldElsewhere(err: unknown): boolean {
  const code = (err as { api_error?: { err_code?: number } } | undefined)?.api_error?.err_code;
  // 10071: wrong last sequence for the subject.
  return code === 10071;
}
