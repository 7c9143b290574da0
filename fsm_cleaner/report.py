"""What a cycle did, told to the operator: the tally, the log lines about usage, the summary.

A dry run removes nothing, so its usage is projected: what the removals it reports would have freed
is subtracted from each measurement.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from . import disk
from .clock import Clock
from .config import Config
from .runtime import Removed

log = logging.getLogger("fsm_cleaner")


def describe(usage: float, cfg: Config) -> str:
    if cfg.threshold_type == "relative":
        return f"{usage:.1f}%"
    return human_bytes(usage)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclass
class Cycle:
    started: float  # clock time
    before: disk.FsStats | None = None
    usage: float = 0.0
    first_usage: float = 0.0
    containers: int = 0
    images: int = 0
    reported_bytes: int = 0  # what the runtime says it freed (or would free, in a dry run)
    cordoned_at: float | None = None
    cordon_seconds: float = 0.0
    dangling_found: bool = False
    cache_found: bool = False  # PruningBuildCache removed entries
    failed: str | None = None
    stopped: bool = False  # cut short by SIGTERM/SIGINT


class Report:
    def __init__(self, cfg: Config, clock: Clock):
        self.cfg = cfg
        self.clock = clock
        self.cycle = Cycle(clock.monotonic())

    def new_cycle(self) -> Cycle:
        self.cycle = Cycle(self.clock.monotonic())
        return self.cycle

    def projected(self, usage: float) -> float:
        """A measured usage, less what a dry run's removals would have freed."""
        c = self.cycle
        if not self.cfg.dry_run:
            return usage
        if self.cfg.threshold_type == "absolute":
            return usage - c.reported_bytes
        if c.before and c.before.total_bytes:
            return usage - 100 * c.reported_bytes / c.before.total_bytes
        return usage

    def measured(self) -> None:
        low = self.cfg.threshold_low
        log.info("usage of %s: %s (high threshold %s%s)", self.cfg.path_to_check,
                 describe(self.cycle.usage, self.cfg), describe(self.cfg.threshold_high, self.cfg),
                 "" if low is None else f", target {describe(low, self.cfg)}")

    def measuring_ended(self) -> None:
        """Back to Idle from Measuring: it failed, or usage is below the high threshold."""
        if self.cycle.failed:
            log.error("cycle failed in Measuring: %s", self.cycle.failed)
            return
        log.info("usage %s is below the high threshold %s: nothing to do",
                 describe(self.cycle.usage, self.cfg), describe(self.cfg.threshold_high, self.cfg))

    def removal_plan(self, removable: int, images: int) -> None:
        log.info("%d of %d images can go; removing children before parents, oldest first, %s",
                 removable, images, "until usage is at or below the target" if self.cfg.threshold_low
                 is not None else "all of them (THRESHOLD_LOW unset, as docker-image-cleaner did)")

    def tally(self, found: Removed, what: str, *, containers: bool = False) -> None:
        if containers:
            self.cycle.containers += found.count
        else:
            self.cycle.images += found.count
        self.cycle.reported_bytes += found.bytes
        log.info("%s %s (%s)", "would remove" if self.cfg.dry_run else "removed", what,
                 human_bytes(found.bytes))

    def summary(self, after: disk.FsStats | None) -> None:
        """The cycle's one-line summary; ``after`` is the filesystem now (None if unreadable)."""
        c, dry = self.cycle, self.cfg.dry_run
        freed = (c.before.used_bytes - after.used_bytes) if (after and c.before) else 0
        inodes = (c.before.used_inodes - after.used_inodes) if (after and c.before) else 0
        log.log(logging.ERROR if c.failed else logging.INFO,
                "cycle %s: usage %s -> %s; %s %s and %d inodes (Docker reports %s); %s %d containers "
                "and %d images; node cordoned %.1f s; took %.1f s",
                f"FAILED ({c.failed})" if c.failed else "stopped early" if c.stopped
                else "dry run" if dry else "done",
                describe(c.first_usage, self.cfg), describe(c.usage, self.cfg),
                "would free" if dry else "freed", human_bytes(freed), inodes, human_bytes(c.reported_bytes),
                "would remove" if dry else "removed", c.containers, c.images,
                c.cordon_seconds, self.clock.monotonic() - c.started)
