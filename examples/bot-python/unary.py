"""Unary mode: no stream. Every poll, list the bot's conversations; in each one whose last seq is
past this device's delivered cursor (which ListConversations returns), read the history after the
cursor with GetHistory, reply with GatewayService.Send, then move the cursor with
GatewayService.Ack. The server keeps the cursor, so the bot stores nothing but its credential,
senders see "delivered", and a stream the device opens later starts after it."""

from __future__ import annotations

import grpc
from api import Api
from echo import reply_to
from switchboard.v1 import conversations_pb2, entry_pb2, gateway_pb2
from util import Log, Stopper, backoff_s

CALL_TIMEOUT_S = 10  # every call has a deadline


def run_unary(api: Api, bot_user_id: str, poll_s: float, stop: Stopper, log: Log) -> None:
    ready = False
    failures = 0
    while not stop.is_set():
        try:
            listed = api.conversations.ListConversations(
                conversations_pb2.ListConversationsRequest(), timeout=CALL_TIMEOUT_S
            )
            if not ready:
                log(f"ready: polling {len(listed.conversations)} conversations every {round(poll_s * 1000)} ms")
                ready = True
            for c in listed.conversations:
                after = c.delivered_up_to
                while after < c.last_seq and not stop.is_set():
                    page = api.conversations.GetHistory(
                        conversations_pb2.GetHistoryRequest(conversation_id=c.conversation_id, after_seq=after, limit=100),
                        timeout=CALL_TIMEOUT_S,
                    )
                    for entry in page.entries:
                        reply = reply_to(entry, bot_user_id)
                        if reply is not None:
                            seq = _send_reply(api, reply, stop, log)
                            if seq is not None:
                                log(f"replied to {entry.conversation_id}#{entry.seq} with #{seq}")
                        after = entry.seq
                    if len(page.entries) == 0:
                        break
                    # Acked after the replies are durable: a crash before this line only repeats
                    # replies, and their client_msg_ids make the repeats no-ops.
                    cursor = gateway_pb2.ConversationCursor(conversation_id=c.conversation_id, seq=after)
                    api.gateway.Ack(gateway_pb2.AckRequest(delivered=[cursor]), timeout=CALL_TIMEOUT_S)
                    if not page.has_more:
                        break
            failures = 0
        except grpc.RpcError as e:
            if stop.is_set():
                return
            if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            # Server restarting or unreachable: the cursor did not move, so the same entries (and
            # the same reply keys) come round again.
            log(f"poll: {e.details()}; retrying")
            stop.wait(backoff_s(failures))
            failures += 1
            continue
        stop.wait(poll_s)


def _send_reply(api: Api, entry: entry_pb2.OutgoingEntry, stop: Stopper, log: Log) -> int | None:
    """GatewayService.Send, answered once the reply is durable. Waits out the rate limit using the
    server's `retry-after-ms` trailer; UNAVAILABLE goes up to the poll loop; any other refusal (the
    bot was removed from the group, say) is final for this entry."""
    while True:
        try:
            return api.gateway.Send(gateway_pb2.SendRequest(entry=entry), timeout=CALL_TIMEOUT_S).seq
        except grpc.RpcError as e:
            trailers = dict(e.trailing_metadata() or ())
            retry_after_ms = int(trailers.get("retry-after-ms", "0"))
            if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after_ms > 0 and not stop.is_set():
                stop.wait(retry_after_ms / 1000)
                continue
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) or stop.is_set():
                raise
            log(f"reply to {entry.conversation_id} refused: {e.details()}")
            return None
