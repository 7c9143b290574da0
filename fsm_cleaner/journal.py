"""The node annotation that journals what the agent is doing, and the decisions made from it.

Everything here is pure: it turns a plain view of the node into the patch to write. The Kubernetes
port makes the patch conditional on what the decision read (the journal and spec.unschedulable), so a
decision made on a stale view fails (``NodeChanged``) and is made again on a fresh read.

One agent at a time per node: a journal in progress names its holder (the pod) and the process
(``token``), and a live holder renews it at least every RENEW_SECONDS. Another pod's journal renewed
within STALE_SECONDS is left alone (``Busy``); an older one is a dead agent's and is taken over. The
same pod with another token is this pod's previous process (a container restart): reconciled at once.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone

ANNOTATION = "fsm-cleaner/state"
LEGACY_ANNOTATION = "hub.jupyter.org/image-cleaner-cordoned"  # docker-image-cleaner's marker
RESTING_STATES = frozenset({"Idle", "Measuring"})  # a journal in these holds nothing to undo
# A live holder rewrites its journal at every step and, in between (a long prune), at least this often.
RENEW_SECONDS = 15
# A journal in progress not renewed for this long is a dead agent's. Four missed renewals: a slow API
# server or a paused process does not lose the node, and a killed pod's cordon is handed back within a
# minute (plus INTERVAL_SECONDS) by its replacement. Both agents of a node read the same machine's clock.
STALE_SECONDS = 60


class JournalError(ValueError):
    """The annotation holds something this agent cannot read."""


class NodeChanged(RuntimeError):
    """The node changed between the read a decision was made on and the write: read and decide again."""


class NodeBusy(RuntimeError):
    """Another fsm-cleaner holds this node's journal: this agent's cycle does not act on the node."""


@dataclass(frozen=True)
class Holder:
    """Who writes a journal: the pod (POD_NAME, else the hostname) and this process's random token."""

    pod: str
    token: str


@dataclass(frozen=True)
class Journal:
    state: str
    cordoned_by_us: bool
    was_unschedulable: bool
    since: str  # RFC 3339, UTC
    holder: str = ""  # the pod that wrote it (POD_NAME, else the hostname)
    token: str = ""  # the process within that pod; empty in journals from before mutual exclusion
    renewed: str = ""  # RFC 3339, UTC: when the holder last showed it is alive; empty: use since
    slot: str = ""  # the cordon budget's Lease this cycle holds (empty: none, or none yet)

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
            token=data.get("token", ""),
            renewed=data.get("renewed", ""),
            slot=data["slot"] if isinstance(data.get("slot"), str) else "",  # shown only: never unreadable
        )
    except (ValueError, TypeError, KeyError) as e:
        raise unreadable(str(e)) from None
    if not (isinstance(journal.state, str) and isinstance(journal.cordoned_by_us, bool)
            and isinstance(journal.was_unschedulable, bool)):
        raise unreadable("wrong field types")
    return journal


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _time(value: object) -> datetime | None:
    """An RFC 3339 time with a zone, else None."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def is_fresh(entry: Journal, now: str) -> bool:
    """Renewed (or, in an older agent's journal, begun) within STALE_SECONDS of ``now``, either way: a
    clock stepped back does not make a live holder look dead, nor a dead one live for longer."""
    renewed, current = _time(entry.renewed or entry.since), _time(now)
    return renewed is not None and current is not None and \
        abs((current - renewed).total_seconds()) <= STALE_SECONDS


def claim(entry: Journal, me: Holder, now: str) -> str:
    """Whose a journal in progress is, from ``me``'s view: "mine" (this process), "predecessor" (this pod's
    previous process: a container restart), "live" (another pod, renewing it), "stale" (another pod that
    stopped renewing it: dead)."""
    if entry.holder == me.pod:
        return "mine" if entry.token == me.token else "predecessor"
    return "live" if is_fresh(entry, now) else "stale"


def _shown(value: object, limit: int = 80) -> str:
    """A journal field for a log line: escaped (no terminal control sequences) and bounded."""
    return str(value).encode("unicode_escape").decode("ascii")[:limit]


@dataclass(frozen=True)
class Busy:
    """Another fsm-cleaner holds the node: nothing is written, and this agent's cycle does not act."""

    why: str

    def __str__(self) -> str:
        return self.why

    @classmethod
    def held_by(cls, entry: Journal) -> Busy:
        renewed = f", renewed {_shown(entry.renewed, 40)}" if entry.renewed else ""
        return cls(f"another fsm-cleaner (holder {_shown(entry.holder)}) is cleaning this node since "
                   f"{_shown(entry.since, 40)} ({_shown(entry.state, 40)}{renewed}); skipping this cycle")


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


def _entry(state: str, ours: bool, was: bool, me: Holder, now: str, slot: str = "") -> Journal:
    return Journal(state, cordoned_by_us=ours, was_unschedulable=was, since=now, holder=me.pod,
                   token=me.token, renewed=now, slot=slot)


# The first state of a cycle, journaled before a cordon slot is taken: it holds the node (another
# agent on it leaves it alone) and tells the next start to free the slot, but no cordon yet.
FIRST = "TakingSlot"


def begin(node: NodeView, me: Holder, now: str) -> Patch | Busy | None:
    """Begin a cycle: journal TakingSlot, unless another pod's live journal holds the node (Busy). A
    journal in progress left by a dead agent is taken over as it is, cordon record and all, so that
    the hand-back still undoes that agent's cordon."""
    if node._left_as_found():
        return None
    current = node._current()
    if current is not None and current.in_progress:
        if claim(current, me, now) == "live":
            return Busy.held_by(current)
        entry = _entry(FIRST, current.cordoned_by_us, current.was_unschedulable, me, now)
    else:
        entry = _entry(FIRST, False, node.unschedulable, me, now)
    return Patch({ANNOTATION: entry.encode()}, why=f"journal {FIRST}")


def cordon(node: NodeView, me: Holder, now: str, slot: str = "") -> Patch | Busy | None:
    """Enter Cordoning: cordon unless someone else already did, and journal whose cordon it is.

    A journal already in progress here is this cycle's own earlier attempt, which landed although
    its reply was lost (a timeout), or a dead agent's (this pod's previous process, or another pod's
    stale one): its record of whose cordon it is stands, or the retry would take an fsm-cleaner cordon
    for an administrator's and leave the node cordoned after the cycle. Another pod's live journal:
    Busy. The write is conditional on the journal as read, so of two agents cordoning at once one wins.
    """
    if node._left_as_found():
        return None
    current = node._current()
    if current is not None and current.in_progress and claim(current, me, now) == "live":
        return Busy.held_by(current)
    if current is not None and current.in_progress and (current.cordoned_by_us or current.state != FIRST):
        ours, was = current.cordoned_by_us, current.was_unschedulable
    else:  # no cordon decided yet in this cycle (its journal says TakingSlot, or there is none)
        ours, was = not node.unschedulable, node.unschedulable
    entry = _entry("Cordoning", ours, was, me, now, slot)
    take = ours and not node.unschedulable
    return Patch({ANNOTATION: entry.encode()}, unschedulable=True if take else None,
                 why="cordon" if take else "our cordon already in place" if ours
                 else "node already unschedulable: left as it is")


def advance(node: NodeView, state: str, me: Holder, now: str) -> Patch | Busy | None:
    """Journal the next step of a cycle, keeping who owns the cordon.

    The journal must still be this cycle's: if another agent has taken the node over (it found this
    process's journal stale) or someone reset it, Busy ends the cycle before its next step.
    """
    if node._left_as_found():
        return None
    current = node._current()
    if current is not None and current.in_progress and claim(current, me, now) == "live":
        return Busy.held_by(current)
    if current is None or not current.in_progress or claim(current, me, now) != "mine":
        now_there = ("unreadable" if node.journal_unreadable else "none" if current is None
                     else f"{_shown(current.state, 40)} by {_shown(current.holder)}")
        return Busy(f"this cycle's journal is no longer on the node (journal now: {now_there}): the node "
                    "was taken over or reset; ending this cycle")
    entry = _entry(state, current.cordoned_by_us, current.was_unschedulable, me, now, current.slot)
    return Patch({ANNOTATION: entry.encode()}, why=f"journal {state}")


def renew(node: NodeView, me: Holder, now: str) -> Patch | None:
    """Show that this process is alive: the same journal, renewed now; None when it is not ours."""
    current = node._current()
    if current is None or not current.in_progress or claim(current, me, now) != "mine":
        return None
    return Patch({ANNOTATION: replace(current, renewed=now).encode()}, why="renew")


def release(node: NodeView, me: Holder, now: str) -> Patch | Busy | None:
    """Hand the node back as it was before the cycle; None when there is nothing to write.

    Used both at the end of a cycle and on startup to clean up after a process that died mid-cycle
    (or after docker-image-cleaner, whose annotation means it cordoned the node). Another pod's live
    journal is left alone (Busy): that agent is cleaning the node and hands it back itself.
    """
    if node.journal_unreadable:
        return None  # do not guess: the caller logs the raw value and leaves the node alone
    journal = node.journal()
    if journal is not None and journal.in_progress and claim(journal, me, now) == "live":
        return Busy.held_by(journal)
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
        elif journal.was_unschedulable:
            reasons.append(f"cycle in {journal.state} ended; the node was unschedulable before it: left so")
        else:
            reasons.append(f"cycle in {journal.state} ended; it had not cordoned the node")
        if claim(journal, me, now) == "stale":
            reasons.append(f"taken over from holder {_shown(journal.holder)}, not renewed since "
                           f"{_shown(journal.renewed or journal.since, 40)} (dead after {STALE_SECONDS} s)")
    if not annotations:
        return None
    if ANNOTATION in annotations:
        annotations[ANNOTATION] = Journal("Idle", cordoned_by_us=False, since=now, holder=me.pod,
                                          token=me.token,
                                          was_unschedulable=node.unschedulable and not uncordon).encode()
    return Patch(annotations, unschedulable=False if uncordon else None, why="; ".join(reasons))
