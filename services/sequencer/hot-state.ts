import type { Logger } from "../common/log.js";
import { evictSecondChance } from "../common/second-chance.js";

/**
 * The sequencer's hot state (each active conversation's recent entries, recent idempotency keys,
 * member map and device cursors) is a cache over the store: anything dropped is read back from
 * the store when next needed. Counts alone do not bound it (256 entries of up to 64 KiB each, in
 * up to 10,000 conversations per shard), so it is also held to a byte budget, shared by every
 * shard of the process and spent least recently used conversation first (as far as a
 * second-chance order tells: common/second-chance.ts).
 *
 * Sizes are estimates of what V8 and the allocator hold (a tail's buffer exactly, strings at two
 * bytes a character, a fixed overhead per object), rounded up: the budget is meant to track the
 * process's memory, not to count exactly.
 */

/** One idempotency key: the map slot, the RecentSend object, without the key's characters. */
export const KEY_OVERHEAD_BYTES = 128;
/** One member: the map slot, the MemberRecord and its 28-character user id. */
export const MEMBER_BYTES = 256;
/** One device's cursors: the map slot, the pair and its 29-character device id. */
export const CURSOR_BYTES = 160;
/** One seq's slot in a state's list of recent senders: a pointer (the string is a member's). */
export const SENDER_SLOT_BYTES = 8;
/** A conversation's state with empty tail and maps: the object, its maps and its record. */
export const STATE_OVERHEAD_BYTES = 1024;

/** Bytes a string holds (V8 keeps two-byte strings for non-Latin-1 text; assume the worst). */
function stringBytes(s: string): number {
  return 2 * s.length;
}

/** The estimated bytes of one idempotency key held in memory. */
export function keyBytes(key: string): number {
  return KEY_OVERHEAD_BYTES + stringBytes(key);
}

/**
 * What the budget needs of a conversation's state (ConversationState, in conversation.ts, which
 * imports this file's sizes: naming the class here would make an import loop).
 */
export interface BudgetedState {
  /** The estimated bytes the state holds now. */
  bytes(): number;
  /** Drops the committed entries of the tail; returns how many were dropped. */
  shed(): number;
  /** How many recent entries the state holds in memory. */
  readonly tailLength: number;
  /**
   * Forgets the recent idempotency keys no operation in flight can still count on finding here
   * (all of them in an idle state); returns how many.
   */
  forgetSettledKeys(): number;
  /** The recent idempotency keys; the budget only looks at how many. */
  readonly recent: { readonly size: number };
}

/** What holds a conversation's state: its shard, which can drop an idle state. */
export interface StateOwner {
  /**
   * True if the state is still the current one and idle: nothing in use, nothing uncommitted,
   * nobody waiting for it. The state may then go whole: the store has all of it.
   */
  idle(state: BudgetedState): boolean;
  /** Drops the state if it is idle; true if it did. */
  drop(state: BudgetedState): boolean;
}

/** Counters of the budget's work, read by the metrics callbacks. */
export interface HotStateMetrics {
  /** Idle conversations dropped from memory to stay within the budget. */
  evictedConversations: number;
  /** Tail entries dropped from conversations still in use to stay within the budget. */
  evictedEntries: number;
  /** Idempotency keys conversations forgot to stay within the budget. */
  evictedKeys: number;
}

/**
 * An eviction frees down to this share of the budget. A full budget would otherwise evict on
 * every operation, and each eviction walks the LRU order past the conversations in use (which
 * it cannot touch): 4 % of a saturated main thread, measured (docs/benchmarks.md, fifteenth
 * pass).
 */
export const EVICT_TO = 0.875;

/** A state's marks, one for each order: set by every use, cleared by that order's next walk. */
const IN_LRU = 1;
const IN_TAILED = 2;
const IN_KEYED = 4;
const USED = IN_LRU | IN_TAILED | IN_KEYED;

/** What the budget keeps of a resident state. */
interface Held {
  /** The bytes the state last reported. */
  bytes: number;
  owner: StateOwner;
  /** The orders whose walks have not passed the state since it was last used (IN_LRU, ...). */
  marks: number;
}

/**
 * The byte budget for the hot state of every shard of one sequencer process, with one LRU
 * order across all of them. States report their size when an operation acquires and releases
 * them; when the total is over the budget, the least recently used conversations go first (down
 * to EVICT_TO of the budget, so a full budget does not evict on every operation). The orders
 * are second-chance ones (common/second-chance.ts): an operation marks its state and moves
 * nothing, and an eviction passes over the states used since it last came by. The states going
 * first shed their committed tail entries (a read from the store gets them back), then
 * they forget the idempotency keys no operation in flight can still need (a retry then finds its
 * key in the store, as after a reload; see ConversationState.forgetSettledKeys), and if that is
 * not enough, idle ones are dropped whole (members, cursors, senders), which costs a reload when
 * next used. What is left over the budget is what operations in flight hold (uncommitted
 * entries, the keys remembered since the oldest of them began, the members of conversations in
 * use), which the gateways' in-flight limits bound.
 *
 * Each operation's end forgets those keys anyway (Shard.release), so what the budget finds of
 * them is what operations in flight kept: forgetting them before dropping states keeps the
 * conversations resident, so their next operation reads nothing back.
 */
export class HotStateBudget {
  /** Every resident state, least recently used first (as far as the marks tell), with its record. */
  private readonly lru = new Map<BudgetedState, Held>();
  /**
   * The resident states whose tail holds entries, least recently used first (their IN_TAILED
   * marks): shedding walks this, so it never steps over the many conversations whose tails are
   * already gone.
   */
  private readonly tailed = new Set<BudgetedState>();
  /** The resident states that hold idempotency keys, least recently used first (IN_KEYED). */
  private readonly keyed = new Set<BudgetedState>();
  private total = 0;
  private warned = false;
  /**
   * Settles since the last pass over every state, when that pass could not get within its
   * target; undefined when it could, or the total is within the budget (see settle).
   */
  private stuckSettles: number | undefined;
  /** Counters since start, for the metrics callbacks. */
  readonly metrics: HotStateMetrics = { evictedConversations: 0, evictedEntries: 0, evictedKeys: 0 };

  constructor(
    /** The budget, in bytes. */
    readonly limitBytes: number,
    private readonly log?: Logger,
  ) {}

  /** The bytes the resident states reported, in all. */
  get heldBytes(): number {
    return this.total;
  }

  /** Resident conversation states. */
  get conversations(): number {
    return this.lru.size;
  }

  /**
   * Marks the state used (adding it, most recently used, if new) and takes its current size. It
   * moves nothing and allocates nothing for a resident state: this runs on every operation.
   */
  touch(state: BudgetedState, owner: StateOwner): void {
    const bytes = state.bytes();
    const held = this.lru.get(state);
    if (held === undefined) {
      this.lru.set(state, { bytes, owner, marks: USED });
      this.total += bytes;
      return;
    }
    this.total += bytes - held.bytes;
    held.bytes = bytes;
    held.marks = USED;
  }

  /**
   * Takes the state's current size, then evicts until the total is within the budget. After a
   * pass over every state that could not get there (what is left is held by operations in use),
   * a settle evicts from its own state only, and the next pass over every state waits until as
   * many settles as there are states have gone by: a state can become idle, or its tail
   * committed, only when an operation on it ends, which settles it. Without this, a budget held by
   * operations in use was walked whole on every operation: O(conversations) each, up to 59 % of
   * the main thread's busy stretches of 0.3-1 s at 10,000 msgs/s (docs/benchmarks.md, eighteenth
   * pass).
   */
  settle(state: BudgetedState): void {
    const held = this.lru.get(state);
    if (held !== undefined) {
      const bytes = state.bytes();
      this.total += bytes - held.bytes;
      held.bytes = bytes;
      if (state.tailLength > 0) this.tailed.add(state);
      if (state.recent.size > 0) this.keyed.add(state);
    }
    if (this.total <= this.limitBytes) {
      this.stuckSettles = undefined;
      return;
    }
    if (this.stuckSettles !== undefined) {
      if (held !== undefined) this.evictFrom(state, held);
      if (++this.stuckSettles < this.lru.size) return;
    }
    this.stuckSettles = this.evict() ? undefined : 0;
  }

  /** Counts a conversation its shard dropped for its own count limit. */
  countEviction(): void {
    this.metrics.evictedConversations++;
  }

  /** Forgets a state its shard dropped. */
  forget(state: BudgetedState): void {
    const held = this.lru.get(state);
    if (held === undefined) return;
    this.total -= held.bytes;
    this.lru.delete(state);
    this.tailed.delete(state);
    this.keyed.delete(state);
  }

  /** One pass over every state, least recently used first; false if it ended over its target. */
  private evict(): boolean {
    const target = this.limitBytes * EVICT_TO;
    if (!this.warned) {
      this.warned = true;
      this.log?.info(
        { budgetBytes: this.limitBytes, heldBytes: this.total, conversations: this.lru.size },
        "sequencer hot state reached its byte budget; evicting least recently used conversations",
      );
    }
    const within = () => this.total <= target;
    // First the tails, which hold nearly all the bytes and cost one store read to get back.
    const shed = (state: BudgetedState) => {
      const held = this.lru.get(state);
      if (held === undefined) this.tailed.delete(state);
      else this.shedTail(state, held);
    };
    if (evictSecondChance(this.tailed, (state) => this.takeMark(state, IN_TAILED), shed, within)) return true;
    // Then the keys no operation can still need, which cost a store read only to a retry.
    const forget = (state: BudgetedState) => {
      const held = this.lru.get(state);
      if (held === undefined) this.keyed.delete(state);
      else this.forgetKeys(state, held);
    };
    if (evictSecondChance(this.keyed, (state) => this.takeMark(state, IN_KEYED), forget, within)) return true;
    // Then whole idle conversations (members, cursors, senders), which cost a reload.
    const drop = (state: BudgetedState) => this.dropIfIdle(state, this.lru.get(state) as Held);
    return evictSecondChance(this.lru, (state) => this.takeMark(state, IN_LRU), drop, within);
  }

  /** True if the state was used since the walk of `order` last passed it; clears that mark. */
  private takeMark(state: BudgetedState, order: number): boolean {
    const held = this.lru.get(state);
    if (held === undefined || (held.marks & order) === 0) return false;
    held.marks &= ~order;
    return true;
  }

  /** The steps of a pass, on one state only: for a settle while the last pass fell short. */
  private evictFrom(state: BudgetedState, held: Held): void {
    const target = this.limitBytes * EVICT_TO;
    this.shedTail(state, held);
    if (this.total > target) this.forgetKeys(state, held);
    if (this.total > target) this.dropIfIdle(state, held);
  }

  private shedTail(state: BudgetedState, held: { bytes: number }): void {
    const shed = state.shed();
    if (state.tailLength === 0) this.tailed.delete(state);
    if (shed === 0) return;
    this.metrics.evictedEntries += shed;
    this.resize(state, held);
  }

  private forgetKeys(state: BudgetedState, held: { bytes: number }): void {
    const forgotten = state.forgetSettledKeys();
    if (state.recent.size === 0) this.keyed.delete(state);
    if (forgotten === 0) return;
    this.metrics.evictedKeys += forgotten;
    this.resize(state, held);
  }

  private dropIfIdle(state: BudgetedState, held: { owner: StateOwner }): void {
    if (!held.owner.drop(state)) return;
    this.metrics.evictedConversations++;
    this.forget(state);
  }

  /** Takes a state's size again after it let go of something. */
  private resize(state: BudgetedState, held: { bytes: number }): void {
    const bytes = state.bytes();
    this.total += bytes - held.bytes;
    held.bytes = bytes;
  }
}
