"""The graceful stop: signals, the stop bound, waits a stop cuts short, regions a stop interrupts."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .clock import Clock

log = logging.getLogger("fsm_cleaner")


class StopRequested(BaseException):
    """SIGTERM/SIGINT arrived while a Docker call or a measurement was in flight.

    A BaseException so that no `except Exception` (ours, tenacity's, the SDK's) swallows it.
    """


class Shutdown:
    def __init__(self, stop_timeout_seconds: float, clock: Clock):
        self.stop_timeout_seconds = stop_timeout_seconds
        self.clock = clock
        self.deadline: float | None = None  # clock time by which the node must be handed back
        self._stop = threading.Event()
        self._interruptible = False

    @property
    def requested(self) -> bool:
        return self._stop.is_set()

    def request(self, signum: int, _frame: Any = None) -> None:
        """Signal handler: the first signal stops gracefully, a second one exits at once."""
        if self._stop.is_set():
            log.error("second signal %s: exiting now; the next start reconciles the node", signum)
            logging.shutdown()
            os._exit(128 + signum)
        log.warning("signal %s: stopping (bound %.0f s)", signum, self.stop_timeout_seconds)
        # Leave a margin for the last PATCH's round trip inside the documented bound.
        self.deadline = self.clock.monotonic() + max(1.0, self.stop_timeout_seconds - 3)
        self._stop.set()
        if self._interruptible:
            self._interruptible = False
            raise StopRequested

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request)
        signal.signal(signal.SIGINT, self.request)

    @contextlib.contextmanager
    def stoppable(self) -> Iterator[None]:
        """A region where a stop signal aborts the call in flight (Docker calls, measurements)."""
        if self.requested:
            raise StopRequested
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    def within_bound(self, timeout: tuple[float, float]) -> tuple[float, float] | None:
        """A request's (connect, read) timeout, cut to what is left of the stop bound when stopping;
        None when too little is left to be worth a request."""
        if self.deadline is None:
            return timeout
        left = self.deadline - self.clock.monotonic()
        return None if left < 0.5 else (min(timeout[0], left), min(timeout[1], left))

    def retry_deadline(self) -> float | None:
        """The deadline on time.monotonic's scale, as the retry policies measure it."""
        if self.deadline is None:
            return None
        return time.monotonic() + self.deadline - self.clock.monotonic()

    def backoff(self, seconds: float) -> None:
        """Sleep between two attempts; a stop request cuts it short."""
        self.clock.wait(seconds, self._stop)

    def pause(self, seconds: float) -> None:
        """Sleep between removals; a stop request aborts the pruning."""
        if self.clock.wait(seconds, self._stop):
            raise StopRequested

    def idle(self, seconds: float, beat: Callable[[], None]) -> None:
        """The Idle wait, calling ``beat`` at least every 30 s so liveness sees a live loop."""
        end = self.clock.monotonic() + seconds
        while not self.requested and (left := end - self.clock.monotonic()) > 0:
            self.clock.wait(min(left, 30), self._stop)
            beat()
