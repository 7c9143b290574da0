"""Pure decisions: is the disk too full, is it clean enough, which images go and in what order."""

from __future__ import annotations

from dataclasses import dataclass

from .config import Config


@dataclass(frozen=True)
class Image:
    id: str
    created: int  # seconds since the epoch
    size: int  # bytes, as Docker reports it (shared layers counted in each image)
    tags: tuple[str, ...] = ()


def above_high(usage: float, cfg: Config) -> bool:
    # At or above, as docker-image-cleaner did ("if used < threshold: sleep").
    return usage >= cfg.threshold_high


def clean_enough(usage: float, cfg: Config) -> bool:
    """Whether removing more can stop. Without THRESHOLD_LOW the old tool's rule: back under high."""
    if cfg.threshold_low is not None:
        return usage <= cfg.threshold_low
    return usage < cfg.threshold_high


def removal_order(images: list[Image], in_use: set[str]) -> list[Image]:
    """Images no container uses, oldest first (ties by id, so the order is stable)."""
    return sorted((i for i in images if i.id not in in_use), key=lambda i: (i.created, i.id))


def describe(usage: float, cfg: Config) -> str:
    if cfg.threshold_type == "relative":
        return f"{usage:.1f}%"
    return human_bytes(usage)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
