"""Pure decisions: is the disk too full, is it clean enough, which images go and in what order."""

from __future__ import annotations

from .config import Config
from .runtime import Image


def above_high(usage: float, cfg: Config) -> bool:
    # At or above, as docker-image-cleaner did ("if used < threshold: sleep").
    return usage >= cfg.threshold_high


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

