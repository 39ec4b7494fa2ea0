import { ConflictError, PermissionError, UnavailableError } from "../common/errors.js";
import type { Logger } from "../common/log.js";
import { shardOf } from "../common/shard.js";
import type { ConversationStore, MemberRecord } from "../store/types.js";
import type { ConversationState } from "./conversation.js";
import type { HotStateBudget } from "./hot-state.js";
import type { PublishOutbox } from "./outbox.js";
import { Shard } from "./shard.js";

/** The one answer to a non-member, whether or not the conversation exists. */
export const NOT_A_MEMBER = "not a member of this conversation";

/**
 * The user's membership, or PERMISSION_DENIED. A conversation that does not exist gets the
 * same answer as one the user is not in: direct conversation ids are derived from the two
 * user ids, so any other answer would tell anyone whether two users ever talked.
 */
export function requireMember(state: ConversationState, userId: string): MemberRecord {
  const member = state.record === undefined ? undefined : state.members.get(userId);
  if (member === undefined) throw new PermissionError(NOT_A_MEMBER);
  return member;
}

/** How a replica's shards are laid out. */
export interface ReplicaShardsOptions {
  /** Logical shard count (fixed per deployment). */
  shardCount: number;
  /** Which logical shards this replica owns from the start (none when `leased`: leases decide). */
  owned: readonly number[];
  /** Conversation states kept in memory per shard, at most (a count, not bytes). */
  maxStatesPerShard: number;
  /**
   * Shards move between replicas under leases (services/sequencer/ownership.ts): a shard this
   * replica does not hold is answered UNAVAILABLE (it is moving, or held by another replica the
   * caller will find) instead of FAILED_PRECONDITION (a wrong static map).
   */
  leased?: boolean;
}

/** How long a caller refused for a shard this replica does not hold waits before retrying, in ms. */
const MOVING_RETRY_AFTER_MS = 500;

/**
 * The logical shards this replica owns, and the one way into a conversation's state: every
 * operation on a conversation runs in its shard, with the state marked busy so it is not
 * evicted under it.
 */
export class ReplicaShards {
  private readonly shards = new Map<number, Shard>();
  /** The lease epoch each held shard was taken at (leased mode only). */
  private readonly epochs = new Map<number, number>();

  constructor(
    private readonly store: ConversationStore,
    private readonly outbox: PublishOutbox,
    private readonly log: Logger,
    private readonly hotState: HotStateBudget,
    private readonly options: ReplicaShardsOptions,
  ) {
    for (const index of options.owned) this.shards.set(index, this.newShard(index));
  }

  /** True if this replica owns the conversation's shard. */
  owns(conversationId: string): boolean {
    return this.shards.has(shardOf(conversationId, this.options.shardCount));
  }

  /** True if the conversation's shard is in `held` (a snapshot taken with held()). */
  static within(held: ReadonlySet<number>, conversationId: string, shardCount: number): boolean {
    return held.has(shardOf(conversationId, shardCount));
  }

  /** The logical shard count. */
  get shardCount(): number {
    return this.options.shardCount;
  }

  /**
   * The shard that owns a conversation. Another replica's shard is FAILED_PRECONDITION under the
   * static map (the caller's map is wrong) and UNAVAILABLE under leases (the shard is moving, or
   * its holder is elsewhere: the caller retries, and its router finds the holder).
   */
  shardFor(conversationId: string): Shard {
    const index = shardOf(conversationId, this.options.shardCount);
    const shard = this.shards.get(index);
    if (shard !== undefined) return shard;
    if (this.options.leased) {
      throw new UnavailableError(`shard ${index} is not served by this sequencer replica now; retry`, {
        retryAfterMs: MOVING_RETRY_AFTER_MS,
      });
    }
    throw new ConflictError(`shard ${index} is not owned by this sequencer replica`);
  }

  /** The logical shards this replica owns, ascending. */
  get owned(): number[] {
    return [...this.shards.keys()].sort((a, b) => a - b);
  }

  /** The shards held now, as a snapshot: user-level reads answer for exactly these. */
  held(): ReadonlySet<number> {
    return new Set(this.shards.keys());
  }

  /** Each held shard's lease epoch (leased mode). */
  heldEpochs(): ReadonlyMap<number, number> {
    return new Map(this.epochs);
  }

  /**
   * Starts serving a shard taken under a lease at `epoch`: a fresh Shard, so every conversation is
   * loaded from the store as the last holder left it.
   */
  adopt(index: number, epoch: number): void {
    this.epochs.set(index, epoch);
    if (!this.shards.has(index)) this.shards.set(index, this.newShard(index));
  }

  /**
   * Stops serving a shard: new work on it is refused at once (UNAVAILABLE, the caller retries
   * and finds the next holder), then the commits already queued finish, for at most drainMs.
   * A commit still running past that is fenced by the store's head write if the next holder
   * writes the same conversation. Resolves once the shard is idle (or the wait is over).
   */
  async relinquish(index: number, drainMs: number, reason: string): Promise<void> {
    const shard = this.shards.get(index);
    this.epochs.delete(index);
    if (shard === undefined) return;
    this.shards.delete(index);
    let timer: NodeJS.Timeout | undefined;
    const waited = new Promise<"late">((resolve) => {
      timer = setTimeout(() => resolve("late"), drainMs);
    });
    try {
      const outcome = await Promise.race([shard.close(reason), waited]);
      if (outcome === "late") {
        this.log.warn({ shard: index, drainMs }, "shard handed on with a commit still running");
      }
    } finally {
      clearTimeout(timer);
      shard.discard();
    }
  }

  /** Waits for every pending commit and refuses new work. */
  async close(): Promise<void> {
    await Promise.all([...this.shards.values()].map((s) => s.close()));
  }

  private newShard(index: number): Shard {
    return new Shard(index, this.store, this.outbox, this.log, this.options.maxStatesPerShard, this.hotState);
  }

  /** Runs fn on a conversation's state with the state marked busy. */
  async withState<T>(
    conversationId: string,
    fn: (state: ConversationState, shard: Shard) => Promise<T>,
  ): Promise<T> {
    const shard = this.shardFor(conversationId);
    const held = await shard.acquire(conversationId);
    try {
      return await fn(held.state, shard);
    } finally {
      shard.release(held);
    }
  }
}
