"""`fsm-cleaner status --all`: a line per node of the cluster from its journal, and the nodes that
fsm-cleaner has held cordoned for too long (a cron check, a runbook step). Pure: node views and the
time in, lines out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from .journal import ANNOTATION, LEGACY_ANNOTATION, JournalError, NodeView


@dataclass(frozen=True)
class Line:
    node: str
    state: str  # the journal's state; "none" without a journal, "UNREADABLE" when it cannot be read
    since: object  # as the journal has it (anyone who can patch the node wrote it); None: no journal
    age: float | None  # seconds since ``since``; None when it is not a time with a zone
    cordoned: str  # by whom: "fsm-cleaner", "docker-image-cleaner", "other", "unknown" (unreadable) or "no"
    slot: object  # the cordon budget's slot in the journal; None when it holds none
    last_result: object  # the last cycle's result, when the journal carries one
    held_for: float | None  # seconds held cordoned by fsm-cleaner, at least (inf: unknown); None: not held


def seconds_since(since: object, now: datetime) -> float | None:
    if not isinstance(since, str):
        return None
    try:
        then = datetime.fromisoformat(since.replace("Z", "+00:00"))
    except ValueError:
        return None
    return None if then.tzinfo is None else (now - then).total_seconds()


def line(node: NodeView, now: datetime) -> Line:
    """``now`` with a time zone. The journal's ``since`` is when its state began, so a node held in
    PruningAll since 10:00 has been cordoned since 10:00 at least."""
    other = "docker-image-cleaner" if LEGACY_ANNOTATION in node.annotations else "other"
    try:
        entry = node.journal()
    except JournalError:
        return Line(node.name, "UNREADABLE", None, None, "unknown" if node.unschedulable else "no",
                    None, None, None)
    if entry is None:
        return Line(node.name, "none", None, None, other if node.unschedulable else "no", None, None, None)
    extra = json.loads(node.annotations[ANNOTATION])  # decode() has read it: a small, flat object
    ours = node.unschedulable and entry.in_progress and entry.cordoned_by_us
    age = seconds_since(entry.since, now)
    return Line(node.name, entry.state, entry.since, age,
                "fsm-cleaner" if ours else other if node.unschedulable else "no",
                extra.get("slot"), extra.get("last_result"),
                (math.inf if age is None else age) if ours else None)


def held_too_long(lines: Iterable[Line], limit: float) -> list[Line]:
    """The nodes cordoned by fsm-cleaner for longer than ``limit`` seconds (or for an unknown time)."""
    return [x for x in lines if x.held_for is not None and x.held_for > limit]


def duration(seconds: float) -> str:
    """45s, 12m05s, 3h05m, 2d04h."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
