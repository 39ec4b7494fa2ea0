package com.example.yourbot.bot;

import com.example.yourbot.switchboard.v1.AckRequest;
import com.example.yourbot.switchboard.v1.Conversation;
import com.example.yourbot.switchboard.v1.ConversationCursor;
import com.example.yourbot.switchboard.v1.Entry;
import com.example.yourbot.switchboard.v1.GetHistoryRequest;
import com.example.yourbot.switchboard.v1.GetHistoryResponse;
import com.example.yourbot.switchboard.v1.ListConversationsRequest;
import com.example.yourbot.switchboard.v1.OutgoingEntry;
import com.example.yourbot.switchboard.v1.SendRequest;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * Unary mode: no stream. Every poll, list the bot's conversations; in each one whose last seq is
 * past this device's delivered cursor (which ListConversations returns), read the history after
 * the cursor with GetHistory, reply with GatewayService.Send, then move the cursor with
 * GatewayService.Ack. The server keeps the cursor, so the bot stores nothing but its credential,
 * senders see "delivered", and a stream the device opens later starts after it.
 */
final class UnaryMode {
  private static final Metadata.Key<String> RETRY_AFTER_MS =
      Metadata.Key.of("retry-after-ms", Metadata.ASCII_STRING_MARSHALLER);

  private final Api api;
  private final String botUserId;
  private final long pollMs;
  private final Stopper stop;

  UnaryMode(Api api, String botUserId, long pollMs, Stopper stop) {
    this.api = api;
    this.botUserId = botUserId;
    this.pollMs = pollMs;
    this.stop = stop;
  }

  void run() throws InterruptedException {
    boolean ready = false;
    for (int failures = 0; !stop.isSet(); ) {
      try {
        List<Conversation> conversations =
            api.conversations
                .withDeadlineAfter(Api.CALL_TIMEOUT_S, TimeUnit.SECONDS)
                .listConversations(ListConversationsRequest.getDefaultInstance())
                .getConversationsList();
        if (!ready) Stopper.log("ready: polling " + conversations.size() + " conversations every " + pollMs + " ms");
        ready = true;
        for (Conversation c : conversations) poll(c);
        failures = 0;
      } catch (StatusRuntimeException e) {
        if (stop.isSet()) return;
        if (!retryable(e)) throw e;
        // Server restarting or unreachable: the cursor did not move, so the same entries (and the
        // same reply keys) come round again.
        Stopper.log("poll: " + e.getStatus().getDescription() + "; retrying");
        stop.pause(Stopper.backoffMs(failures++));
        continue;
      }
      stop.pause(pollMs);
    }
  }

  private void poll(Conversation c) throws InterruptedException {
    long after = c.getDeliveredUpTo();
    while (Long.compareUnsigned(after, c.getLastSeq()) < 0 && !stop.isSet()) {
      GetHistoryResponse page =
          api.conversations
              .withDeadlineAfter(Api.CALL_TIMEOUT_S, TimeUnit.SECONDS)
              .getHistory(
                  GetHistoryRequest.newBuilder()
                      .setConversationId(c.getConversationId())
                      .setAfterSeq(after)
                      .setLimit(100)
                      .build());
      for (Entry entry : page.getEntriesList()) {
        OutgoingEntry reply = Echo.replyTo(entry, botUserId);
        if (reply != null) {
          Long seq = sendReply(reply);
          if (seq != null)
            Stopper.log("replied to " + entry.getConversationId() + "#" + entry.getSeq() + " with #" + seq);
        }
        after = entry.getSeq();
      }
      if (page.getEntriesCount() == 0) break;
      // Acked after the replies are durable: a crash before this line only repeats replies, and
      // their client_msg_ids make the repeats no-ops.
      api.gateway
          .withDeadlineAfter(Api.CALL_TIMEOUT_S, TimeUnit.SECONDS)
          .ack(
              AckRequest.newBuilder()
                  .addDelivered(
                      ConversationCursor.newBuilder().setConversationId(c.getConversationId()).setSeq(after))
                  .build());
      if (!page.getHasMore()) break;
    }
  }

  /**
   * GatewayService.Send, answered once the reply is durable. Waits out the rate limit using the
   * server's `retry-after-ms` trailer; UNAVAILABLE goes up to the poll loop; any other refusal (the
   * bot was removed from the group, say) is final for this entry.
   */
  private Long sendReply(OutgoingEntry entry) throws InterruptedException {
    for (;;) {
      try {
        return api.gateway
            .withDeadlineAfter(Api.CALL_TIMEOUT_S, TimeUnit.SECONDS)
            .send(SendRequest.newBuilder().setEntry(entry).build())
            .getSeq();
      } catch (StatusRuntimeException e) {
        Metadata trailers = e.getTrailers();
        String after = trailers == null ? null : trailers.get(RETRY_AFTER_MS);
        long retryAfterMs = after == null ? 0 : Long.parseLong(after);
        if (e.getStatus().getCode() == Status.Code.RESOURCE_EXHAUSTED && retryAfterMs > 0 && !stop.isSet()) {
          stop.pause(retryAfterMs);
          continue;
        }
        if (retryable(e) || stop.isSet()) throw e;
        Stopper.log("reply to " + entry.getConversationId() + " refused: " + e.getStatus().getDescription());
        return null;
      }
    }
  }

  private static boolean retryable(StatusRuntimeException e) {
    Status.Code code = e.getStatus().getCode();
    return code == Status.Code.UNAVAILABLE || code == Status.Code.DEADLINE_EXCEEDED;
  }
}
