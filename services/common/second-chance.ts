/**
 * Least-recently-used eviction the second-chance (CLOCK) way, for caches used on every
 * operation. Keeping an exact LRU order in a Map costs a delete and a set on every use; the
 * tables that churn rehashes live long enough to be promoted to the old generation, and at
 * 5,000 msgs/s the sequencer's four such orders were a tenth of everything it promoted
 * (docs/benchmarks.md, thirty-third pass). Here a use only sets a mark on the entry's own
 * record. When something must be evicted, a walk goes through the order oldest first: an entry
 * marked since the last walk passed it has its mark cleared and moves to the end, and the first
 * entry found unmarked is evicted. So what goes first is what has gone longest without a use,
 * as far as the walks can tell, and a key costs one move per walk however often it was used.
 *
 * The walk keeps no iterator between walks: an iterator pins its Map's table as it was, and
 * with it entries deleted since (a dropped conversation's state, tail and all).
 */

/**
 * Moves one walk makes at most; past them it evicts in order, marks or not. A Map's move is a
 * delete and a set, 150-400 ns: this holds a walk to about a millisecond of them, where a cache
 * of 100,000 keys all used since the last walk would otherwise move them all at once (15-40 ms).
 */
export const MAX_MOVES_PER_WALK = 4096;

/**
 * Walks `order` oldest first until `done()`, evicting the entries not used since the last walk
 * passed them. `used(key)` answers whether the entry was used since, and clears its mark; a used
 * entry moves to the end of the order, where this walk comes to it again. `evict(key)` may remove
 * the entry or keep it (an entry still in use); either way the walk goes on past it.
 *
 * Each entry is come to at most twice a walk, and moved at most once. Returns `done()` at the end.
 */
export function evictSecondChance<K>(
  order: Map<K, unknown> | Set<K>,
  used: (key: K) => boolean,
  evict: (key: K) => void,
  done: () => boolean,
): boolean {
  let moves = 0;
  // Map and Set iterators come to entries added behind them, so a moved entry is come to again,
  // unmarked; the walk ends after that, as nothing marks an entry while it runs.
  for (const key of order.keys()) {
    if (done()) return true;
    if (moves < MAX_MOVES_PER_WALK && used(key)) {
      moves++;
      moveToEnd(order, key);
    } else {
      evict(key);
    }
  }
  return done();
}

/** A Map value that carries its own mark, for evictUnmarked. */
export interface Marked {
  /** Used since the last eviction walk passed it. */
  usedSinceWalk: boolean;
}

/**
 * evictSecondChance over a Map whose values carry their marks: `evict(key, value)` is given
 * each entry not used since the last walk passed it.
 */
export function evictUnmarked<K, V extends Marked>(
  order: Map<K, V>,
  evict: (key: K, value: V) => void,
  done: () => boolean,
): boolean {
  return evictSecondChance(
    order,
    (key) => {
      const value = order.get(key) as V;
      const used = value.usedSinceWalk;
      value.usedSinceWalk = false;
      return used;
    },
    (key) => evict(key, order.get(key) as V),
    done,
  );
}

function moveToEnd<K>(order: Map<K, unknown> | Set<K>, key: K): void {
  if (order instanceof Map) {
    const value = order.get(key);
    order.delete(key);
    order.set(key, value);
  } else {
    order.delete(key);
    order.add(key);
  }
}
