"""Time as the agent sees it: a monotonic clock and a wait that a stop request cuts short.

Injectable, so that tests run the agent's waits (Idle, pauses, retry backoff) without sleeping.
"""

from __future__ import annotations

import select
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds from an arbitrary start; never goes back."""

    def wait(self, seconds: float, wake_fd: int) -> None:
        """Wait ``seconds``, or less once ``wake_fd`` is readable (a stop was requested)."""


class RealClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, seconds: float, wake_fd: int) -> None:
        select.select([wake_fd], [], [], max(0.0, seconds))
