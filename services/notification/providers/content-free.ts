import type { PushMessage } from "../types.js";

/**
 * What a push carries, the same through every provider: where to sync from, or for a call its
 * id and whether it rings ("call") or ended ("call_ended"). The caller, the media and the offer
 * stay on the stream, where the device finds them once it connects.
 */
export function contentFree(msg: PushMessage): Record<string, string> {
  if (msg.call !== undefined)
    return { k: msg.call.ended ? "call_ended" : "call", i: msg.call.callId, c: msg.conversationId };
  return { c: msg.conversationId, s: String(msg.seq) };
}
