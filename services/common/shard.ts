/**
 * The one string hash of the project: 32-bit FNV-1a over the UTF-16 code units. Cheap, stable
 * across processes and versions, and well spread for the random ids we generate.
 *
 * Its values are persisted and shared: they choose the sequencer replica that owns a
 * conversation, the expiry-index shard of a ScyllaDB idempotency record, the Redis hash-tag slot
 * of a user's routes and the NATS subject of an id that is not a plain token. Changing it (the
 * seed, the prime, code units instead of UTF-8 bytes) would move existing data and split a mesh
 * of mixed versions; shard.test.ts pins known values.
 */
export function fnv1a(text: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return hash >>> 0;
}

/**
 * The shard, 0..shardCount-1, of an id: fnv1a(id) mod shardCount. For conversations, the logical
 * shard that owns them; the number of logical shards is fixed for the life of a deployment and
 * replicas own ranges of them. The other layouts built on it pass their own fixed counts.
 */
export function shardOf(id: string, shardCount: number): number {
  return fnv1a(id) % shardCount;
}
