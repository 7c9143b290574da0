"""What the agent asks of a container runtime, the types it answers in, and the dry-run stand-in.

A runtime is a port (docker_runtime.Docker implements it); a second runtime is a new file beside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

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

    def dangling_images(self) -> list[Image]:
        """The untagged images that no other image builds on (a listing)."""

    def prune_dangling(self) -> Removed:
        """Remove the dangling images."""

    def images(self) -> list[Image]:
        """The top-level images."""

    def images_in_use(self) -> set[str]:
        """Image ids of every container, running or stopped."""

    def image_parents(self) -> dict[str, str]:
        """Parent id of every image that has one, intermediate images included."""

    def remove_image(self, image: Image) -> str | None:
        """Remove one image, never forced; None when this call removed it, else why it did not."""

    def build_cache(self) -> list[CacheEntry]:
        """The build cache's entries (a listing); [] for a runtime without one."""

    def prune_build_cache(self, min_age_seconds: float, keep_bytes: int) -> Removed:
        """Remove build cache entries unused for ``min_age_seconds``, least recently used first, until
        the cache holds at most ``keep_bytes`` (0: no budget); Unsupported if the runtime cannot."""


class DryRun:
    """A runtime that only lists: each removal answers what the real one would have freed."""

    def __init__(self, real: Runtime, now: Callable[[], float] = time.time):
        self.real = real
        self.now = now  # the wall clock, as the runtime stamps last use

    def ping(self) -> None:
        self.real.ping()

    def stopped_containers(self) -> Removed:
        return self.real.stopped_containers()

    def prune_containers(self) -> Removed:
        return self.real.stopped_containers()

    def dangling_images(self) -> list[Image]:
        return self.real.dangling_images()

    def prune_dangling(self) -> Removed:
        images = self.real.dangling_images()
        return Removed(len(images), sum(i.size for i in images))

    def images(self) -> list[Image]:
        return self.real.images()

    def images_in_use(self) -> set[str]:
        return self.real.images_in_use()

    def image_parents(self) -> dict[str, str]:
        return self.real.image_parents()

    def remove_image(self, image: Image) -> str | None:
        return None

    def build_cache(self) -> list[CacheEntry]:
        return self.real.build_cache()

    def prune_build_cache(self, min_age_seconds: float, keep_bytes: int) -> Removed:
        gone = prunable(self.real.build_cache(), self.now(), min_age_seconds, keep_bytes)
        return Removed(len(gone), sum(e.size for e in gone))
