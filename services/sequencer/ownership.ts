/**
 * Shard failover: which sequencer replica serves which shard, when the replicas share a store
 * (ScyllaDB). docs/scylla.md ("Shard leases") is the description; in short:
 *
 * - Every replica writes a heartbeat row with a TTL every tick. Live replicas are those whose row
 *   has not expired.
 * - A shard's rightful holder is its home replica (shard mod replicas, the static map) when that is
 *   live, else the first live replica after it in ring order. Every replica computes the same from
 *   the same reads, and routers (router.ts) look for a shard in the same order.
 * - A lease row per shard names its holder and an epoch; it moves only by a conditional write on
 *   the epoch, so one move wins. A replica takes a shard whose holder is not live (or that it was
 *   handed), hands a shard it should not hold to the rightful holder after draining it, and stops
 *   serving a shard at once when its epoch moved under it.
 * - Self-fence: a replica serves nothing once its own heartbeat may have expired (it could not
 *   renew it in time), since others may then take its shards. The database counts TTLs in whole
 *   seconds, so a row may expire up to a second early; the fence allows for that and a margin.
 * - The store's head write stays the final fence: a holder that lost its lease while a commit was
 *   in flight (a pause, a slow drain) can only commit on a head nobody moved, which is a correct
 *   commit; one on a head that moved fails and its sends are retried at the new holder.
 */
import { randomUUID } from "node:crypto";
import type { Logger } from "../common/log.js";
import { lazyInstrument, meter } from "../common/telemetry.js";
import type { ShardLease, ShardLeaseStore } from "../store/types.js";
import type { ReplicaShards } from "./replica.js";

const moves = lazyInstrument(() =>
  meter().createCounter("switchboard.sequencer.shard_moves", {
    description:
      "Shards this replica started or stopped serving, by how (taken, handed_over, lost, fenced, closed)",
  }),
);

/** The lease term (heartbeat TTL) unless configured, in milliseconds. */
export const DEFAULT_LEASE_MS = 3_000;
/** The shortest lease term: the self-fence needs the TTL's second of rounding and a margin. */
export const MIN_LEASE_MS = 3_000;
/** A heartbeat row may expire this much before its TTL says (whole-second TTLs), in ms. */
const TTL_ROUNDING_MS = 1_000;
/** Stop serving this long before the earliest moment the heartbeat could expire, in ms. */
const FENCE_MARGIN_MS = 500;

/**
 * The replica that should serve a shard: its home (shard mod replicas) when live, else the first
 * live replica after the home in ring order; undefined when none is live.
 */
export function rightfulHolder(
  shard: number,
  replicas: number,
  live: ReadonlySet<number>,
): number | undefined {
  const home = shard % replicas;
  for (let k = 0; k < replicas; k++) {
    const candidate = (home + k) % replicas;
    if (live.has(candidate)) return candidate;
  }
  return undefined;
}

/** What one replica does about one shard in one tick. */
export type LeaseAction =
  /** Move the lease to this replica (from fromEpoch) and serve the shard under the new epoch. */
  | { kind: "take"; shard: number; fromEpoch: number | undefined }
  /** Stop serving the shard, drain it, then move the lease to `to`. */
  | { kind: "hand-over"; shard: number; epoch: number; to: number }
  /** The lease names this replica but it does not serve the shard: move it to `to` at once. */
  | { kind: "pass"; shard: number; epoch: number; to: number }
  /** The lease moved away: stop serving the shard at once (nothing to write). */
  | { kind: "drop"; shard: number };

/** Everything one tick's decision reads. */
export interface LeaseView {
  /** This replica's ordinal. */
  me: number;
  /** Replica count (ordinals 0..replicas-1). */
  replicas: number;
  /** Logical shard count. */
  shardCount: number;
  /** Live replicas, this one included. */
  live: ReadonlySet<number>;
  /** Leases by shard, as read. */
  leases: ReadonlyMap<number, ShardLease>;
  /** The shards this replica serves, with the epoch each was taken at. */
  held: ReadonlyMap<number, number>;
  /**
   * May this replica take a shard that was never leased and is not its own? Not until it has
   * been up for a lease term, so that it has seen the other replicas' heartbeats: a replica
   * starting alone would otherwise take every shard only to hand them back a tick later.
   */
  mayTakeUnleased: boolean;
}

/** One tick's decision for every shard, from what was read. Pure, so it is tested on its own. */
export function planLeases(view: LeaseView): LeaseAction[] {
  const actions: LeaseAction[] = [];
  for (let shard = 0; shard < view.shardCount; shard++) {
    const lease = view.leases.get(shard);
    const rightful = rightfulHolder(shard, view.replicas, view.live);
    const heldAt = view.held.get(shard);
    if (heldAt !== undefined) {
      if (lease === undefined || lease.owner !== view.me || lease.epoch !== heldAt) {
        actions.push({ kind: "drop", shard });
      } else if (rightful !== undefined && rightful !== view.me) {
        actions.push({ kind: "hand-over", shard, epoch: heldAt, to: rightful });
      }
      continue;
    }
    if (lease === undefined) {
      const home = shard % view.replicas === view.me;
      if (rightful === view.me && (home || view.mayTakeUnleased)) {
        actions.push({ kind: "take", shard, fromEpoch: undefined });
      }
      continue;
    }
    if (lease.owner === view.me) {
      // Handed to this replica, or left by its previous incarnation: taken under a new epoch, so
      // that whoever served it before (a process of the same ordinal that has not died) stops.
      if (rightful === view.me) actions.push({ kind: "take", shard, fromEpoch: lease.epoch });
      else if (rightful !== undefined)
        actions.push({ kind: "pass", shard, epoch: lease.epoch, to: rightful });
      continue;
    }
    // Another replica's: taken only from one that is not live; a live holder hands it over.
    if (rightful === view.me && !view.live.has(lease.owner)) {
      actions.push({ kind: "take", shard, fromEpoch: lease.epoch });
    }
  }
  return actions;
}

/** How the ownership loop runs. */
export interface OwnershipOptions {
  /** This replica's ordinal. */
  ordinal: number;
  /** Replica count. */
  replicas: number;
  /** The lease term: the heartbeat's TTL, in milliseconds (at least MIN_LEASE_MS). */
  leaseMs: number;
  /** The clock for deadlines, in milliseconds (monotonic). */
  now?: () => number;
}

/**
 * Runs the lease protocol for one replica: a tick every quarter lease term writes the heartbeat,
 * reads the live replicas and the leases, and carries out planLeases' actions on ReplicaShards.
 */
export class ShardOwnership {
  /** Names this process in its heartbeat row. */
  readonly incarnation = randomUUID();
  private readonly tickMs: number;
  private readonly startedAt: number;
  private readonly now: () => number;
  private timer: NodeJS.Timeout | undefined;
  private fenceTimer: NodeJS.Timeout | undefined;
  private ticking: Promise<void> | undefined;
  private stopped = false;
  /** Actions in progress, by shard: at most one per shard at a time. */
  private readonly acting = new Map<number, Promise<void>>();
  /** Live replicas as last read, this one included. */
  private live = new Set<number>();

  constructor(
    private readonly store: ShardLeaseStore,
    private readonly shards: ReplicaShards,
    private readonly log: Logger,
    private readonly options: OwnershipOptions,
  ) {
    if (!Number.isInteger(options.leaseMs) || options.leaseMs < MIN_LEASE_MS) {
      throw new Error(`the shard lease term must be at least ${MIN_LEASE_MS} ms, got ${options.leaseMs}`);
    }
    this.now = options.now ?? (() => performance.now());
    this.tickMs = Math.floor(options.leaseMs / 4);
    this.startedAt = this.now();
  }

  /** Starts ticking; the first tick runs at once. */
  start(): void {
    this.schedule(0);
  }

  /**
   * Runs one tick now; concurrent calls share the tick in progress. It resolves once the tick has
   * decided and started its actions (settled() waits for those).
   */
  tick(): Promise<void> {
    this.ticking ??= this.runTick().finally(() => {
      this.ticking = undefined;
    });
    return this.ticking;
  }

  /**
   * Stops ticking and hands every held shard to the replica that should have it next, after
   * draining it, so that a rolling restart moves shards in a tick instead of a lease term.
   */
  async stop(drainMs: number): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.fenceTimer);
    await this.ticking?.catch(() => {});
    await this.settled();
    const others = new Set([...this.live].filter((r) => r !== this.options.ordinal));
    await Promise.all(
      [...this.shards.heldEpochs()].map(async ([shard, epoch]) => {
        await this.shards.relinquish(shard, drainMs, "this sequencer replica is stopping; retry");
        moves().add(1, { how: "closed" });
        const to = rightfulHolder(shard, this.options.replicas, others);
        if (to === undefined) return;
        await this.store
          .transfer(shard, epoch, to)
          .catch((err: unknown) => this.log.warn({ err, shard, to }, "could not hand a shard on at stop"));
      }),
    );
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.tick()
        .catch((err: unknown) => this.log.error({ err }, "shard lease tick failed"))
        .finally(() => this.schedule(this.tickMs));
    }, delayMs);
    this.timer.unref();
  }

  private async runTick(): Promise<void> {
    const { ordinal, replicas, leaseMs } = this.options;
    const started = this.now();
    try {
      await this.store.heartbeat(ordinal, this.incarnation, Math.ceil(leaseMs / 1000));
      this.armFence(started + leaseMs - TTL_ROUNDING_MS - FENCE_MARGIN_MS);
    } catch (err) {
      // The fence armed by the last heartbeat that worked stops this replica in time.
      this.log.warn({ err }, "could not renew this sequencer replica's heartbeat");
      return;
    }
    const [live, leases] = await Promise.all([this.store.liveReplicas(), this.store.leases()]);
    if (this.stopped) return;
    live.add(ordinal);
    this.live = live;
    const actions = planLeases({
      me: ordinal,
      replicas,
      shardCount: this.shards.shardCount,
      live,
      leases: new Map(leases.map((l) => [l.shard, l])),
      held: this.shards.heldEpochs(),
      mayTakeUnleased: this.now() - this.startedAt >= leaseMs,
    });
    // In the background, one at a time per shard: a hand-over drains its shard for up to a lease
    // term, and the next heartbeat must not wait for that.
    for (const action of actions) {
      if (this.acting.has(action.shard)) continue;
      const done = this.carryOut(action)
        .catch((err: unknown) => this.log.warn({ err, action }, "shard lease action failed"))
        .finally(() => this.acting.delete(action.shard));
      this.acting.set(action.shard, done);
    }
  }

  /** Resolves once the actions started so far have finished (tests wait on it). */
  async settled(): Promise<void> {
    await Promise.all(this.acting.values());
  }

  private async carryOut(action: LeaseAction): Promise<void> {
    const { shard } = action;
    switch (action.kind) {
      case "drop":
        this.log.warn({ shard }, "a shard's lease moved to another replica; no longer serving it");
        moves().add(1, { how: "lost" });
        await this.shards.relinquish(shard, 0, `shard ${shard} moved to another sequencer replica; retry`);
        return;
      case "hand-over": {
        await this.shards.relinquish(
          shard,
          this.options.leaseMs,
          `shard ${shard} is moving to sequencer replica ${action.to}; retry`,
        );
        const moved = await this.store.transfer(shard, action.epoch, action.to);
        moves().add(1, { how: "handed_over" });
        this.log.info({ shard, to: action.to, epoch: moved?.epoch }, "handed a shard over");
        return;
      }
      case "pass":
        await this.store.transfer(shard, action.epoch, action.to);
        return;
      case "take": {
        const lease = await this.store.transfer(shard, action.fromEpoch, this.options.ordinal);
        if (lease === undefined || this.stopped) return;
        this.shards.adopt(shard, lease.epoch);
        moves().add(1, { how: "taken" });
        this.log.info({ shard, epoch: lease.epoch }, "serving a shard");
        return;
      }
    }
  }

  /**
   * Serving stops at `deadline` (a moment on this.now's clock) unless a later heartbeat moves it:
   * past it the heartbeat row may have expired and another replica may hold the shards.
   */
  private armFence(deadline: number): void {
    clearTimeout(this.fenceTimer);
    this.fenceTimer = setTimeout(
      () => {
        const held = [...this.shards.heldEpochs().keys()];
        if (held.length === 0) return;
        this.log.error(
          { shards: held },
          "could not renew the heartbeat in time; serving no shard until it is renewed",
        );
        for (const shard of held) {
          moves().add(1, { how: "fenced" });
          void this.shards.relinquish(
            shard,
            0,
            "this sequencer replica lost contact with the database; retry",
          );
        }
      },
      Math.max(0, deadline - this.now()),
    );
    this.fenceTimer.unref();
  }
}
