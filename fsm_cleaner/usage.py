"""The usage of PATH_TO_CHECK as the thresholds compare it: percent (relative) or bytes (absolute)."""

from __future__ import annotations

import contextlib
from typing import Protocol

from . import disk, plan, step
from .config import Config
from .report import Report
from .shutdown import Shutdown


class Disk(Protocol):
    """The filesystem readings used (fsm_cleaner.disk; devtools.fakes.FakeDisk)."""

    def fs_stats(self, path: str) -> disk.FsStats: ...

    def tree_bytes(self, path: str) -> int: ...


class Meter:
    def __init__(self, cfg: Config, shutdown: Shutdown, report: Report, port: Disk = disk):
        self.cfg = cfg
        self.shutdown = shutdown
        self.report = report
        self.disk = port

    def first(self) -> tuple[disk.FsStats, float]:
        """The filesystem before the cycle, and the usage that decides whether to clean."""
        path = self.cfg.path_to_check
        before = step.run(self.cfg, self.shutdown, "Measuring", lambda: self.disk.fs_stats(path))
        return before, before.percent if self.cfg.threshold_type == "relative" else self.measure()

    def measure(self) -> float:
        """A measurement, which a stop request cuts short (``du`` can take minutes)."""
        def measure() -> float:
            if self.cfg.threshold_type == "relative":
                return self.disk.fs_stats(self.cfg.path_to_check).percent
            return float(self.disk.tree_bytes(self.cfg.path_to_check))

        with self.shutdown.stoppable():
            return self.report.projected(step.run(self.cfg, self.shutdown, "Measuring", measure))

    def after_removal(self, usage: float, freed: int) -> float:
        """Usage after a removal. In absolute mode a measurement walks the tree, so it is estimated (the
        runtime's size overstates what goes) and measured only to confirm that the target is reached."""
        if self.cfg.threshold_type == "absolute":
            estimate = usage - freed
            if self.cfg.threshold_low is None or not plan.clean_enough(estimate, self.cfg):
                return estimate
        return self.measure()

    def now(self) -> disk.FsStats | None:
        """The filesystem now, for the summary; None when it cannot be read."""
        with contextlib.suppress(OSError):
            return self.disk.fs_stats(self.cfg.path_to_check)
        return None
