"""What the agent asks of a container runtime, the types it answers in, and the dry-run stand-in.

A runtime is a port (docker_runtime.Docker implements it); a second runtime is a new file beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


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


class DryRun:
    """A runtime that only lists: each removal answers what the real one would have freed."""

    def __init__(self, real: Runtime):
        self.real = real

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
