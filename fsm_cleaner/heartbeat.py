"""The liveness heartbeat: a file the loop touches and `fsm-cleaner healthcheck` reads."""

from __future__ import annotations

import contextlib
from pathlib import Path


class Heartbeat:
    def __init__(self, path: str):
        self.path = Path(path)

    def beat(self) -> None:
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
