import { ConflictError, PermissionError } from "../common/errors.js";
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
  /** Which logical shards this replica owns. */
  owned: readonly number[];
  /** Conversation states kept in memory per shard, at most (a count, not bytes). */
  maxStatesPerShard: number;
}

/**
 * The logical shards this replica owns, and the one way into a conversation's state: every
 * operation on a conversation runs in its shard, with the state marked busy so it is not
 * evicted under it.
 */
export class ReplicaShards {
  private readonly shards = new Map<number, Shard>();

  constructor(
    store: ConversationStore,
    outbox: PublishOutbox,
    log: Logger,
    hotState: HotStateBudget,
    private readonly options: ReplicaShardsOptions,
  ) {
    for (const index of options.owned) {
      this.shards.set(index, new Shard(index, store, outbox, log, options.maxStatesPerShard, hotState));
    }
  }

  /** True if this replica owns the conversation's shard. */
  owns(conversationId: string): boolean {
    return this.shards.has(shardOf(conversationId, this.options.shardCount));
  }

  /** The shard that owns a conversation, or FailedPrecondition when another replica does. */
  shardFor(conversationId: string): Shard {
    const index = shardOf(conversationId, this.options.shardCount);
    const shard = this.shards.get(index);
    if (shard === undefined) throw new ConflictError(`shard ${index} is not owned by this sequencer replica`);
    return shard;
  }

  /** The logical shards this replica owns, ascending. */
  get owned(): number[] {
    return [...this.shards.keys()].sort((a, b) => a - b);
  }

  /** Waits for every pending commit and refuses new work. */
  async close(): Promise<void> {
    await Promise.all([...this.shards.values()].map((s) => s.close()));
  }

  /** Runs fn on a conversation's state with the state marked busy. */
  async withState<T>(
    conversationId: string,
    fn: (state: ConversationState, shard: Shard) => Promise<T>,
  ): Promise<T> {
    const shard = this.shardFor(conversationId);
    const state = await shard.acquire(conversationId);
    try {
      return await fn(state, shard);
    } finally {
      shard.release(state);
    }
  }
}
