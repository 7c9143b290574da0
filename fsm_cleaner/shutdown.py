"""The graceful stop: signals, the stop bound, waits a stop cuts short, regions a stop interrupts.

The signal handler only records the request and writes a byte down a pipe that every wait selects
on. It neither logs nor takes a lock: the main flow it interrupts may hold the very lock (a log
stream's, an Event's) and the handler would fail or block forever. The main flow logs the request.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

from .clock import Clock

log = logging.getLogger("fsm_cleaner")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # SIGHUP: a closed terminal, a supervisor
IGNORED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)  # nothing to reload or dump; never die of them


class StopRequested(BaseException):
    """SIGTERM/SIGINT arrived while a Docker call or a measurement was in flight.

    A BaseException so that no `except Exception` (ours, tenacity's, the SDK's) swallows it.
    """


class Shutdown:
    def __init__(self, stop_timeout_seconds: float, clock: Clock):
        self.stop_timeout_seconds = stop_timeout_seconds
        self.clock = clock
        self.deadline: float | None = None  # clock time by which the node must be handed back
        self._signum: int | None = None  # written by the signal handler only
        self._ignored: list[int] = []  # likewise: signals to log as ignored (append/pop are atomic)
        self._announced = False
        self._interruptible = False
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)

    @property
    def requested(self) -> bool:
        """Whether a stop was requested; the first time it is seen, the main flow logs it."""
        while self._ignored:
            log.info("signal %s ignored", self._ignored.pop(0))
        if self._signum is not None and not self._announced:
            self._announced = True
            log.warning("signal %s: stopping (bound %.0f s)", self._signum, self.stop_timeout_seconds)
        return self._signum is not None

    def request(self, signum: int, _frame: Any = None) -> None:
        """Signal handler: the first signal stops gracefully, a second one exits at once."""
        if self._signum is not None:
            now = time.time()
            os.write(2, f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(now))}.{int(now % 1 * 1000):03d}Z "
                        f"ERROR   second signal {signum}: exiting now; the next start reconciles the "
                        "node\n".encode())
            os._exit(128 + signum)
        # Leave a margin for the last PATCH's round trip inside the documented bound.
        self.deadline = self.clock.monotonic() + max(1.0, self.stop_timeout_seconds - 3)
        self._signum = signum
        with contextlib.suppress(BlockingIOError):  # a full pipe wakes the waits just as well
            os.write(self._wake_write, b"\0")
        if self._interruptible:  # a Docker call or a measurement in flight: cut it short
            self._interruptible = False
            raise StopRequested

    def ignore(self, signum: int, _frame: Any = None) -> None:
        """Signal handler for signals whose default action would kill the agent mid-cycle."""
        self._ignored.append(signum)
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"\0")

    def install_signal_handlers(self) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self.request)
        for signum in IGNORED_SIGNALS:
            signal.signal(signum, self.ignore)

    def interrupted(self) -> None:
        """The main flow caught StopRequested."""
        if self.requested:
            log.warning("stop requested: no new removals; handing the node back")

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
        self._wait(seconds)

    def pause(self, seconds: float) -> None:
        """Sleep between removals; a stop request aborts the pruning."""
        if self._wait(seconds):
            raise StopRequested

    def idle(self, seconds: float, beat: Callable[[], None]) -> None:
        """The Idle wait, calling ``beat`` at least every 30 s so liveness sees a live loop."""
        end = self.clock.monotonic() + seconds
        while not self.requested and (left := end - self.clock.monotonic()) > 0:
            self._wait(min(left, 30))
            beat()

    def _wait(self, seconds: float) -> bool:
        """Wait ``seconds`` unless a stop is requested; whether one is."""
        end = self.clock.monotonic() + seconds
        while not self.requested and (left := end - self.clock.monotonic()) > 0:
            self.clock.wait(left, self._wake_read)
            if not self.requested:  # woken by an ignored signal: empty the pipe and wait on
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_read, 512)
        return self.requested
