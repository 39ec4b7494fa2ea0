/**
 * The logical shard that owns a conversation. FNV-1a over the id's UTF-16 code units: cheap,
 * stable across processes and versions, and well spread for the random ids we generate. The
 * number of logical shards is fixed for the life of a deployment; replicas own ranges of them.
 */
export function shardOf(conversationId: string, shardCount: number): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < conversationId.length; i++) {
    hash ^= conversationId.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return (hash >>> 0) % shardCount;
}
