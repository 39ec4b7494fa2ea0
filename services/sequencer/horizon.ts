import type { ConversationStore } from "../store/types.js";

/**
 * Where a conversation's stored log begins: every entry committed before the returned time is
 * gone from the store (server-wide retention, retention after delivery, disappearing expiry),
 * in milliseconds since the Unix epoch by this process's clock; 0 when none is known to be.
 *
 * Commit times never go back within a conversation (log.ts), so an entry committed before the
 * first one still stored comes before it in the log and is gone. An entry the store still holds
 * while it is already served as expired keeps the horizon back: the horizon errs late, never
 * early. Media deletes an attachment claimed before the horizon (its message, acknowledged before
 * the claim, went with it): see services/media/retention.ts.
 */
export async function retentionHorizon(
  store: Pick<ConversationStore, "getLastSeq" | "readEntries">,
  conversationId: string,
  now: () => number,
): Promise<number> {
  // Taken before the read: an entry committed after the read was acknowledged after this time,
  // so an attachment of it is claimed later still and stays.
  const before = now();
  if ((await store.getLastSeq(conversationId)) === 0) return 0;
  const [first] = await store.readEntries(conversationId, 0, 1);
  return first === undefined ? before : Number(first.serverTimeMs);
}
