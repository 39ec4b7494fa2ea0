import { create } from "@bufbuild/protobuf";
import { type Entry, type OutgoingEntry, OutgoingEntrySchema } from "../../gen/switchboard/v1/entry_pb.js";

/** In groups the bot answers only messages that start with this, so two bots never talk forever. */
export const GROUP_COMMAND = "!echo ";
const MAX_REPLY_CHARS = 1_000;

/**
 * The bot's whole behaviour: the reply to one log entry, or undefined for none. Both modes call
 * it for every entry they receive, so all the protocol work lives elsewhere.
 *
 * Payloads are opaque bytes to Switchboard; this bot treats them as UTF-8 text. It has no Signal
 * keys, so it reads plaintext payloads only (payload_type 0): an end-to-end encrypted entry (a
 * group member's sender-key message, say) is not for it and gets no answer. A bot that must read
 * encrypted messages is a device of the SDK with encryption on (examples/bot-e2ee).
 */
export function replyTo(entry: Entry, botUserId: string): OutgoingEntry | undefined {
  // Every member device gets every entry, the bot's own replies included; and only messages
  // are answered (not edits, reactions, deletes or membership changes).
  if (entry.senderUserId === botUserId || entry.body.case !== "message" || entry.redacted) return undefined;
  if (entry.body.value.payloadType !== 0) return undefined;
  let text = new TextDecoder().decode(entry.body.value.payload);
  if (entry.conversationId.startsWith("g_")) {
    if (!text.startsWith(GROUP_COMMAND)) return undefined;
    text = text.slice(GROUP_COMMAND.length);
  }
  return create(OutgoingEntrySchema, {
    clientMsgId: replyId(entry),
    conversationId: entry.conversationId,
    body: {
      case: "message",
      value: { payload: new TextEncoder().encode(`echo: ${text.slice(0, MAX_REPLY_CHARS)}`) },
    },
  });
}

/**
 * The reply's idempotency key, derived from the entry it answers rather than random. Whenever
 * the bot handles an entry again (a crash before its ack or cursor was saved, a re-delivery, a
 * second instance with the same credentials) it sends the same key, and the server returns the
 * first reply's seq instead of appending a second reply. 3 + 28 + 1 + at most 20 characters,
 * within the 64 allowed.
 */
export function replyId(entry: Entry): string {
  return `re_${entry.conversationId}_${entry.seq}`;
}
