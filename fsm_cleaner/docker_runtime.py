"""Port to the Docker Engine (docker SDK, low-level API: one call per listing)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import docker
import docker.errors
import docker.utils

from .build_cache import CacheEntry
from .runtime import Image, Removed, Unsupported

_STOPPED = {"status": ["exited", "created", "dead"]}
# Engine API 1.48 (Docker 28) renamed keep-storage to reserved-space and added max-used-space; a later
# version drops keep-storage.
_BUDGET_RENAMED = (1, 48)


def build_prune_params(api_version: str, min_age_seconds: float, keep_bytes: int) -> dict[str, str]:
    """The query of POST /build/prune for the daemon's API version: entries unused for min_age_seconds,
    down to keep_bytes (0: no budget). `until` as a Go duration: dockerd 20.10 takes nothing else."""
    params: dict[str, str] = {}
    if min_age_seconds > 0:
        params["filters"] = docker.utils.convert_filters({"until": f"{int(min_age_seconds)}s"})
    if keep_bytes:
        version = tuple(int(n) for n in api_version.split(".")[:2])
        if version >= _BUDGET_RENAMED:  # prune down to it, and never below it
            params["max-used-space"] = params["reserved-space"] = str(keep_bytes)
        else:
            params["keep-storage"] = str(keep_bytes)
    return params


def _epoch(stamp: str | None) -> float | None:
    """Docker's RFC 3339 time with nanoseconds (2026-12-01T11:18:56.226976562Z) in epoch seconds."""
    if not stamp:
        return None
    head, _, frac = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float("0." + (frac or "0"))


class Docker:
    """The Docker Engine as a runtime.Runtime."""

    def __init__(self, connect: Callable[[], docker.APIClient]):
        self._connect = connect
        self._api: docker.APIClient | None = None

    @classmethod
    def from_env(cls, timeout: float) -> Docker:
        """DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH, as the docker CLI reads them."""
        return cls(lambda: docker.from_env(timeout=int(timeout)).api)

    @property
    def api(self) -> docker.APIClient:
        # Connected on first use, inside a step's retries: a daemon that is down at start-up (or
        # restarting) fails that step, not the process.
        if self._api is None:
            self._api = self._connect()
        return self._api

    def ping(self) -> None:
        self.api.ping()

    def stopped_containers(self) -> Removed:
        found = self.api.containers(all=True, filters=_STOPPED, size=True)
        return Removed(len(found), sum(c.get("SizeRw") or 0 for c in found))

    def prune_containers(self) -> Removed:
        result = self.api.prune_containers()
        return Removed(len(result.get("ContainersDeleted") or []), result.get("SpaceReclaimed") or 0)

    def dangling_images(self) -> list[Image]:
        return self._images(self.api.images(filters={"dangling": True}))

    def prune_dangling(self) -> Removed:
        before = {i.id for i in self.dangling_images()}
        result = self.api.prune_images(filters={"dangling": True})
        deleted = {d["Deleted"] for d in result.get("ImagesDeleted") or [] if "Deleted" in d}
        return Removed(len(before & deleted), result.get("SpaceReclaimed") or 0)

    def images(self) -> list[Image]:
        return self._images(self.api.images())

    def image_parents(self) -> dict[str, str]:
        """Parent of every image that has one, intermediate images included (one call)."""
        return {r["Id"]: r["ParentId"] for r in self.api.images(all=True) if r.get("ParentId")}

    def images_in_use(self) -> set[str]:
        """Image ids of every container, running or stopped."""
        return {c["ImageID"] for c in self.api.containers(all=True)}

    def remove_image(self, image: Image) -> str | None:
        """Remove one image without force; returns why it was kept, or None when it is gone.

        An image with several tags cannot be removed by id without force, so its tags are removed one
        by one: dropping the last tag deletes the image, unless it is the parent of another image.
        """
        try:
            for ref in image.tags[:-1]:
                self.api.remove_image(ref)
            result = self.api.remove_image(image.tags[-1] if image.tags else image.id)
        except docker.errors.NotFound:  # gone, but not freed by us: not counted as removed
            return "already gone: removed by someone else meanwhile"
        except docker.errors.APIError as e:
            if e.status_code == 409:  # in use, or a parent of another image: never forced
                return str(e.explanation or e)
            raise
        if not any("Deleted" in r for r in result or []):
            return "only untagged: it is the parent of another image, so nothing was freed"
        return None

    def build_cache(self) -> list[CacheEntry]:
        return [
            CacheEntry(
                id=r["ID"],
                size=int(r.get("Size") or 0),
                last_used=_epoch(r.get("LastUsedAt")),
                in_use=bool(r.get("InUse")),
                shared=bool(r.get("Shared")),
                type=r.get("Type") or "regular",
                parents=tuple(r.get("Parents") or ([r["Parent"]] if r.get("Parent") else [])),
            )
            for r in self.api.df().get("BuildCache") or []
        ]

    def prune_build_cache(self, min_age_seconds: float, keep_bytes: int) -> Removed:
        """Without `all`: entries an image shares free nothing now and keep that image's rebuild cheap."""
        api = self.api
        params = build_prune_params(api.api_version, min_age_seconds, keep_bytes)
        try:
            result = api._result(api._post(api._url("/build/prune"), params=params), True)
        except docker.errors.APIError as e:
            if e.status_code == 404:  # Podman: no such endpoint
                raise Unsupported(f"the runtime has no build cache endpoint (POST /build/prune: "
                                  f"{e.explanation or 404})") from e
            raise
        return Removed(len(result.get("CachesDeleted") or []), result.get("SpaceReclaimed") or 0)

    @staticmethod
    def _images(rows: list[dict]) -> list[Image]:
        return [
            Image(
                id=r["Id"],
                created=int(r.get("Created") or 0),
                size=int(r.get("Size") or 0),
                tags=tuple(t for t in r.get("RepoTags") or () if t != "<none>:<none>"),
            )
            for r in rows
        ]
