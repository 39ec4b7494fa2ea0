"""Stream mode: one GatewayService.Connect stream, reconnected with backoff when it fails with
UNAVAILABLE (server restart, lost connection). Any other code ends the bot: UNAUTHENTICATED (device
revoked), ABORTED (a newer stream of the same device took over), and so on."""

from __future__ import annotations

import queue
import threading
from typing import Callable

import grpc
from api import Api
from echo import reply_to
from switchboard.v1 import entry_pb2, gateway_pb2
from util import Log, Stopper, backoff_s

# Frames waiting to be written. Bounded: when the server reads slowly, the loop that reads the
# stream waits here, which in turn slows what the server sends us.
MAX_QUEUED_FRAMES = 1_024
# One ack frame for everything that finished within this window: frames are rate limited.
ACK_DELAY_S = 0.1


def run_stream(api: Api, bot_user_id: str, stop: Stopper, log: Log) -> None:
    # The highest seq acked per conversation. It outlives each stream: after a reconnect the server
    # resends everything after the cursors it has, and whatever is at or below these is a duplicate.
    acked: dict[str, int] = {}
    attempt = 0

    def ready() -> None:
        nonlocal attempt
        attempt = 0

    while not stop.is_set():
        why = "the server ended the stream"
        try:
            _one_stream(api, bot_user_id, acked, stop, log, ready)
        except grpc.RpcError as e:
            if stop.is_set():
                return
            if e.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            why = e.details()
        if stop.is_set():
            return
        delay = backoff_s(attempt)
        attempt += 1
        log(f"stream: {why}; reconnecting in {round(delay * 1000)} ms")
        stop.wait(delay)


class _Stream:
    """One stream's bookkeeping: what was received, which replies are in flight, what to ack."""

    def __init__(self, bot_user_id: str, acked: dict[str, int], log: Log):
        self.bot_user_id = bot_user_id
        self.acked = acked
        self.log = log
        self.out: queue.Queue[gateway_pb2.ConnectRequest | None] = queue.Queue(MAX_QUEUED_FRAMES)
        self.seen = dict(acked)  # highest seq received per conversation
        self.pending: dict[str, entry_pb2.Entry] = {}  # reply client_msg_id -> the entry it answers
        # Per conversation, the entries received and not yet acked, in seq order, each [seq, done]. An
        # entry is done once its reply is durable (send_ack), refused for good, or it needed no reply.
        self.unacked: dict[str, list[list]] = {}
        self.moved: set[str] = set()  # conversations whose cursor moved since the last ack frame
        # Reentrant: the ack timer runs on its own thread, and SIGTERM's handler (close) may interrupt
        # the main thread while it holds the lock.
        self.lock = threading.RLock()
        self.ack_timer: threading.Timer | None = None
        self.closed = False

    def requests(self):
        """The request side of the stream: frames put on the queue are written in order until None."""
        while (frame := self.out.get()) is not None:
            yield frame

    def send(self, entry: entry_pb2.OutgoingEntry) -> None:
        if not self.closed:
            self.out.put(gateway_pb2.ConnectRequest(send=entry))

    def receive(self, entry: entry_pb2.Entry) -> None:
        conversation_id, seq = entry.conversation_id, entry.seq
        # At-least-once delivery: drop what we already have. The server sends each conversation in
        # seq order and fills any gap from the log before going on, so a bot needs no reorder buffer.
        if seq <= self.seen.get(conversation_id, 0):
            return
        self.seen[conversation_id] = seq
        with self.lock:
            self.unacked.setdefault(conversation_id, []).append([seq, False])
        reply = reply_to(entry, self.bot_user_id)
        if reply is None:
            self.done(conversation_id, seq)
            return
        self.pending[reply.client_msg_id] = entry
        self.send(reply)

    def done(self, conversation_id: str, seq: int) -> None:
        """Acks are cumulative ("I have everything up to seq N"), so the cursor moves only over a
        prefix of done entries: an entry whose reply is still in flight comes back after a crash."""
        with self.lock:
            line = self.unacked.get(conversation_id, [])
            for item in line:
                if item[0] == seq:
                    item[1] = True
            up_to = None
            while line and line[0][1]:
                up_to = line.pop(0)[0]
            if up_to is None:
                return
            self.acked[conversation_id] = up_to
            self.moved.add(conversation_id)
            if self.ack_timer is None:
                self.ack_timer = threading.Timer(ACK_DELAY_S, self.flush_acks)
                self.ack_timer.daemon = True
                self.ack_timer.start()

    def flush_acks(self) -> None:
        with self.lock:
            self.ack_timer = None
            cursors = [
                gateway_pb2.ConversationCursor(conversation_id=c, seq=self.acked[c]) for c in sorted(self.moved)
            ]
            self.moved.clear()
            if self.closed:
                return
        for i in range(0, len(cursors), 256):
            self.out.put(gateway_pb2.ConnectRequest(ack=gateway_pb2.AckFrame(cursors=cursors[i : i + 256])))

    def close(self) -> None:
        """Sends the last acks and half-closes; the server answers the sends in flight and ends the
        stream. A reply whose ack we miss is resent next time and deduplicated."""
        with self.lock:
            if self.ack_timer is not None:
                self.ack_timer.cancel()
        self.flush_acks()
        with self.lock:
            if self.closed:
                return
            self.closed = True
        self.out.put(None)


def _one_stream(
    api: Api, bot_user_id: str, acked: dict[str, int], stop: Stopper, log: Log, ready: Callable[[], None]
) -> None:
    s = _Stream(bot_user_id, acked, log)
    unregister = stop.on_stop(s.close)
    responses = api.gateway.Connect(s.requests())
    try:
        for res in responses:
            kind = res.WhichOneof("frame")
            if kind == "ready":
                ready()
                log(f"ready: stream {res.ready.session_id}, at most {res.ready.limits.sends_per_second} sends/s")
            elif kind == "caught_up":
                log(f"caught up: {res.caught_up.entries} entries were waiting")
            elif kind == "message":
                for entry in res.message.entries:
                    s.receive(entry)
            elif kind == "send_ack":
                entry = s.pending.pop(res.send_ack.client_msg_id, None)
                if entry is not None:
                    log(f"replied to {entry.conversation_id}#{entry.seq} with #{res.send_ack.seq}")
                    s.done(entry.conversation_id, entry.seq)
            elif kind == "send_error":
                err = res.send_error
                entry = s.pending.get(err.client_msg_id)
                if entry is None:
                    continue
                if err.retry_after_ms > 0:
                    # Rate limit, too many in flight, storage busy: the same send, same key, later.
                    retry = threading.Timer(err.retry_after_ms / 1000, s.send, [reply_to(entry, bot_user_id)])
                    retry.daemon = True
                    retry.start()
                else:
                    del s.pending[err.client_msg_id]
                    log(f"reply to {entry.conversation_id}#{entry.seq} refused (code {err.code}): {err.message}")
                    s.done(entry.conversation_id, entry.seq)
            elif kind == "error":
                log(f"frame {res.error.frame} refused (code {res.error.code}): {res.error.message}")
            # receipt, typing, presence, pong, sync_page, prekeys_low: nothing this bot needs.
    finally:
        unregister()
        s.close()
        responses.cancel()  # a no-op once the server ended the stream
