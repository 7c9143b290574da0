"""The BuildKit build cache: its entries as the runtime lists them, and which of them a prune removes.

``prunable`` decides as BuildKit's own prune does (moby 20.10, buildkit cache manager, checked on the
test bed): only entries no build uses, that no image shares and that are not BuildKit's internal or
frontend records; none used less than ``min_age`` seconds ago; and with a budget, least recently used
first until what is left fits. The dry run reports what it returns; the real prune is the daemon's.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

# Records BuildKit keeps for itself (the Dockerfile frontend, its internal state); a prune without
# --all leaves them, and so do we.
_KEPT_TYPES = frozenset({"internal", "frontend"})


@dataclass(frozen=True)
class CacheEntry:
    id: str
    size: int  # bytes
    last_used: float | None  # seconds since the epoch; None: never used
    in_use: bool = False  # a build (or a child entry) holds it
    shared: bool = False  # its layers belong to an image too: removing it frees nothing
    type: str = "regular"  # regular, source.local, exec.cachemount, internal, frontend...
    parents: tuple[str, ...] = ()


def prunable(entries: list[CacheEntry], now: float, min_age: float, keep_bytes: int) -> list[CacheEntry]:
    """The entries a prune with ``until=min_age`` and ``keep_bytes`` would remove, in removal order.

    A parent is held by its children (the daemon lists it in use), so it goes only once every child
    goes; ``keep_bytes`` 0 means no budget: every entry old enough goes.
    """
    total = sum(e.size for e in entries if not e.shared)
    if keep_bytes and total <= keep_bytes:
        return []
    children: dict[str, set[str]] = {}
    for e in entries:
        for parent in e.parents:
            children.setdefault(parent, set()).add(e.id)

    def free(e: CacheEntry) -> bool:  # free to go once its children have gone
        held = e.in_use and not children.get(e.id)
        old = e.last_used is None or now - e.last_used >= min_age
        return not held and not e.shared and e.type not in _KEPT_TYPES and old

    candidates = {e.id: e for e in entries if free(e)}
    left = {e.id: len(children.get(e.id, ())) for e in candidates.values()}  # children not yet gone
    ready = [(e.last_used or 0.0, e.id) for e in candidates.values() if not left[e.id]]
    heapq.heapify(ready)
    order: list[CacheEntry] = []
    while ready and not (keep_bytes and total <= keep_bytes):
        entry = candidates[heapq.heappop(ready)[1]]
        order.append(entry)
        total -= entry.size
        for parent in entry.parents:
            if parent in left:
                left[parent] -= 1
                if not left[parent]:
                    heapq.heappush(ready, (candidates[parent].last_used or 0.0, parent))
    return order
