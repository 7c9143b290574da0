"""The cluster-wide cordon budget: at most MAX_CORDONED nodes cordoned by fsm-cleaner at once.

One Lease per slot (``fsm-cleaner-slot-0`` ... ``-N-1``) in the agent's namespace; its holderIdentity is
the node's name. One object per slot keeps each write small and contended only by the agents after
that slot, lets ``kubectl get leases`` show who holds what, and lets a slot whose holder died free
itself: a Lease not renewed for its leaseDurationSeconds is free again. Every write is conditional on
the resourceVersion read (create: on the name being free), so of two agents after one slot one wins
(409) and the loser decides again on a fresh list.

The decisions (``choose``) are pure; ``CordonBudget`` is the port the TakingSlot and Uncordoning states
use, with stand-ins for no cluster, a dry run and CORDON=false chosen once in the CLI.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Protocol

from . import step
from .config import Config
from .retry import short_error
from .shutdown import Shutdown

log = logging.getLogger("fsm_cleaner")
PREFIX = "fsm-cleaner-slot-"
# How often a held slot is renewed: a few renewals fit in a lease duration, so one slow API answer does
# not free a slot whose holder is alive.
RENEWALS_PER_LEASE = 4
RENEW_EVERY_MAX = 15.0
# Conflicts (409) in a row before TakingSlot settles for "no slot free" this tick: each one means
# another agent took the slot just chosen, so the budget is being filled right now.
MAX_CONFLICTS = 5


class SlotConflict(RuntimeError):
    """The Lease changed since it was read (409): another agent wrote it first."""


@dataclass(frozen=True)
class Lease:
    """What the decisions need of one slot's Lease."""

    name: str
    holder: str  # the node holding the slot; "" when free
    renewed: datetime | None  # when the holder last renewed it (spec.renewTime)
    duration: float  # seconds (spec.leaseDurationSeconds) after which an unrenewed slot is free
    resource_version: str = ""  # "" for a slot whose Lease does not exist yet
    transitions: int = 0
    acquired: datetime | None = None  # when the holder took it

    def live(self, now: datetime) -> bool:
        return bool(self.holder) and self.renewed is not None and now - self.renewed < timedelta(
            seconds=self.duration)


@dataclass(frozen=True)
class Choice:
    """``take``: the Lease to write (already ours: ``held``); None with ``holders``: the budget is full."""

    take: Lease | None
    holders: tuple[str, ...] = ()
    held: bool = False


def budget_size(max_cordoned: float, percent: bool, nodes: int) -> int:
    """The number of slots: a count, or a percentage of the nodes the agent runs on, at least 1."""
    return max(1, math.floor(nodes * max_cordoned / 100) if percent else int(max_cordoned))


def choose(leases: list[Lease], size: int, me: str, now: datetime, duration: float) -> Choice:
    """The slot ``me`` may take now. Live slots are counted whatever their index, so a budget that
    shrank (fewer nodes) is not exceeded by the slots held above the new size."""
    live = [lease for lease in leases if lease.live(now)]
    for lease in live:
        if lease.holder == me:  # this node's own (a restart before Reconciling freed it): take it again
            return Choice(_holding(lease, me, now, duration), held=True)
    if len(live) >= size:
        return Choice(None, tuple(sorted(lease.holder for lease in live)))
    by_name = {lease.name: lease for lease in leases}
    for i in range(size):
        lease = by_name.get(f"{PREFIX}{i}")
        if lease is None:
            return Choice(Lease(f"{PREFIX}{i}", me, now, duration, "", 0, now))
        if not lease.live(now):
            return Choice(_holding(lease, me, now, duration))
    return Choice(None, tuple(sorted(lease.holder for lease in live)))


def _holding(lease: Lease, me: str, now: datetime, duration: float) -> Lease:
    changed = lease.holder != me
    return replace(lease, holder=me, renewed=now, duration=duration, transitions=lease.transitions + changed,
                   acquired=now if changed else lease.acquired)


@dataclass(frozen=True)
class Grant:
    """What TakingSlot decided: cordon the node (holding ``slot``) or not, and whether image removals
    (PruningAll) may run; ``notice`` is said in the log and an Event when the node cleans uncordoned."""

    cordon: bool
    images: bool
    slot: str = ""
    notice: str = ""


class Slots(Protocol):
    """What the agent asks of the cordon budget (CordonBudget, or a stand-in)."""

    def take(self, critical: bool, usage: str) -> Grant: ...

    def release(self) -> None: ...


class LeaseApi(Protocol):
    """What the budget needs of the API (kube.Kube; devtools.fakes.FakeNodeApi)."""

    def slot_leases(self, timeout: tuple[float, float]) -> list[Lease]: ...

    def put_lease(self, lease: Lease, timeout: tuple[float, float]) -> None: ...  # SlotConflict on 409

    def daemonset_nodes(self, timeout: tuple[float, float]) -> int: ...  # nodes the DaemonSet runs on


def _now() -> datetime:
    return datetime.now(timezone.utc)


class CordonBudget:
    """Takes, renews and frees this node's slot."""

    def __init__(self, api: LeaseApi, cfg: Config, shutdown: Shutdown, me: str):
        # No lock between the renewal thread and the cycle: every write is conditional on the
        # resourceVersion it read, so a renewal racing a release fails (409) and stops at its next look.
        self.api, self.cfg, self.shutdown, self.me = api, cfg, shutdown, me
        self._renewal: threading.Event | None = None
        self.waiting_since: datetime | None = None  # the first tick that found no slot free

    def _timeout(self) -> tuple[float, float]:
        return self.shutdown.within_bound((5.0, self.cfg.api_timeout_seconds)) or (0.5, 0.5)

    def _size(self) -> int:
        if not self.cfg.max_cordoned_percent:
            return budget_size(self.cfg.max_cordoned, False, 0)
        return budget_size(self.cfg.max_cordoned, True, self.api.daemonset_nodes(self._timeout()))

    def take(self, critical: bool, usage: str) -> Grant:
        def attempt() -> Choice:
            size = self._size()
            for _ in range(MAX_CONFLICTS):
                choice = choose(self.api.slot_leases(self._timeout()), size, self.me, _now(),
                                self.cfg.slot_lease_seconds)
                if choice.take is None:
                    return choice
                try:
                    self.api.put_lease(choice.take, self._timeout())
                    return choice
                except SlotConflict:
                    log.info("TakingSlot: %s was taken by another node first; looking again",
                             choice.take.name)
            return Choice(None)  # other nodes are filling the budget right now: none for this one

        choice = step.run(self.cfg, self.shutdown, "TakingSlot", attempt)
        if choice.take is not None:
            waited = f" after waiting {(_now() - self.waiting_since).total_seconds():.0f} s" \
                if self.waiting_since else ""
            log.info("TakingSlot: holding %s%s (usage %s)", choice.take.name, waited, usage)
            self.waiting_since = None
            self._renew(choice.take)
            return Grant(cordon=True, images=True, slot=choice.take.name)
        self.waiting_since = self.waiting_since or _now()
        full = (f"no cordon slot free ({len(choice.holders)} held, by {', '.join(choice.holders)})"
                if choice.holders else f"no cordon slot free (other nodes took them, {MAX_CONFLICTS} times "
                "in a row, as this one tried)")
        if critical:
            return Grant(cordon=False, images=True, notice=(
                f"{full}, and usage {usage} is above CRITICAL_THRESHOLD: cleaning without a cordon "
                "rather than let the disk fill up"))
        log.info("TakingSlot: %s: cleaning what needs no cordon; image removals wait for a slot (next "
                 "try in %g s)", full, self.cfg.interval_seconds)
        return Grant(cordon=False, images=False)

    def release(self) -> None:
        """Free this node's slot (all of them, should a crash have left more than one): after the
        uncordon has landed, and at start-up after Reconciling."""
        self._stop_renewal()

        def attempt() -> list[str]:
            freed: list[str] = []
            for _ in range(MAX_CONFLICTS):
                try:
                    for lease in self.api.slot_leases(self._timeout()):
                        if lease.holder == self.me and lease.name not in freed:
                            self.api.put_lease(replace(lease, holder="", renewed=None, acquired=None),
                                               self._timeout())
                            freed.append(lease.name)
                    return freed
                except SlotConflict:  # written since the list (a renewal in flight): list again
                    continue
            raise SlotConflict("the slot kept changing while it was being freed")

        try:
            freed = step.run(self.cfg, self.shutdown, "releasing the cordon slot", attempt)
        except step.StepFailed as e:  # not the node's problem: the slot frees itself, unrenewed
            log.warning("%s; the slot frees itself %g s after its last renewal", e,
                        self.cfg.slot_lease_seconds)
            return
        if freed:
            log.info("cordon slot %s freed", ", ".join(freed))

    def _renew(self, lease: Lease) -> None:
        self._stop_renewal()
        stopped = self._renewal = threading.Event()
        every = min(RENEW_EVERY_MAX, self.cfg.slot_lease_seconds / RENEWALS_PER_LEASE)
        threading.Thread(target=self._renewing, args=(lease.name, stopped, every), name="slot-renewal",
                         daemon=True).start()

    def _renewing(self, name: str, stopped: threading.Event, every: float) -> None:
        while not stopped.wait(every):
            try:
                mine = [lease for lease in self.api.slot_leases(self._timeout())
                        if lease.name == name and lease.holder == self.me]
                if stopped.is_set():  # released meanwhile
                    return
                if not mine:
                    log.warning("cordon slot %s is no longer held by this node: no more renewals", name)
                    return
                self.api.put_lease(replace(mine[0], renewed=_now()), self._timeout())
            except Exception as e:  # the next renewal may work; the lease outlives a few failures
                if stopped.is_set():  # lost the race with the release (409): nothing to say
                    return
                log.warning("could not renew cordon slot %s (%s); retrying in %g s", name, short_error(e),
                            every)

    def _stop_renewal(self) -> None:
        if self._renewal is not None:
            self._renewal.set()
            self._renewal = None


class Unlimited:
    """No budget to keep: no cluster (nothing is cordoned) or a dry run (which says what it would do)."""

    def __init__(self, why: str = "no cluster"):
        self.why = why

    def take(self, critical: bool, usage: str) -> Grant:
        if self.why != "no cluster":
            log.info("%s: no cordon slot taken", self.why)
        return Grant(cordon=True, images=True)

    def release(self) -> None:
        pass


class NeverCordon:
    """CORDON=false: every cycle cleans with the node schedulable, images included."""

    def take(self, critical: bool, usage: str) -> Grant:
        log.info("TakingSlot: CORDON=false: cleaning without a cordon")
        return Grant(cordon=False, images=True)

    def release(self) -> None:
        pass
