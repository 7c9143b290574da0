"""Writing to the node: the journal before each step, the cordon, the hand-back, Events.

Every write reads the node, lets journal.py decide, and PATCHes conditionally on what the decision
read (a node changed meanwhile is read again and decided again), with timeouts clipped to the stop
bound. While a cycle holds the node a thread renews the journal, so that another agent on the node
(a rolling update's surge pod) sees this one alive and leaves the node to it. ``NoCluster`` stands in
when there is no node to write to, and says so in the log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

from . import journal, step
from .config import Config, ConfigError
from .journal import ANNOTATION, Busy, NodeBusy, NodeView, Patch
from .kube import CONNECT_TIMEOUT, EVENT_TIMEOUT, NodeGone
from .retry import short_error
from .shutdown import Shutdown

# A renewal's (connect, read) timeout: short, since the cycle's own next write waits for it.
RENEW_TIMEOUT = (2.0, 5.0)

log = logging.getLogger("fsm_cleaner")


class NodeApi(Protocol):
    """What a node writer needs of the Kubernetes API (kube.Kube; devtools.fakes.FakeNodeApi)."""

    node_name: str

    def read(self, timeout: tuple[float, float]) -> NodeView: ...

    def write(self, seen: NodeView, patch: Patch, timeout: tuple[float, float]) -> None: ...

    def event(self, reason: str, message: str, warning: bool, timeout: tuple[float, float]) -> None: ...


class Node(Protocol):
    """What the agent asks of the node, one method per state that writes to it."""

    handback_pending: bool  # we may have cordoned and not yet handed the node back

    def reconcile(self) -> None: ...

    def begin(self) -> None: ...  # journal the cycle's first step, before any cordon slot is taken

    def cordon(self, usage: str, slot: str = "") -> None: ...

    def journal(self, state: str) -> None: ...

    def uncordon(self) -> None: ...

    def cycle_succeeded(self) -> None: ...

    def cycle_failed(self, reason: str) -> None: ...

    def notice(self, reason: str, message: str) -> None: ...  # an Event on the node, best effort


@contextlib.contextmanager
def _node_must_exist(name: str) -> Iterator[None]:
    """At start-up a missing node is a wrong NODE_NAME: pruning without a node to cordon is not safe."""
    try:
        yield
    except step.StepFailed as e:
        if isinstance(e.__cause__, NodeGone):
            raise ConfigError(f"NODE_NAME={name!r}: no such node in the cluster; accepted: the name of an "
                              "existing node (`kubectl get nodes`; in a pod, spec.nodeName from the "
                              "downward API)") from None
        raise


def this_process() -> journal.Holder:
    """The pod (POD_NAME from the downward API, else the hostname) and a token for this process: two
    processes in one pod (a container restart) differ, and know each other as predecessor."""
    return journal.Holder(os.environ.get("POD_NAME") or socket.gethostname(), secrets.token_hex(4))


class NoCluster:
    """No node to write to: every step is a no-op that the log names (``why``: "no cluster", "dry run")."""

    handback_pending = False

    def __init__(self, why: str = "no cluster"):
        self.why = why

    def reconcile(self) -> None:
        log.info("no node name configured: no cluster to reconcile with")

    def begin(self) -> None:
        pass

    def cordon(self, usage: str, slot: str = "") -> None:
        log.info("%s: nothing to cordon", self.why)

    def journal(self, state: str) -> None:
        pass

    def uncordon(self) -> None:
        log.info("%s: nothing to uncordon", self.why)

    def cycle_succeeded(self) -> None:
        pass

    def cycle_failed(self, reason: str) -> None:
        pass

    def notice(self, reason: str, message: str) -> None:
        pass


class NodeWriter:
    def __init__(self, api: NodeApi, cfg: Config, shutdown: Shutdown, holder: journal.Holder | None = None):
        self.api = api
        self.cfg = cfg
        self.shutdown = shutdown
        self.me = holder or this_process()
        # We may have cordoned and not yet handed the node back, or we left another agent's journal
        # alone and must look again at the next tick (if that agent dies, its cordon is ours to undo).
        self.handback_pending = False
        self.journal_unreadable = False
        self._lock = threading.Lock()  # one node write at a time: the cycle's or the renewal's
        self._renewal: Renewal | None = None

    def reconcile(self) -> None:
        self.handback_pending = True  # until the release below has landed
        with _node_must_exist(self.api.node_name):
            self._release("Reconciling")

    def begin(self) -> None:
        self.handback_pending = True  # the journal is in progress from here: the hand-back resets it
        patch = self._write(journal.FIRST, lambda n: journal.begin(n, self.me, journal.now_rfc3339()))
        if patch is not None and self._renewal is None:  # the journal is ours now: keep it fresh
            self._renewal = Renewal(self)

    def cordon(self, usage: str, slot: str = "") -> None:
        self.handback_pending = True
        patch = self._write("Cordoning", lambda n: journal.cordon(n, self.me, journal.now_rfc3339(), slot))
        if patch is not None and self._renewal is None:
            self._renewal = Renewal(self)
        self._event("Cordoned" if patch and patch.unschedulable else "CleanupStarted",
                    f"fsm-cleaner: {patch.why if patch else 'unreadable journal: node left as it is'}; "
                    f"usage {usage}")

    def journal(self, state: str) -> None:
        self._write(state, lambda n: journal.advance(n, state, self.me, journal.now_rfc3339()))

    def uncordon(self) -> None:
        self._release("Uncordoning")

    def cycle_succeeded(self) -> None:
        """Replace an unreadable journal, now that a cycle of ours has succeeded."""
        if self.journal_unreadable:
            with contextlib.suppress(step.StepFailed):  # try again after the next cycle
                self._write("Idle", self._idle_journal)

    def cycle_failed(self, reason: str) -> None:
        self._event("CleanupFailed", f"fsm-cleaner cycle failed: {reason}", warning=True)

    def notice(self, reason: str, message: str) -> None:
        self._event(reason, message)

    def _timeout(self) -> tuple[float, float]:
        # A node write is tried even at the very end of the bound: it may be the uncordon.
        return self.shutdown.within_bound((CONNECT_TIMEOUT, self.cfg.api_timeout_seconds)) or (0.5, 0.5)

    def _event(self, reason: str, message: str, warning: bool = False) -> None:
        """Best effort, and within the stop bound: once stopping, the Event gets what time is left."""
        timeout = self.shutdown.within_bound(EVENT_TIMEOUT)
        if timeout is None:
            log.debug("no time left for event %s", reason)
            return
        self.api.event(reason, message, warning, timeout)

    def _write(self, name: str, decide: Callable[[NodeView], Patch | Busy | None],
               *, patient: bool = False) -> Patch | None:
        """Read the node, decide, write conditionally on what was read; a changed node re-reads.

        Another agent holding the node (Busy) fails the step: the cycle ends without acting.
        """
        def attempt() -> Patch | None:
            with self._lock:
                node = self.api.read(self._timeout())
                if node.journal_unreadable and not self.journal_unreadable:
                    log.error("unreadable %s annotation %s: no guessing; the node's schedulability is left "
                              "alone and the annotation kept until a cycle succeeds",
                              ANNOTATION, journal.excerpt(node.annotations[ANNOTATION]))
                    self.journal_unreadable = True
                decision = decide(node)
                if isinstance(decision, Busy):
                    raise NodeBusy(str(decision))
                if decision is not None:
                    self.api.write(node, decision, self._timeout())
                return decision

        try:
            patch = step.run(self.cfg, self.shutdown, name, attempt, patient=patient)
        except step.StepFailed as e:
            if isinstance(e.__cause__, NodeGone):  # nothing to hand back; the next cycle reads it again
                log.error("node %s not found (404): nothing to cordon or hand back; the next cycle reads "
                          "it again", self.api.node_name)
                self.handback_pending = False
            raise
        if patch is not None and ANNOTATION in patch.annotations:
            self.journal_unreadable = False
        return patch

    def _release(self, name: str) -> None:
        self._stop_renewal()
        left_alone: list[Busy] = []

        def decide(node: NodeView) -> Patch | None:
            decision = journal.release(node, self.me, journal.now_rfc3339())
            left_alone[:] = [decision] if isinstance(decision, Busy) else []
            return None if isinstance(decision, Busy) else decision

        patch = self._write(name, decide, patient=True)
        self.handback_pending = bool(left_alone)
        if left_alone:
            log.warning("%s: %s", name, left_alone[0])
        elif patch is not None:
            log.info("%s: %s", name, patch.why)
            reason = ("Uncordoned" if patch.unschedulable is False else "Reconciled" if name == "Reconciling"
                      else "CleanupDone")  # a cycle that had no cordon to undo (no slot, CORDON=false)
            self._event(reason, f"fsm-cleaner {name}: {patch.why}")

    def _stop_renewal(self) -> None:
        if self._renewal is not None:
            self._renewal.stopped.set()
            self._renewal = None

    def renew(self, stopped: threading.Event) -> bool:
        """One renewal of this cycle's journal, best effort; False when there is nothing left to renew."""
        timeout = self.shutdown.within_bound(RENEW_TIMEOUT)
        with self._lock:
            if stopped.is_set() or timeout is None:  # the hand-back has begun, or no time is left for it
                return False
            try:
                node = self.api.read(timeout)
                patch = journal.renew(node, self.me, journal.now_rfc3339())
                if patch is None:
                    log.warning("this cycle's journal is no longer on node %s: no more renewals (the cycle "
                                "ends at its next step)", self.api.node_name)
                    return False
                self.api.write(node, patch, timeout)
            except Exception as e:  # the next renewal may work; after STALE_SECONDS another agent takes over
                log.warning("could not renew the journal on node %s (%s); retrying in %d s",
                            self.api.node_name, short_error(e), journal.RENEW_SECONDS)
        return True

    def _idle_journal(self, node: NodeView) -> Patch:
        entry = journal.Journal("Idle", False, node.unschedulable, journal.now_rfc3339(), self.me.pod,
                                self.me.token)
        return Patch({ANNOTATION: entry.encode()}, why="journal Idle (replacing an unreadable one)")


class Renewal:
    """A thread that renews the journal every RENEW_SECONDS while a cycle holds the node: the main flow
    may sit in one Docker call for minutes (TIMEOUT_SECONDS), far longer than STALE_SECONDS."""

    def __init__(self, writer: NodeWriter):
        self.stopped = threading.Event()
        self._writer = writer
        threading.Thread(target=self._run, name="journal-renewal", daemon=True).start()

    def _run(self) -> None:
        while not self.stopped.wait(journal.RENEW_SECONDS):
            if not self._writer.renew(self.stopped):
                return


class DryRunNode:
    """A dry run never writes to the node (it may run beside a live agent): it reads the node and says
    what a real start would reconcile, and cordons nothing."""

    handback_pending = False

    def __init__(self, api: NodeApi, cfg: Config, shutdown: Shutdown):
        self.api, self.cfg, self.shutdown = api, cfg, shutdown
        self.stand_in = NoCluster("dry run")

    def reconcile(self) -> None:
        timeout = (CONNECT_TIMEOUT, self.cfg.api_timeout_seconds)
        with _node_must_exist(self.api.node_name):
            node = step.run(self.cfg, self.shutdown, "Reconciling", lambda: self.api.read(timeout))
        decision = journal.release(node, this_process(), journal.now_rfc3339())
        would = (f"nothing ({decision})" if isinstance(decision, Busy) else decision.why if decision
                 else "nothing")
        log.info("dry run: Reconciling would write: %s; the node is left as it is", would)

    def begin(self) -> None:
        pass

    def cordon(self, usage: str, slot: str = "") -> None:
        self.stand_in.cordon(usage)

    def journal(self, state: str) -> None:
        pass

    def uncordon(self) -> None:
        self.stand_in.uncordon()

    def cycle_succeeded(self) -> None:
        pass

    def cycle_failed(self, reason: str) -> None:
        pass

    def notice(self, reason: str, message: str) -> None:
        pass
