"""Port to the Docker Engine (docker SDK, low-level API: one call per listing)."""

from __future__ import annotations

import time
from collections.abc import Callable

import docker
import docker.errors

from .plan import ImageRecord
from .runtime import Image, Removed

_STOPPED = {"status": ["exited", "created", "dead"]}
_LEFT_BY_PRUNE = {"running", "paused", "restarting"}  # the states `docker container prune` leaves


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

    def image_records(self, *, running_only: bool = False) -> list[ImageRecord]:
        """Images, their unique bytes and the containers using them from one /system/df (slow on a large
        store: the agent calls it once per cycle), parents from one image listing."""
        df = self.api.df()
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
