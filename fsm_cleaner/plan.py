"""Pure decisions: is the disk too full, is it clean enough, which images go and in what order."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from .config import Config
from .runtime import Image


def above_high(usage: float, cfg: Config) -> bool:
    # At or above, as docker-image-cleaner did ("if used < threshold: sleep").
    return usage >= cfg.threshold_high


def critical(usage: float, cfg: Config) -> bool:
    """At or above CRITICAL_THRESHOLD: the disk comes before the cordon budget and blocking pods."""
    return cfg.critical_threshold is not None and usage >= cfg.critical_threshold


def clean_enough(usage: float, cfg: Config) -> bool:
    """Whether removing more can stop. Without THRESHOLD_LOW the old tool's rule: back under high."""
    if cfg.threshold_low is not None:
        return usage <= cfg.threshold_low
    return usage < cfg.threshold_high


def removal_order(images: list[Image], in_use: set[str], parent_of: dict[str, str]) -> list[Image]:
    """Images no container uses, children before their parents, then oldest first.

    ``parent_of`` maps an image id to its parent's (images built with the legacy builder have one).
    A parent frees nothing while a child holds its layers, and removing it would only drop its tag,
    so it comes after its descendants; the ancestors of an image in use are not removed at all.
    """
    height: dict[str, int] = {}  # generations of descendants below an image
    held: set[str] = set()  # ancestors of images in use
    for child in parent_of:
        generation, parent = 1, parent_of[child]
        while parent:
            height[parent] = max(height.get(parent, 0), generation)
            if child in in_use:
                held.add(parent)
            generation, parent = generation + 1, parent_of.get(parent, "")
    unused = (i for i in images if i.id not in in_use and i.id not in held)
    return sorted(unused, key=lambda i: (height.get(i.id, 0), i.created, i.id))


@dataclass(frozen=True)
class ImageRecord:
    """What the removal planner knows of one image: plain data from Docker and the use history."""

    id: str
    refs: tuple[str, ...] = ()  # repository:tag references as Docker lists them; none: dangling
    parent: str = ""  # parent image id (images built with the legacy builder have one)
    created: float = 0.0  # seconds since the epoch
    arrived: float | None = None  # last pull, build, load or import here; None: not on record
    last_used: float | None = None  # seconds since the epoch; None: no use on record
    uses: int = 0  # uses on record (container create/start, pull, build, tag, load, import)
    in_use: bool = False  # a container uses it, running or created/stopped
    size: int = 0  # bytes, shared layers included (Docker's Size)
    unique: int = 0  # bytes only this image holds: Size - SharedSize from /system/df


@dataclass(frozen=True)
class Removal:
    image: ImageRecord
    why: str  # "dangling", "superseded" or "least needed": a metric label
    detail: str  # for the log and the dry-run plan


@dataclass(frozen=True)
class Skip:
    image: ImageRecord
    why: str  # "in use", "parent of an image that stays", "kept" or "too young": a metric label
    detail: str


@dataclass(frozen=True)
class RemovalPlan:
    removals: tuple[Removal, ...]  # in order; ends where their unique bytes reach the target
    skipped: tuple[Skip, ...]  # images that must stay, with the rule that keeps each

    @property
    def unique_bytes(self) -> int:
        """What the removals free at least: layers shared between removed images come on top."""
        return sum(r.image.unique for r in self.removals)


def arrived(image: ImageRecord) -> float:
    """When the image came to this node: created here, or pulled (Docker keeps only the creation time)."""
    return max(image.created, image.arrived or 0.0)


def seen(image: ImageRecord) -> float:
    """When the image last arrived or was used."""
    return max(arrived(image), image.last_used or 0.0)


def likely_needed(image: ImageRecord, now: float) -> float:
    """How likely the image is needed again: uses on record / sqrt(hours idle since the last one + ½).

    Frequency weighted by recency: an image used 40 times goes after one used once even if it has sat
    idle for hours longer, yet a once-popular image that nobody uses any more goes in the end. The
    square root came out of benchmarks/retention.py: on a Zipf-popular BinderHub-like trace it frees
    what is re-fetched least, ahead of LRU, LFU, uses / idle, uses / idle² and a size-aware score.
    The half hour keeps an image used a moment ago from dividing by nothing.
    """
    return max(image.uses, 1) / math.sqrt(max(now - seen(image), 0.0) / 3600 + 0.5)


def normalize_reference(ref: str) -> str:
    """Docker's fully qualified form of an image reference, so that ``busybox``, ``busybox:latest``
    and ``docker.io/library/busybox:latest`` are one name (a digest reference keeps its digest)."""
    name, at, digest = ref.partition("@")
    domain, slash, rest = name.partition("/")
    if not slash or not ("." in domain or ":" in domain or domain == "localhost"):
        domain, rest = "docker.io", name
    elif domain == "index.docker.io":
        domain = "docker.io"
    if domain == "docker.io" and "/" not in rest:
        rest = "library/" + rest
    if not at and ":" not in rest.rsplit("/", 1)[-1]:
        rest += ":latest"
    return f"{domain}/{rest}{at}{digest}"


def repository(ref: str) -> str:
    """The repository of a reference, fully qualified, without its tag or digest."""
    full = normalize_reference(ref).partition("@")[0]
    head, _, last = full.rpartition("/")
    return f"{head}/{last.partition(':')[0]}"


def keep_match(refs: Sequence[str], patterns: Sequence[str]) -> str | None:
    """The first KEEP pattern that matches one of the references, or None.

    Patterns are shell-style (fnmatch, ``*`` also crosses ``/`` and ``:``) and matched against the
    fully qualified reference: ``busybox`` means ``docker.io/library/busybox`` and, having no tag,
    matches every tag of it; ``busybox:1.36`` only that tag; ``quay.io/jupyterhub/*`` everything under
    quay.io/jupyterhub. A pattern with a wildcard in its registry part (``*/jupyterhub/*``) is taken as
    written.
    """
    for pattern in patterns:
        registry = pattern.split("/", 1)[0] if "/" in pattern else ""
        if any(c in registry for c in "*?["):
            full = pattern
        else:
            full = normalize_reference(pattern)
            if "@" not in pattern and ":" not in pattern.rsplit("/", 1)[-1]:
                full = full.removesuffix(":latest") + "[:@]*"  # no tag given: any tag or digest
        if any(fnmatchcase(normalize_reference(ref), full) for ref in refs):
            return pattern
    return None


def plan_removals(
    images: Sequence[ImageRecord],
    bytes_to_free: float,
    keep: Sequence[str],
    min_age: float,
    now: float,
    *,
    ancestry: Mapping[str, str] | None = None,
    rank: Callable[[ImageRecord, float], float] = likely_needed,
) -> RemovalPlan:
    """Which images to remove, in order, to free ``bytes_to_free`` (``math.inf``: every one that may go).

    Never removed: an image a container uses; one created or pulled (``arrived``) less than ``min_age``
    seconds ago, which may still be being pushed or be about to start; one whose reference matches a
    ``keep`` pattern; and the ancestors of all of these (removing a parent only drops its tag while a
    child holds its layers). The rest go dangling first, then superseded (every repository it is
    tagged in has a newer image on the node), then by ``rank``, lowest first; children always before
    their parents. The plan ends with the removal whose unique bytes reach the target. Layers shared
    only by removed images are freed on top, so the plan may be longer than needed: the caller
    re-measures as it goes and stops early. When everything left must stay, the plan ends short of
    the target and ``skipped`` says why.

    ``ancestry`` adds parent links of images not in ``images`` (the untagged intermediates of the legacy
    builder), so that a chain through them is still followed.
    """
    by_id = {i.id: i for i in images}
    links = dict(ancestry or {})
    links.update((i.id, i.parent) for i in images if i.parent)

    def listed_ancestors(image_id: str) -> list[str]:
        found, parent, hops = [], links.get(image_id, ""), 0
        while parent and hops <= len(links):  # bounded: a corrupt cycle cannot hang the agent
            if parent in by_id:
                found.append(parent)
            parent, hops = links.get(parent, ""), hops + 1
        return found

    stays: dict[str, Skip] = {}
    for image in images:
        kept = keep_match(image.refs, keep)
        if image.in_use:
            stays[image.id] = Skip(image, "in use", "a container uses it")
        elif kept:
            stays[image.id] = Skip(image, "kept", f"matches KEEP pattern {kept!r}")
        elif now - arrived(image) < min_age:
            stays[image.id] = Skip(image, "too young", f"created or pulled {now - arrived(image):.0f} s "
                                   f"ago, less than MIN_AGE {min_age:.0f} s")
    for image in [i for i in images if i.id in stays]:
        for parent in listed_ancestors(image.id):
            if parent not in stays:
                stays[parent] = Skip(by_id[parent], "parent of an image that stays",
                                     f"{name(image)} stays ({stays[image.id].why})")

    newest: dict[str, float] = {}
    for image in images:
        for repo in {repository(r) for r in image.refs}:
            newest[repo] = max(newest.get(repo, image.created), image.created)
    candidates = [i for i in images if i.id not in stays]
    why: dict[str, tuple[int, str, str]] = {}
    for image in candidates:
        repos = {repository(r) for r in image.refs}
        if not repos:
            why[image.id] = (0, "dangling", "no reference: nobody can ask for it by name")
        elif all(newest[r] > image.created for r in repos):
            why[image.id] = (1, "superseded", "a newer image of " + ", ".join(sorted(repos)) + " is here")
        else:
            idle = now - seen(image)
            why[image.id] = (2, "least needed", f"{image.uses} uses, last {idle / 3600:.1f} h ago")

    # children before parents: an image becomes ready once every removable descendant has gone
    nearest: dict[str, str] = {}
    waiting: dict[str, int] = {i.id: 0 for i in candidates}
    for image in candidates:
        up = next((a for a in listed_ancestors(image.id) if a in waiting), "")
        if up:
            nearest[image.id] = up
            waiting[up] += 1

    def key(image: ImageRecord) -> tuple[int, float, float, str]:
        return (why[image.id][0], rank(image, now), image.created, image.id)

    ready = [(key(i), i.id) for i in candidates if waiting[i.id] == 0]
    heapq.heapify(ready)
    removals: list[Removal] = []
    planned = 0
    while ready and planned < bytes_to_free:
        _, image_id = heapq.heappop(ready)
        image = by_id[image_id]
        removals.append(Removal(image, why[image_id][1], why[image_id][2]))
        planned += image.unique
        up = nearest.get(image_id)
        if up:
            waiting[up] -= 1
            if waiting[up] == 0:
                heapq.heappush(ready, (key(by_id[up]), up))
    return RemovalPlan(tuple(removals), tuple(stays.values()))


def name(image: ImageRecord) -> str:
    return ", ".join(image.refs) or image.id[:19]
