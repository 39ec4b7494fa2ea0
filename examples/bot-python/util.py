"""Logging, backoff and stopping, shared by both modes."""

from __future__ import annotations

import random
import threading
from datetime import datetime, timezone
from typing import Callable

Log = Callable[[str], None]


def log(line: str) -> None:
    """Where the bot writes what it does: stdout, one timestamped line each, flushed at once."""
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    print(f"{now} {line}", flush=True)


def backoff_s(attempt: int) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(30 s, 250 ms * 2^attempt))."""
    return random.random() * min(30.0, 0.25 * 2 ** min(attempt, 10))


class Stopper:
    """Set by SIGINT/SIGTERM. Waits end early when it is set, and callbacks registered with
    on_stop run then (the stream half-closes)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.RLock()  # set() runs in a signal handler, which may interrupt a holder

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> None:
        self._event.wait(seconds)

    def set(self) -> None:
        self._event.set()
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback()

    def on_stop(self, callback: Callable[[], None]) -> Callable[[], None]:
        with self._lock:
            self._callbacks.append(callback)

        def unregister() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return unregister
