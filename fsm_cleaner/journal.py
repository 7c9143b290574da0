"""The node annotation that journals what the agent is doing, and the decisions made from it.

Everything here is pure: it turns a plain view of the node into the patch to write. The Kubernetes
port applies the patch with a resourceVersion precondition, so a decision made on a stale view fails
with 409 and is made again on a fresh read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

ANNOTATION = "fsm-cleaner/state"
LEGACY_ANNOTATION = "hub.jupyter.org/image-cleaner-cordoned"  # docker-image-cleaner's marker
RESTING_STATES = frozenset({"Idle", "Measuring"})  # a journal in these holds nothing to undo


class JournalError(ValueError):
    """The annotation holds something this agent cannot read."""


@dataclass(frozen=True)
class Journal:
    state: str
    cordoned_by_us: bool
    was_unschedulable: bool
    since: str  # RFC 3339, UTC
    holder: str = ""  # the pod (hostname) that wrote it, for the on-call engineer

    def encode(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @property
    def in_progress(self) -> bool:
        return self.state not in RESTING_STATES


# Ours is a flat object of ~150 characters. Anything much bigger or deeper is not ours: refusing it
# before json.loads keeps a hostile annotation from costing memory or a RecursionError (near depth 1000).
MAX_CHARS = 4096
MAX_DEPTH = 4
EXCERPT_CHARS = 80


def excerpt(raw: str) -> str:
    """A bounded, escaped excerpt of an annotation, for logs and messages."""
    if len(raw) <= EXCERPT_CHARS:
        return repr(raw)
    return f"{raw[:EXCERPT_CHARS]!r}... ({len(raw)} characters)"


def _depth(raw: str) -> int:
    """How deeply arrays and objects nest in a JSON text; brackets inside strings do not count."""
    depth = deepest = 0
    in_string = escaped = False
    for char in raw:
        if escaped:
            escaped = False
        elif in_string:
            escaped = char == "\\"
            in_string = char != '"'
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def decode(raw: str) -> Journal:
    def unreadable(why: str) -> JournalError:
        return JournalError(f"unreadable {ANNOTATION} annotation {excerpt(raw)}: {why[:120]}")

    if len(raw) > MAX_CHARS:
        raise unreadable(f"longer than {MAX_CHARS} characters")
    if _depth(raw) > MAX_DEPTH:
        raise unreadable(f"nested deeper than {MAX_DEPTH}")
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        journal = Journal(
            state=data["state"],
            cordoned_by_us=data["cordoned_by_us"],
            was_unschedulable=data["was_unschedulable"],
            since=data["since"],
            holder=data.get("holder", ""),
        )
    except (ValueError, TypeError, KeyError) as e:
        raise unreadable(str(e)) from None
    if not (isinstance(journal.state, str) and isinstance(journal.cordoned_by_us, bool)
            and isinstance(journal.was_unschedulable, bool)):
        raise unreadable("wrong field types")
    return journal


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class NodeView:
    """What the decisions need to know of a node."""

    name: str
    resource_version: str
    unschedulable: bool
    annotations: dict[str, str] = field(default_factory=dict)

    def journal(self) -> Journal | None:
        """The journal, None when absent; raises JournalError when unreadable."""
        raw = self.annotations.get(ANNOTATION)
        return None if raw is None else decode(raw)

    @property
    def journal_unreadable(self) -> bool:
        try:
            self.journal()
        except JournalError:
            return True
        return False

    def _left_as_found(self) -> bool:
        # An unreadable journal on an unschedulable node: whose cordon it is cannot be known, so no
        # decision here writes to the node (a cycle then cordons nothing and has nothing to journal).
        return self.unschedulable and self.journal_unreadable

    def _current(self) -> Journal | None:
        return None if self.journal_unreadable else self.journal()


@dataclass(frozen=True)
class Patch:
    """One write to the node: ``unschedulable`` None leaves spec alone; an annotation value None deletes."""

    annotations: dict[str, str | None]
    unschedulable: bool | None = None
    why: str = ""


def cordon(node: NodeView, holder: str, since: str) -> Patch | None:
    """Enter Cordoning: cordon unless someone else already did, and journal whose cordon it is.

    A journal already in progress here is this cycle's own earlier attempt, which landed although
    its reply was lost (a timeout): its record of whose cordon it is stands, or the retry would take
    our own cordon for an administrator's and leave the node cordoned after the cycle.
    """
    if node._left_as_found():
        return None
    current = node._current()
    if current is not None and current.in_progress:
        ours, was = current.cordoned_by_us, current.was_unschedulable
    else:
        ours, was = not node.unschedulable, node.unschedulable
    entry = Journal("Cordoning", cordoned_by_us=ours, was_unschedulable=was, since=since, holder=holder)
    take = ours and not node.unschedulable
    return Patch({ANNOTATION: entry.encode()}, unschedulable=True if take else None,
                 why="cordon" if take else "our cordon already in place" if ours
                 else "node already unschedulable: left as it is")


def advance(node: NodeView, state: str, holder: str, since: str) -> Patch | None:
    """Journal the next step of a cycle, keeping who owns the cordon."""
    if node._left_as_found():
        return None
    current = node._current()
    ours = bool(current and current.cordoned_by_us)
    was = current.was_unschedulable if current else node.unschedulable
    entry = Journal(state, cordoned_by_us=ours, was_unschedulable=was, since=since, holder=holder)
    return Patch({ANNOTATION: entry.encode()}, why=f"journal {state}")


def release(node: NodeView, holder: str, since: str) -> Patch | None:
    """Hand the node back as it was before the cycle; None when there is nothing to write.

    Used both at the end of a cycle and on startup to clean up after a process that died mid-cycle
    (or after docker-image-cleaner, whose annotation means it cordoned the node).
    """
    if node.journal_unreadable:
        return None  # do not guess: the caller logs the raw value and leaves the node alone
    journal = node.journal()
    annotations: dict[str, str | None] = {}
    uncordon = False
    reasons = []
    if LEGACY_ANNOTATION in node.annotations:
        annotations[LEGACY_ANNOTATION] = None
        uncordon = node.unschedulable
        reasons.append("docker-image-cleaner's cordon" + (" undone" if uncordon else " already undone"))
    if journal is not None and journal.in_progress:
        annotations[ANNOTATION] = ""  # filled in below, once the uncordon is decided
        if journal.cordoned_by_us and not journal.was_unschedulable:
            uncordon = uncordon or node.unschedulable
            reasons.append(f"our cordon from {journal.state}"
                           + (" undone" if node.unschedulable else " already undone by someone"))
        else:
            reasons.append(f"cycle in {journal.state} ended; the node was unschedulable before it: left so")
    if not annotations:
        return None
    if ANNOTATION in annotations:
        annotations[ANNOTATION] = Journal("Idle", cordoned_by_us=False, since=since, holder=holder,
                                          was_unschedulable=node.unschedulable and not uncordon).encode()
    return Patch(annotations, unschedulable=False if uncordon else None, why="; ".join(reasons))
