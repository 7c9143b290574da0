"""Port to Podman's Docker-compatible service: the Docker port, translated where Podman answers differently.

Each difference below is measured against Podman 4.3.1 in tests/test_podman_bed.py (the raw answers) and
tests/test_podman_runtime.py (this port's handling of them):
- Image ids come with `sha256:` in image and container listings, but bare in /system/df, in ParentId and
  in a prune's ImagesDeleted: every id is normalised to the `sha256:` form the agent keys on.
- /system/df lists only the tag part of a reference (`v1`): references come from the image listing.
- A dangling prune's SpaceReclaimed adds up the listed image sizes, layers shared with kept images
  included: the port counts the deleted images' unique bytes (Size - SharedSize) instead.
- The stopped-container listing rejects the `dead` status (500): it asks for exited and created only.
- `force` removes the containers using an image, where dockerd refuses: the port never forces. An image
  with several tags (which Podman will not remove by id unforced) loses its tags one by one after a
  fresh look, and gets them back if the last removal is refused: whole or whole again.
"""

from __future__ import annotations

import logging
import re

import docker.errors

from .docker_runtime import Docker
from .runtime import Image, Removed

log = logging.getLogger("fsm_cleaner")

_STOPPED = {"status": ["exited", "created"]}  # Podman has no "dead" and answers 500 to it
_BARE_ID = re.compile(r"[0-9a-f]{64}")


def full_id(image_id: str) -> str:
    """``sha256:<hex>`` for a bare 64-hex id; anything else (empty, already prefixed) unchanged."""
    return f"sha256:{image_id}" if _BARE_ID.fullmatch(image_id) else image_id


def _repo_tag(ref: str) -> tuple[str, str]:
    """``docker.io/x/app:v1`` → (``docker.io/x/app``, ``v1``); a registry port is not a tag."""
    repo, _, tag = ref.rpartition(":")
    return (repo, tag) if repo and "/" not in tag else (ref, "latest")


def _kept(e: docker.errors.APIError) -> bool:
    """A refusal that keeps the image: in use or a parent (409), or tagged more than once (500: a tag
    added since the listing). Any other error is the daemon's trouble: retried, then the step fails."""
    return e.status_code == 409 or (e.status_code == 500 and "more than one tag" in str(e.explanation))


class Podman(Docker):
    """Podman's Docker-compatible service as a runtime.Runtime."""

    def stopped_containers(self) -> Removed:
        found = self.api.containers(all=True, filters=_STOPPED, size=True)
        return Removed(len(found), sum(c.get("SizeRw") or 0 for c in found))

    def prune_dangling(self, older_than: float) -> Removed:
        """Count what the prune deleted, in the unique bytes of those images, read before the prune."""
        unique = {r.id: r.unique for r in self.image_records()}
        result = self.api.prune_images(filters={"dangling": True, "until": f"{older_than:.0f}s"})
        deleted = {full_id(d["Deleted"]) for d in result.get("ImagesDeleted") or [] if d.get("Deleted")}
        freed = sum(unique.get(i, 0) for i in deleted)  # one it had not listed: counted 0, not guessed
        reported = result.get("SpaceReclaimed") or 0
        if reported != freed:
            log.debug("Podman reports %d bytes reclaimed for %d dangling images; their unique bytes: %d",
                      reported, len(deleted), freed)
        return Removed(len(deleted), freed)

    def image_parents(self) -> dict[str, str]:
        rows = self.api.images(all=True)
        return {full_id(r["Id"]): full_id(r["ParentId"]) for r in rows if r.get("ParentId")}

    def remove_image(self, image: Image) -> str | None:
        """Remove one image whole, never forced; returns why it was kept, or None when it is gone.

        One tag (or none): by id, unforced; Podman refuses (409) when any container uses it. Several tags:
        Podman will not remove by id without force, and its force would remove the containers. So, after
        a fresh look (containers of any state, child images), each tag but the last is removed by name
        (an untag), then the image by id; a refusal there (a container created meanwhile, a tag added)
        puts the removed tags back, and the image stays whole."""
        try:
            if len(image.tags) <= 1:
                self.api.remove_image(image.id)
                return None
            why = self._in_use_or_parent(image.id)
            if why:
                return why
            return self._untag_then_remove(image)
        except docker.errors.NotFound:
            return "already gone: removed by someone else meanwhile"
        except docker.errors.APIError as e:
            if _kept(e):
                return str(e.explanation or e)
            raise

    def _untag_then_remove(self, image: Image) -> str | None:
        untagged: list[str] = []
        try:
            for ref in image.tags[:-1]:
                self.api.remove_image(ref)  # with another tag left, Podman only untags
                untagged.append(ref)
            self.api.remove_image(image.id)
            return None
        except docker.errors.APIError as e:
            # Whatever stopped it, the tags go back first: a retry (or the next cycle) then finds the
            # image as it was, not one that lost a tag to a removal that never happened.
            self._restore(image.id, untagged)
            if isinstance(e, docker.errors.NotFound) or not _kept(e):
                raise
            return f"{e.explanation or e} (its tags were removed one by one and are restored)"

    def _restore(self, image_id: str, refs: list[str]) -> None:
        for ref in refs:
            try:
                self.api.tag(image_id, *_repo_tag(ref))
            except docker.errors.APIError as e:  # the image stays with fewer tags: say which
                log.warning("image %s: its tag %s could not be restored: %s", image_id[:19], ref,
                            e.explanation or e)

    def _df(self) -> dict:
        """/system/df with the ids in the agent's form and the references of the image listing (df gives
        only their tag part)."""
        df = self.api.df()
        refs = {r["Id"]: r.get("RepoTags") for r in self.api.images()}
        for row in df.get("Images") or []:
            row["Id"] = full_id(row["Id"])
            row["RepoTags"] = refs.get(row["Id"]) or []
        for row in df.get("Containers") or []:
            row["ImageID"] = full_id(row.get("ImageID") or "")
        return df
