/** A store engine: the ports together, shard leases where the engine can move shards (see ../types.ts). */
import type { AccountStore } from "./accounts.js";
import type { ConversationStore } from "./conversations.js";
import type { KeyStore } from "./keys.js";

/** One sequencer shard's lease as the store holds it. */
export interface ShardLease {
  /** The logical shard. */
  shard: number;
  /** The sequencer replica (its ordinal) that serves the shard. */
  owner: number;
  /**
   * The fencing token: one more at every change of holder, and when a holder restarts. A replica
   * serves a shard only under the epoch it took it at; seeing another, it stops at once.
   */
  epoch: number;
}

/**
 * Sequencer shard leases, on a store every replica shares (ScyllaDB). Replicas announce they are
 * alive with heartbeats that expire on their own, and move a shard's lease only by a conditional
 * write on its epoch, so of any number of concurrent moves one wins. The leases decide who serves
 * a shard; the conversation log's own fence (the head row's conditional write) stays the final
 * guard against two writers. services/sequencer/ownership.ts runs the protocol.
 */
export interface ShardLeaseStore {
  /**
   * Records that a replica is alive for the next ttlSeconds. The row may expire up to one second
   * early (the database counts TTLs in whole seconds), which the caller's self-fence allows for.
   */
  heartbeat(ordinal: number, incarnation: string, ttlSeconds: number): Promise<void>;
  /** The ordinals whose heartbeat has not expired. */
  liveReplicas(): Promise<Set<number>>;
  /** Every shard's lease, read linearizably (shards never leased are absent). */
  leases(): Promise<ShardLease[]>;
  /**
   * Moves a shard's lease to `owner` at epoch + 1, if its epoch is still `fromEpoch` (undefined:
   * if the shard was never leased, which creates it at epoch 1). Returns the new lease, or
   * undefined when another move came first. An unknown outcome is read back, never guessed.
   */
  transfer(shard: number, fromEpoch: number | undefined, owner: number): Promise<ShardLease | undefined>;
}

/** A store engine: both ports plus its lifecycle. */
export interface StoreEngine {
  /** The conversation port. */
  conversations: ConversationStore;
  /** The accounts port. */
  accounts: AccountStore;
  /** The key directory port. */
  keys: KeyStore;
  /**
   * Shard leases, on an engine every sequencer replica shares (ScyllaDB); absent on an engine
   * whose files belong to one replica (LMDB), where a shard cannot move.
   */
  leases?: ShardLeaseStore;
  /** Flushes pending writes and releases files or connections. */
  close(): Promise<void>;
}
