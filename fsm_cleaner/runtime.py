"""What the agent asks of a container runtime, the types it answers in, and the dry-run stand-in.

A runtime is a port (docker_runtime.Docker implements it); a second runtime is a new file beside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # plan imports this module's Image; the records are plain data either way
    from .plan import ImageRecord

from .build_cache import CacheEntry, prunable


@dataclass(frozen=True)
class Image:
    id: str
    created: int  # seconds since the epoch
    size: int  # bytes, as the runtime reports it (shared layers counted in each image)
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Removed:
    count: int = 0
    bytes: int = 0  # as the runtime reports it (space reclaimed, or image sizes in a dry run)


class Unsupported(Exception):
    """The runtime lacks this operation (Podman has no build cache endpoint): skip it, do not retry."""


class Runtime(Protocol):
    def ping(self) -> None:
        """Raise unless the runtime answers."""

    def stopped_containers(self) -> Removed:
        """Count and size of the stopped containers (a listing: nothing is removed)."""

    def prune_containers(self) -> Removed:
        """Remove every stopped container."""

    def dangling_images(self, older_than: float) -> list[Image]:
        """The untagged images that no other image builds on, created at least ``older_than`` seconds
        ago (a listing)."""

    def prune_dangling(self, older_than: float) -> Removed:
        """Remove the dangling images created at least ``older_than`` seconds ago."""

    def image_records(self, *, running_only: bool = False) -> list[ImageRecord]:
        """Every top-level image as the removal planner reads it (no use history: that is not the
        runtime's): refs, created, size and unique bytes, in use by any container (``running_only``:
        by the containers a container prune leaves), and ``parent`` = the nearest ancestor that is
        itself listed (through untagged intermediates)."""

    def remove_image(self, image: Image) -> str | None:
        """Remove one image, never forced; None when this call removed it, else why it did not."""

    def build_cache(self) -> list[CacheEntry]:
        """The build cache's entries (a listing); [] for a runtime without one."""

    def prune_build_cache(self, min_age_seconds: float, keep_bytes: int) -> Removed:
        """Remove build cache entries unused for ``min_age_seconds``, least recently used first, until
        the cache holds at most ``keep_bytes`` (0: no budget); Unsupported if the runtime cannot."""


class DryRun:
    """A runtime that only lists: each removal answers what the real one would have freed.

    What it pretends to have pruned earlier in the cycle stays pretended: the images of the stopped
    containers it "removed" are no longer in use, the dangling images it "pruned" are gone, so the
    plan it lists is the one a real run would then make.
    """

    def __init__(self, real: Runtime, now: Callable[[], float] = time.time):
        self.real = real
        self._pruned: set[str] = set()  # dangling images pruned in this cycle, in pretence
        self._containers_pruned = False
        self.now = now  # the wall clock, as the runtime stamps last use

    def ping(self) -> None:
        self.real.ping()

    def stopped_containers(self) -> Removed:
        return self.real.stopped_containers()

    def prune_containers(self) -> Removed:
        self._pruned, self._containers_pruned = set(), True  # a new cycle's pruning begins
        return self.real.stopped_containers()

    def dangling_images(self, older_than: float) -> list[Image]:
        return self.real.dangling_images(older_than)

    def prune_dangling(self, older_than: float) -> Removed:
        """What Docker would report: the bytes only these images hold (its SpaceReclaimed)."""
        dangling = {i.id for i in self.real.dangling_images(older_than)}
        unique = {r.id: r.unique for r in self.real.image_records(running_only=self._containers_pruned)}
        self._pruned |= dangling
        return Removed(len(dangling), sum(unique.get(i, 0) for i in dangling))

    def image_records(self, *, running_only: bool = False) -> list[ImageRecord]:
        records = self.real.image_records(running_only=running_only or self._containers_pruned)
        return [r for r in records if r.id not in self._pruned]  # dangling: nobody's parent

    def remove_image(self, image: Image) -> str | None:
        return None

    def build_cache(self) -> list[CacheEntry]:
        return self.real.build_cache()

    def prune_build_cache(self, min_age_seconds: float, keep_bytes: int) -> Removed:
        gone = prunable(self.real.build_cache(), self.now(), min_age_seconds, keep_bytes)
        return Removed(len(gone), sum(e.size for e in gone))
