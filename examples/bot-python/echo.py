"""The bot's whole behaviour: the reply to one log entry. Both modes call it for every entry."""

from __future__ import annotations

from switchboard.v1 import entry_pb2

# In groups the bot answers only messages that start with this, so two bots never talk forever.
GROUP_COMMAND = "!echo "
MAX_REPLY_CHARS = 1_000


def reply_to(entry: entry_pb2.Entry, bot_user_id: str) -> entry_pb2.OutgoingEntry | None:
    """The reply to an entry, or None for none.

    Every member device gets every entry, the bot's own replies included; and only messages are
    answered (not edits, reactions, deletes or membership changes). This bot has no Signal keys,
    so it reads plaintext payloads only (payload_type 0, UTF-8 text): an end-to-end encrypted entry
    (a group member's sender-key message, say) is not for it and gets no answer."""
    if entry.sender_user_id == bot_user_id or entry.WhichOneof("body") != "message" or entry.redacted:
        return None
    if entry.message.payload_type != 0:
        return None
    text = entry.message.payload.decode("utf-8", errors="replace")
    if entry.conversation_id.startswith("g_"):
        if not text.startswith(GROUP_COMMAND):
            return None
        text = text[len(GROUP_COMMAND) :]
    return entry_pb2.OutgoingEntry(
        client_msg_id=reply_id(entry),
        conversation_id=entry.conversation_id,
        message=entry_pb2.MessageBody(payload=f"echo: {text[:MAX_REPLY_CHARS]}".encode()),
    )


def reply_id(entry: entry_pb2.Entry) -> str:
    """The reply's idempotency key, derived from the entry it answers rather than random.

    Whenever the bot handles an entry again (a crash before its ack or cursor was saved, a
    re-delivery, a second instance with the same credentials) it sends the same key, and the server
    returns the first reply's seq instead of appending a second reply."""
    return f"re_{entry.conversation_id}_{entry.seq}"
