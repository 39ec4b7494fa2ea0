/**
 * Second-chance (CLOCK) eviction over a Map's or Set's insertion order, for caches that are used
 * on every operation. Keeping an exact least-recently-used order in a Map means a delete and a
 * set on every use; the tables that churn rehashes live long enough to be promoted to the old
 * generation, and at 5,000 msgs/s the sequencer's four such orders were 12 % of everything it
 * promoted (docs/benchmarks.md, thirty-third pass). Here a use only sets a mark on the entry's
 * own record; an eviction walk moves the marked entries to the end (clearing their marks)
 * instead of evicting them. An entry used since the last walk passed it survives the next one,
 * so what goes first is what has gone longest without a use, as far as the walks can tell.
 */

/**
 * Walks `order` oldest first until `done()`, evicting the entries not used since the last walk
 * passed them. `used(key)` answers whether the entry was used since, and clears its mark; a used
 * entry is moved to the end of the order, where this walk comes to it again. `evict(key)` may
 * remove the entry or keep it (an entry still in use); either way the walk goes on past it.
 *
 * Each entry is evicted (or kept) at most once a walk, and moved at most once: a walk costs at
 * most twice the entries there were, and a key used between walks costs one move, however often
 * it was used. Returns `done()` at the end.
 */
export function evictSecondChance<K>(
  order: Map<K, unknown> | Set<K>,
  used: (key: K) => boolean,
  evict: (key: K) => void,
  done: () => boolean,
): boolean {
  // Map and Set iterators come to entries added behind them, so a moved entry is come to again,
  // unmarked this time; the walk ends after that, as nothing is marked while it runs.
  for (const key of order.keys()) {
    if (done()) return true;
    if (used(key)) moveToEnd(order, key);
    else evict(key);
  }
  return done();
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
