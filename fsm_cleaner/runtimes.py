"""Which port speaks to the daemon behind DOCKER_HOST: Docker or Podman, told apart by its version answer.

The choice is made once, at the first answer: a daemon that is down when the agent starts fails that
step (as any call would) and is asked again at the next one; once it has answered, the port stays.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import docker

from .build_cache import CacheEntry
from .docker_runtime import Docker
from .plan import ImageRecord
from .podman_runtime import Podman
from .runtime import Image, Removed

log = logging.getLogger("fsm_cleaner")
PODMAN = "Podman Engine"  # Components[0].Name of Podman's /version; dockerd says "Engine"


def port_for(version: dict) -> type[Docker]:
    """The port class for a /version answer."""
    components = version.get("Components") or [{}]
    return Podman if (components[0] or {}).get("Name") == PODMAN else Docker


def describe(version: dict) -> str:
    """``Podman Engine 4.3.1, API 1.41`` (``Docker Engine 20.10.24+dfsg1, API 1.41`` for dockerd)."""
    components = version.get("Components") or [{}]
    name = (components[0] or {}).get("Name") or "Engine"
    product = name if name == PODMAN else f"Docker {name}"
    return f"{product} {version.get('Version', '?')}, API {version.get('ApiVersion', '?')}"


class Detected:
    """A runtime.Runtime that becomes the Docker or the Podman port at the daemon's first answer."""

    def __init__(self, connect: Callable[[], docker.APIClient], where: str = ""):
        self._connect = connect
        self._where = where
        self._port: Docker | None = None
        self._lock = threading.Lock()

    @property
    def port(self) -> Docker:
        with self._lock:
            if self._port is None:
                api = self._connect()
                version = api.version()
                self._port = port_for(version)(lambda: api)
                log.info("runtime: %s%s; using the %s port", describe(version),
                         f" at {self._where}" if self._where else "", type(self._port).__name__)
            return self._port

    def ping(self) -> None:
        self.port.ping()

    def stopped_containers(self) -> Removed:
        return self.port.stopped_containers()

    def prune_containers(self) -> Removed:
        return self.port.prune_containers()

    def dangling_images(self, older_than: float) -> list[Image]:
        return self.port.dangling_images(older_than)

    def prune_dangling(self, older_than: float) -> Removed:
        return self.port.prune_dangling(older_than)

    def image_records(self, *, running_only: bool = False) -> list[ImageRecord]:
        return self.port.image_records(running_only=running_only)

    def remove_image(self, image: Image) -> str | None:
        return self.port.remove_image(image)

    def build_cache(self) -> list[CacheEntry]:
        return self.port.build_cache()

    def prune_build_cache(self, min_age_seconds: float, keep_bytes: int) -> Removed:
        return self.port.prune_build_cache(min_age_seconds, keep_bytes)
