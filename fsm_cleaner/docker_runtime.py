"""Port to the Docker Engine (docker SDK, low-level API: one call per listing)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

import docker
import docker.errors
import docker.utils

from .build_cache import CacheEntry
from .plan import ImageRecord
from .runtime import Image, Removed, Unsupported

_STOPPED = {"status": ["exited", "created", "dead"]}
_LEFT_BY_PRUNE = {"running", "paused", "restarting"}  # the states `docker container prune` leaves
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

    def dangling_images(self, older_than: float) -> list[Image]:
        cutoff = time.time() - older_than  # as the prune's `until` filter compares it, to Created
        return [i for i in self._images(self.api.images(filters={"dangling": True})) if i.created < cutoff]

    def prune_dangling(self, older_than: float) -> Removed:
        before = {i.id for i in self.dangling_images(older_than)}
        result = self.api.prune_images(filters={"dangling": True, "until": f"{older_than:.0f}s"})
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
        """Remove one image whole, or leave it whole; returns why it was kept, or None when it is gone.

        One tag (or none): removed by id without force, so the daemon itself decides, in one call, that
        no container (running, stopped or created) uses it and no image builds on it; a refused removal
        leaves the image with its tag. Several tags: dockerd removes an image by id without force only
        when it has at most one, and removing the tags one by one let a container started on the second
        tag meanwhile keep the image but lose the first tag. So the agent looks again right before
        removing it (any container using it, any child image) and, only if that look finds none,
        removes it by id with force, which drops every tag and the image in one call. Force overrides
        only dockerd's soft conflicts: a container running on the image or a child image still makes
        the daemon refuse, all tags kept. What force would override is a container created (not
        started) on the image in the milliseconds between that look and the removal: the image record
        and its tags go, the container keeps its layers and still starts. Force is dockerd's meaning;
        a runtime whose force removes the containers (Podman) must not take this path.
        """
        try:
            if len(image.tags) > 1:
                why = self._in_use_or_parent(image.id)
                if why:
                    return why
            self.api.remove_image(image.id, force=len(image.tags) > 1)
        except docker.errors.NotFound:  # gone, but not freed by us: not counted as removed
            return "already gone: removed by someone else meanwhile"
        except docker.errors.APIError as e:
            if e.status_code == 409:  # kept whole: in use, a parent, or references beyond its tags
                return str(e.explanation or e)
            raise
        return None

    def _in_use_or_parent(self, image_id: str) -> str | None:
        """Why ``image_id`` must stay, from a fresh look: a container of any state uses it, or another
        image builds on it; None when neither. Containers are listed last, as close to the removal as
        possible: they are what changes most often."""
        if image_id in self.image_parents().values():
            return "it is the parent of another image (seen right before removal)"
        users = [c["Id"][:12] for c in self.api.containers(all=True) if c.get("ImageID") == image_id]
        if users:
            return f"in use by container {', '.join(users)} (seen right before removal)"
        return None

    def image_records(self, *, running_only: bool = False) -> list[ImageRecord]:
        """Images, their unique bytes and the containers using them from one /system/df (slow on a large
        store: the agent calls it once per cycle), parents from one image listing."""
        df = self._df()
        parent_of = self.image_parents()
        in_use = {c["ImageID"] for c in df.get("Containers") or []
                  if not running_only or c.get("State") in _LEFT_BY_PRUNE}
        rows = df.get("Images") or []
        listed = {r["Id"] for r in rows}

        def nearest_listed(image_id: str) -> str:
            parent, hops = parent_of.get(image_id, ""), 0
            while parent and parent not in listed and hops < len(parent_of):  # bounded on a cycle
                parent, hops = parent_of.get(parent, ""), hops + 1
            return parent if parent in listed else ""

        records = []
        for r in rows:
            size, shared = int(r.get("Size") or 0), int(r.get("SharedSize") or 0)
            records.append(ImageRecord(
                id=r["Id"],
                refs=tuple(t for t in r.get("RepoTags") or () if t != "<none>:<none>"),
                parent=nearest_listed(r["Id"]),
                created=float(r.get("Created") or 0),
                in_use=r["Id"] in in_use,
                size=size,
                unique=max(size - max(shared, 0), 0),  # SharedSize -1: not computed
            ))
        return records

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
            for r in self._df().get("BuildCache") or []
        ]

    def _df(self) -> dict:
        """GET /system/df: images, containers and build cache (a port for another daemon translates it)."""
        return self.api.df()

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
