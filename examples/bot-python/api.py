"""The generated grpcio clients on one channel, the token interceptor, and the bot's state file."""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlparse

import grpc
from switchboard.v1 import accounts_pb2, accounts_pb2_grpc, conversations_pb2_grpc, gateway_pb2_grpc


@dataclass
class BotState:
    """What the bot keeps between runs, in one JSON file (mode 0600: the secret is a password).

    The same file format as the TypeScript example bot's."""

    user_id: str
    device_id: str
    # From Register; exchanged for access tokens with CreateToken. Shown once by the server.
    device_secret: str


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    pass


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call, refreshed a minute before it expires."""

    def __init__(self, signup: accounts_pb2_grpc.AccountServiceStub, state: BotState):
        self._signup = signup
        self._state = state
        self._token = ""
        self._expires_at_ms = 0
        self._lock = threading.Lock()  # the stream's and the unary calls' threads share the token

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        with self._lock:
            if time.time() * 1000 > self._expires_at_ms - 60_000:
                t = self._signup.CreateToken(
                    accounts_pb2.CreateTokenRequest(
                        device_id=self._state.device_id, device_secret=self._state.device_secret
                    ),
                    timeout=10,
                )
                self._token, self._expires_at_ms = t.access_token, t.expires_at_ms
            token = self._token
        metadata = list(details.metadata or []) + [("authorization", f"Bearer {token}")]
        return _CallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready, details.compression
        )

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._with_token(client_call_details), request_iterator)


def open_channel(server: str) -> grpc.Channel:
    """One HTTP/2 connection for every call. Keepalive pings detect a connection that died silently
    (a NAT timeout, a lost route), so a stream that would otherwise wait forever fails with
    UNAVAILABLE and the bot reconnects."""
    url = urlparse(server)
    target = url.netloc or server
    options = [
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        # The channel's own reconnect backoff grows to 2 minutes by default; capped at the bot's
        # 30 s, a server that is back is reached as soon as the bot's next attempt says so.
        ("grpc.max_reconnect_backoff_ms", 30_000),
    ]
    if url.scheme == "https":
        return grpc.secure_channel(target, grpc.ssl_channel_credentials(), options=options)
    return grpc.insecure_channel(target, options=options)


class Api:
    """The generated clients, authenticated as the bot's device."""

    def __init__(self, server: str, state: BotState):
        self.channel = open_channel(server)
        # AccountService without a token, for CreateToken; every other call goes through the interceptor.
        signup = accounts_pb2_grpc.AccountServiceStub(self.channel)
        authed = grpc.intercept_channel(self.channel, _BearerToken(signup, state))
        self.accounts = accounts_pb2_grpc.AccountServiceStub(authed)
        self.conversations = conversations_pb2_grpc.ConversationServiceStub(authed)
        self.gateway = gateway_pb2_grpc.GatewayServiceStub(authed)

    def close(self) -> None:
        self.channel.close()


def load_or_register(server: str, path: str, username: str) -> BotState:
    """Reads the bot's state file, or registers the bot's account and writes a new one."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        return BotState(raw["userId"], raw["deviceId"], raw["deviceSecret"])
    except FileNotFoundError:
        pass
    channel = open_channel(server)
    try:
        r = accounts_pb2_grpc.AccountServiceStub(channel).Register(
            accounts_pb2.RegisterRequest(username=username, display_name="Echo bot", device_name="bot"), timeout=10
        )
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.ALREADY_EXISTS:
            raise SystemExit(f"username {username} is taken; pass that bot's --state file or another --username")
        raise
    finally:
        channel.close()
    state = BotState(r.user.user_id, r.credential.device_id, r.credential.device_secret)
    save_state(path, state)
    return state


def save_state(path: str, state: BotState) -> None:
    """Writes the state file atomically (a crash leaves the old file or the new one, never half)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(
            {
                "userId": state.user_id,
                "deviceId": state.device_id,
                "deviceSecret": state.device_secret,
            },
            f,
            indent=2,
        )
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
