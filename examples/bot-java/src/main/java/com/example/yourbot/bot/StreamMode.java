package com.example.yourbot.bot;

import com.example.yourbot.switchboard.v1.AckFrame;
import com.example.yourbot.switchboard.v1.ConnectRequest;
import com.example.yourbot.switchboard.v1.ConnectResponse;
import com.example.yourbot.switchboard.v1.ConversationCursor;
import com.example.yourbot.switchboard.v1.Entry;
import com.example.yourbot.switchboard.v1.OutgoingEntry;
import com.example.yourbot.switchboard.v1.SendErrorFrame;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.Executors;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;

/**
 * Stream mode: one GatewayService.Connect stream, reconnected with backoff when it fails with
 * UNAVAILABLE (server restart, lost connection). Any other code ends the bot: UNAUTHENTICATED
 * (device revoked), ABORTED (a newer stream of the same device took over), and so on.
 *
 * <p>Everything about a stream happens on the bot's main thread, which runs the events gRPC's
 * threads and the timers hand it one at a time; so the bookkeeping needs no locks and the request
 * side (not thread-safe) is written from one thread.
 */
final class StreamMode {
  /** One ack frame for everything that finished within this window: frames are rate limited. */
  private static final long ACK_DELAY_MS = 100;
  /**
   * Events waiting for the main thread. Flow control asks the server for one frame at a time, so
   * this holds at most that frame, the stream's end, an ack tick, a stop and the retries of the
   * sends in flight (the server allows 256).
   */
  private static final int MAX_EVENTS = 1_024;

  private final Api api;
  private final String botUserId;
  private final Stopper stop;
  /**
   * The highest seq acked per conversation. It outlives each stream: after a reconnect the server
   * resends everything after the cursors it has, and whatever is at or below these is a duplicate.
   */
  private final Map<String, Long> acked = new HashMap<>();

  private final ScheduledExecutorService timers =
      Executors.newSingleThreadScheduledExecutor(
          r -> {
            Thread t = new Thread(r, "bot-timers");
            t.setDaemon(true);
            return t;
          });

  StreamMode(Api api, String botUserId, Stopper stop) {
    this.api = api;
    this.botUserId = botUserId;
    this.stop = stop;
  }

  void run() throws InterruptedException {
    int[] attempt = {0};
    while (!stop.isSet()) {
      String why = "the server ended the stream";
      try {
        new OneStream(() -> attempt[0] = 0).run();
      } catch (StatusRuntimeException e) {
        if (stop.isSet()) return;
        if (e.getStatus().getCode() != Status.Code.UNAVAILABLE) throw e;
        why = e.getStatus().getDescription();
      }
      if (stop.isSet()) return;
      long delay = Stopper.backoffMs(attempt[0]++);
      Stopper.log("stream: " + why + "; reconnecting in " + delay + " ms");
      stop.pause(delay);
      api.resetConnectBackoff();
    }
  }

  private final class OneStream {
    private final Runnable onReady;
    private final BlockingQueue<Runnable> events = new LinkedBlockingQueue<>(MAX_EVENTS);
    private final Map<String, Long> seen = new HashMap<>(acked); // highest seq received per conversation
    private final Map<String, Entry> pending = new HashMap<>(); // reply client_msg_id -> the entry it answers
    /**
     * Per conversation, the entries received and not yet acked, in seq order. An entry is done once
     * its reply is durable (send_ack), refused for good, or it needed no reply.
     */
    private final Map<String, ArrayDeque<long[]>> unacked = new HashMap<>(); // {seq, done 0|1}
    private final Set<String> moved = new LinkedHashSet<>(); // cursors moved since the last ack frame
    private ClientCallStreamObserver<ConnectRequest> out;
    private boolean ackScheduled;
    private boolean closed;
    private boolean ended;
    private Throwable failure;

    OneStream(Runnable onReady) {
      this.onReady = onReady;
    }

    /** Hands a task to the main thread (waits if the queue is full; see MAX_EVENTS). */
    private void post(Runnable task) {
      try {
        events.put(task);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
      }
    }

    void run() throws InterruptedException {
      api.gatewayAsync.connect(
          new ClientResponseObserver<ConnectRequest, ConnectResponse>() {
            @Override
            public void beforeStart(ClientCallStreamObserver<ConnectRequest> requests) {
              out = requests;
              requests.disableAutoRequestWithInitial(1); // flow control: one frame at a time
            }

            @Override
            public void onNext(ConnectResponse frame) {
              post(
                  () -> {
                    handle(frame);
                    out.request(1);
                  });
            }

            @Override
            public void onError(Throwable t) {
              post(
                  () -> {
                    failure = t;
                    ended = true;
                  });
            }

            @Override
            public void onCompleted() {
              post(() -> ended = true);
            }
          });
      Runnable unregister = stop.onStop(() -> post(this::close));
      try {
        while (!ended) events.take().run();
      } finally {
        unregister.run();
        closed = true; // timers still scheduled for this stream do nothing now
      }
      if (failure != null) throw Status.fromThrowable(failure).asRuntimeException();
    }

    private void handle(ConnectResponse res) {
      switch (res.getFrameCase()) {
        case READY -> {
          onReady.run();
          Stopper.log(
              "ready: stream " + res.getReady().getSessionId() + ", at most "
                  + res.getReady().getLimits().getSendsPerSecond() + " sends/s");
        }
        case CAUGHT_UP -> Stopper.log("caught up: " + res.getCaughtUp().getEntries() + " entries were waiting");
        case MESSAGE -> res.getMessage().getEntriesList().forEach(this::receive);
        case SEND_ACK -> {
          Entry entry = pending.remove(res.getSendAck().getClientMsgId());
          if (entry == null) return;
          Stopper.log(
              "replied to " + entry.getConversationId() + "#" + entry.getSeq() + " with #" + res.getSendAck().getSeq());
          done(entry.getConversationId(), entry.getSeq());
        }
        case SEND_ERROR -> {
          SendErrorFrame err = res.getSendError();
          Entry entry = pending.get(err.getClientMsgId());
          if (entry == null) return;
          if (err.getRetryAfterMs() > 0) {
            // Rate limit, too many in flight, storage busy: the same send, same key, later.
            OutgoingEntry reply = Echo.replyTo(entry, botUserId);
            timers.schedule(() -> post(() -> send(reply)), err.getRetryAfterMs(), TimeUnit.MILLISECONDS);
          } else {
            pending.remove(err.getClientMsgId());
            Stopper.log(
                "reply to " + entry.getConversationId() + "#" + entry.getSeq() + " refused (code "
                    + err.getCode() + "): " + err.getMessage());
            done(entry.getConversationId(), entry.getSeq());
          }
        }
        case ERROR ->
            Stopper.log(
                "frame " + res.getError().getFrame() + " refused (code " + res.getError().getCode() + "): "
                    + res.getError().getMessage());
        default -> {
          // receipt, typing, presence, pong, sync_page, prekeys_low: nothing this bot needs.
        }
      }
    }

    private void send(OutgoingEntry entry) {
      if (!closed) out.onNext(ConnectRequest.newBuilder().setSend(entry).build());
    }

    private void receive(Entry entry) {
      String conversationId = entry.getConversationId();
      long seq = entry.getSeq();
      // At-least-once delivery: drop what we already have. The server sends each conversation in
      // seq order and fills any gap from the log before going on, so a bot needs no reorder buffer.
      if (Long.compareUnsigned(seq, seen.getOrDefault(conversationId, 0L)) <= 0) return;
      seen.put(conversationId, seq);
      unacked.computeIfAbsent(conversationId, k -> new ArrayDeque<>()).add(new long[] {seq, 0});
      OutgoingEntry reply = Echo.replyTo(entry, botUserId);
      if (reply == null) {
        done(conversationId, seq);
        return;
      }
      pending.put(reply.getClientMsgId(), entry);
      send(reply);
    }

    /**
     * Acks are cumulative ("I have everything up to seq N"), so the cursor moves only over a prefix
     * of done entries: an entry whose reply is still in flight comes back after a crash.
     */
    private void done(String conversationId, long seq) {
      ArrayDeque<long[]> line = unacked.getOrDefault(conversationId, new ArrayDeque<>());
      for (long[] item : line) if (item[0] == seq) item[1] = 1;
      Long upTo = null;
      while (!line.isEmpty() && line.peekFirst()[1] == 1) upTo = line.pollFirst()[0];
      if (upTo == null) return;
      acked.put(conversationId, upTo);
      moved.add(conversationId);
      if (!ackScheduled) {
        ackScheduled = true;
        timers.schedule(() -> post(this::flushAcks), ACK_DELAY_MS, TimeUnit.MILLISECONDS);
      }
    }

    private void flushAcks() {
      ackScheduled = false;
      if (closed || moved.isEmpty()) return;
      List<ConversationCursor> cursors = new ArrayList<>();
      for (String c : moved) cursors.add(ConversationCursor.newBuilder().setConversationId(c).setSeq(acked.get(c)).build());
      moved.clear();
      for (int i = 0; i < cursors.size(); i += 256)
        out.onNext(
            ConnectRequest.newBuilder()
                .setAck(AckFrame.newBuilder().addAllCursors(cursors.subList(i, Math.min(i + 256, cursors.size()))))
                .build());
    }

    /**
     * Sends the last acks and half-closes; the server answers the sends in flight and ends the
     * stream. A reply whose ack we miss is resent next time and deduplicated.
     */
    private void close() {
      if (closed || ended) return;
      flushAcks();
      closed = true;
      out.onCompleted();
    }
  }
}
