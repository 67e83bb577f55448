"""The moment the process was told to stop, for background work that shares the requests'
grace period.

On SIGTERM (or SIGINT) uvicorn stops accepting and waits up to SHUTDOWN_GRACE_SECONDS for the
requests in flight before it runs the app's shutdown. Job workers must stop taking work at
the signal and finish within that same period, not start a grace of their own after it: the
container's stop timeout (compose's `stop_grace_period`) allows for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ShutdownSignal:
    def __init__(self) -> None:
        self.at: float | None = None  # time.monotonic() of the first signal
        self._listeners: list[Callable[[], None]] = []

    def on_signal(self, listener: Callable[[], None]) -> None:
        """`listener` runs on the event loop once, when the first signal arrives."""
        self._listeners.append(listener)

    def remaining(self, grace: float) -> float:
        """What is left of `grace` seconds counted from the signal (all of it if none came)."""
        if self.at is None:
            return grace
        return max(0.0, grace - (time.monotonic() - self.at))

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Note the signal, then hand it on to the handler that was there (uvicorn's)."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach the main thread only (an app served from a test's thread)
            return
        loop = asyncio.get_running_loop()
        previous = {sig: signal.getsignal(sig) for sig in SIGNALS}

        def handle(sig: int, frame) -> None:
            if self.at is None:
                self.at = time.monotonic()
                for listener in self._listeners:
                    loop.call_soon_threadsafe(listener)
            prior = previous[sig]
            if callable(prior):
                prior(sig, frame)
            elif prior == signal.SIG_DFL:  # nobody else listens: the default is to end
                signal.signal(sig, prior)
                signal.raise_signal(sig)

        for sig in SIGNALS:
            signal.signal(sig, handle)
        try:
            yield
        finally:
            for sig, prior in previous.items():
                if signal.getsignal(sig) is handle:
                    signal.signal(sig, prior)
