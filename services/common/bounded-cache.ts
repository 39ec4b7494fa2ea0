import { evictUnmarked, type Marked } from "./second-chance.js";

/** An entry, marked used by every read. */
interface Slot<V> extends Marked {
  value: V;
  bytes: number;
}

/**
 * A map bounded in entries and in bytes (each value's bytes as its owner estimates them), least
 * recently used out first as a second-chance order tells (second-chance.ts): a read marks its
 * entry and moves nothing, for caches read on every message, such as the gateways' block lists
 * and privacy settings.
 */
export class BoundedCache<K, V> {
  private readonly slots = new Map<K, Slot<V>>();
  private held = 0;

  constructor(
    readonly maxEntries: number,
    readonly maxBytes: number,
  ) {
    if (!(Number.isInteger(maxEntries) && maxEntries > 0)) {
      throw new RangeError(`maxEntries must be a positive integer, got ${maxEntries}`);
    }
    if (!(maxBytes > 0)) throw new RangeError(`maxBytes must be positive, got ${maxBytes}`);
  }

  /** Entries kept. */
  get size(): number {
    return this.slots.size;
  }

  /** The bytes of the entries kept, in all. */
  get bytes(): number {
    return this.held;
  }

  /** The value kept for `key`, marked used; undefined if none is. */
  get(key: K): V | undefined {
    const slot = this.slots.get(key);
    if (slot === undefined) return undefined;
    slot.usedSinceWalk = true;
    return slot.value;
  }

  /**
   * Keeps `value` for `key` in place of any before it, then evicts others until within both
   * bounds (never the value just kept). A value larger than maxBytes is not kept: false.
   */
  set(key: K, value: V, bytes: number): boolean {
    this.delete(key);
    if (bytes > this.maxBytes) return false;
    // Unmarked: a new entry goes before the ones read since the last walk unless it is read too,
    // so a run of entries read once (a flood of new users) cannot flush the ones in use.
    this.slots.set(key, { value, bytes, usedSinceWalk: false });
    this.held += bytes;
    const slots = this.slots;
    const within = () => slots.size <= this.maxEntries && this.held <= this.maxBytes;
    if (within()) return true;
    evictUnmarked(
      slots,
      (k) => {
        if (k !== key) this.delete(k);
      },
      within,
    );
    return true;
  }

  /** Forgets `key`'s value; true if one was kept. */
  delete(key: K): boolean {
    const slot = this.slots.get(key);
    if (slot === undefined) return false;
    this.slots.delete(key);
    this.held -= slot.bytes;
    return true;
  }
}
