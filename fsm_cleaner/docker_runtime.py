"""Port to the Docker Engine (docker SDK, low-level API: one call per listing)."""

from __future__ import annotations

from collections.abc import Callable

import docker
import docker.errors

from .runtime import Image, Removed

_STOPPED = {"status": ["exited", "created", "dead"]}


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
