package com.example.yourbot.bot;

import com.example.yourbot.switchboard.v1.Entry;
import com.example.yourbot.switchboard.v1.MessageBody;
import com.example.yourbot.switchboard.v1.OutgoingEntry;
import com.google.protobuf.ByteString;
import java.nio.charset.StandardCharsets;

/** The bot's whole behaviour: the reply to one log entry. Both modes call it for every entry. */
final class Echo {
  /** In groups the bot answers only messages that start with this, so two bots never talk forever. */
  static final String GROUP_COMMAND = "!echo ";

  private static final int MAX_REPLY_CHARS = 1_000;

  private Echo() {}

  /**
   * The reply to an entry, or null for none. Every member device gets every entry, the bot's own
   * replies included; and only messages are answered (not edits, reactions, deletes or membership
   * changes). This bot has no Signal keys, so it reads plaintext payloads only (payload_type 0,
   * UTF-8 text): an end-to-end encrypted entry is not for it and gets no answer.
   */
  static OutgoingEntry replyTo(Entry entry, String botUserId) {
    if (entry.getSenderUserId().equals(botUserId)
        || entry.getBodyCase() != Entry.BodyCase.MESSAGE
        || entry.getRedacted()
        || entry.getMessage().getPayloadType() != 0) return null;
    String text = entry.getMessage().getPayload().toString(StandardCharsets.UTF_8);
    if (entry.getConversationId().startsWith("g_")) {
      if (!text.startsWith(GROUP_COMMAND)) return null;
      text = text.substring(GROUP_COMMAND.length());
    }
    if (text.length() > MAX_REPLY_CHARS) text = text.substring(0, MAX_REPLY_CHARS);
    return OutgoingEntry.newBuilder()
        .setClientMsgId(replyId(entry))
        .setConversationId(entry.getConversationId())
        .setMessage(MessageBody.newBuilder().setPayload(ByteString.copyFromUtf8("echo: " + text)))
        .build();
  }

  /**
   * The reply's idempotency key, derived from the entry it answers rather than random. Whenever
   * the bot handles an entry again (a crash before its ack or cursor was saved, a re-delivery, a
   * second instance with the same credentials) it sends the same key, and the server returns the
   * first reply's seq instead of appending a second reply.
   */
  static String replyId(Entry entry) {
    return "re_" + entry.getConversationId() + "_" + Long.toUnsignedString(entry.getSeq());
  }
}
