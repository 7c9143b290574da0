"""What a cycle did, told to the operator: the tally, the log lines about usage, the summary.

A dry run removes nothing, so its usage is projected: what the removals it reports would have freed
is subtracted from each measurement.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass

from . import disk, metrics
from .clock import Clock
from .config import Config
from .plan import RemovalPlan
from .runtime import Removed
from .slots import Grant

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
    grant: Grant = Grant(cordon=True, images=True)  # what TakingSlot decided


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
        if self.cycle.before is not None:
            metrics.record_usage(self.cycle.before)
        low = self.cfg.threshold_low
        log.info("usage of %s: %s (high threshold %s%s)", self.cfg.path_to_check,
                 describe(self.cycle.usage, self.cfg), describe(self.cfg.threshold_high, self.cfg),
                 "" if low is None else f", target {describe(low, self.cfg)}")

    def measuring_ended(self) -> None:
        """Back to Idle from Measuring: it failed, or usage is below the high threshold."""
        metrics.record_cycle("failed" if self.cycle.failed else "skipped")
        if self.cycle.failed:
            log.error("cycle failed in Measuring: %s", self.cycle.failed)
            return
        log.info("usage %s is below the high threshold %s: nothing to do",
                 describe(self.cycle.usage, self.cfg), describe(self.cfg.threshold_high, self.cfg))

    def removal_plan(self, chosen: RemovalPlan, images: int, to_free: float) -> None:
        """The plan before anything goes: its size, then (dry run) each image, why, and its unique bytes;
        and what stays and why, in one line. A real run logs each image as it removes it."""
        target = ("all that may go (THRESHOLD_LOW unset, as docker-image-cleaner did)" if math.isinf(to_free)
                  else f"{human_bytes(to_free)} to reach {describe(self.cfg.threshold_low or 0, self.cfg)}")
        log.info("removal plan: %d of %d images, %s unique bytes; target: %s; order: dangling, superseded, "
                 "then least likely needed (uses / sqrt(hours idle + 0.5)), children before parents",
                 len(chosen.removals), images, human_bytes(chosen.unique_bytes), target)
        if self.cfg.dry_run:
            for n, r in enumerate(chosen.removals, 1):
                log.info("plan %d. %s: %s (%s), %s unique", n, ", ".join(r.image.refs) or r.image.id[:19],
                         r.why, r.detail, human_bytes(r.image.unique))
        stays = Counter(s.why for s in chosen.skipped)
        for why, n in stays.items():
            metrics.record_skipped(why, n)
        not_needed = images - len(chosen.removals) - len(chosen.skipped)
        if not_needed:
            stays["not needed for the target"] = not_needed
        log.info("%d images stay: %s", sum(stays.values()),
                 ", ".join(f"{n} {why}" for why, n in stays.most_common()) or "none")

    def short_of_target(self, chosen: RemovalPlan, refused: int) -> None:
        """Usage is still above the target and nothing more may go: said once per cycle, with why."""
        stays = Counter(s.why for s in chosen.skipped)
        if refused:
            stays["refused by the runtime (see above)"] = refused
        log.warning("usage %s is still above the target %s and nothing else may go: %s; see MIN_AGE and KEEP "
                    "(the README's \"When the target cannot be reached\")",
                    describe(self.cycle.usage, self.cfg),
                    describe(self.cfg.threshold_low if self.cfg.threshold_low is not None
                             else self.cfg.threshold_high, self.cfg),
                    ", ".join(f"{n} {why}" for why, n in stays.most_common()) or "no image is left")

    def tally(self, found: Removed, what: str, kind: str, reason: str) -> None:
        """``found`` removed (or, in a dry run, found removable): ``kind`` and ``reason`` as metrics.KINDS
        and the planner's reasons name them."""
        metrics.record_removal(kind, reason, found.bytes, found.count)
        if kind == "container":
            self.cycle.containers += found.count
        elif kind != "build_cache":  # cache entries are not images: counted in bytes only
            self.cycle.images += found.count
        self.cycle.reported_bytes += found.bytes
        log.info("%s %s (%s)", "would remove" if self.cfg.dry_run else "removed", what,
                 human_bytes(found.bytes))

    def summary(self, after: disk.FsStats | None) -> None:
        """The cycle's one-line summary; ``after`` is the filesystem now (None if unreadable)."""
        c, dry = self.cycle, self.cfg.dry_run
        freed = (c.before.used_bytes - after.used_bytes) if (after and c.before) else 0
        if dry:  # nothing was removed: what the runtime says the removals would free
            freed = c.reported_bytes
        inodes = (c.before.used_inodes - after.used_inodes) if (after and c.before) else 0
        took = self.clock.monotonic() - c.started
        result = "failed" if c.failed else "stopped" if c.stopped else "dry_run" if dry else "done"
        if after:
            metrics.record_usage(after)
        metrics.record_cycle(result, took, c.cordon_seconds if c.cordoned_at is not None else None)
        log.log(logging.ERROR if c.failed else logging.INFO,
                "cycle %s: usage %s -> %s; %s %s and %d inodes (Docker reports %s); %s %d containers "
                "and %d images; node cordoned %.1f s; took %.1f s",
                f"FAILED ({c.failed})" if c.failed else "stopped early" if c.stopped
                else "dry run" if dry else "done",
                describe(c.first_usage, self.cfg), describe(c.usage, self.cfg),
                "would free" if dry else "freed", human_bytes(freed), inodes, human_bytes(c.reported_bytes),
                "would remove" if dry else "removed", c.containers, c.images,
                c.cordon_seconds, took)
