"""Writing to the node: the journal before each step, the cordon, the hand-back, Events.

Every write reads the node, lets journal.py decide, and PATCHes with a resourceVersion precondition
(a 409 re-reads and decides again), with timeouts clipped to the stop bound. ``NoCluster`` stands in
when there is no node to write to, and says so in the log.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Protocol

from . import journal, step
from .config import Config, ConfigError
from .journal import ANNOTATION, NodeView, Patch
from .kube import CONNECT_TIMEOUT, EVENT_TIMEOUT, NodeGone
from .shutdown import Shutdown

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

    def cordon(self, usage: str) -> None: ...

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


class NoCluster:
    """No node to write to: every step is a no-op that the log names (``why``: "no cluster", "dry run")."""

    handback_pending = False

    def __init__(self, why: str = "no cluster"):
        self.why = why

    def reconcile(self) -> None:
        log.info("no node name configured: no cluster to reconcile with")

    def cordon(self, usage: str) -> None:
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
    def __init__(self, api: NodeApi, cfg: Config, shutdown: Shutdown, holder: str | None = None):
        self.api = api
        self.cfg = cfg
        self.shutdown = shutdown
        self.holder = holder or socket.gethostname()
        self.handback_pending = False
        self.journal_unreadable = False

    def reconcile(self) -> None:
        self.handback_pending = True  # until the release below has landed
        with _node_must_exist(self.api.node_name):
            self._release("Reconciling")

    def cordon(self, usage: str) -> None:
        self.handback_pending = True
        patch = self._write("Cordoning", lambda n: journal.cordon(n, self.holder, journal.now_rfc3339()))
        self._event("Cordoned" if patch and patch.unschedulable else "CleanupStarted",
                    f"fsm-cleaner: {patch.why if patch else 'unreadable journal: node left as it is'}; "
                    f"usage {usage}")

    def journal(self, state: str) -> None:
        self._write(state, lambda n: journal.advance(n, state, self.holder, journal.now_rfc3339()))

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

    def _write(self, name: str, decide: Callable[[NodeView], Patch | None],
               *, patient: bool = False) -> Patch | None:
        """Read the node, decide, write with a resourceVersion precondition; a 409 re-reads."""
        def attempt() -> Patch | None:
            node = self.api.read(self._timeout())
            if node.journal_unreadable and not self.journal_unreadable:
                log.error("unreadable %s annotation %r: no guessing; the node's schedulability is left "
                          "alone and the annotation kept until a cycle succeeds",
                          ANNOTATION, node.annotations[ANNOTATION])
                self.journal_unreadable = True
            patch = decide(node)
            if patch is not None:
                self.api.write(node, patch, self._timeout())
            return patch

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
        patch = self._write(name, lambda n: journal.release(n, self.holder, journal.now_rfc3339()),
                            patient=True)
        self.handback_pending = False
        if patch is not None:
            log.info("%s: %s", name, patch.why)
            self._event("Uncordoned" if patch.unschedulable is False else "Reconciled",
                        f"fsm-cleaner {name}: {patch.why}")

    def _idle_journal(self, node: NodeView) -> Patch:
        entry = journal.Journal("Idle", False, node.unschedulable, journal.now_rfc3339(), self.holder)
        return Patch({ANNOTATION: entry.encode()}, why="journal Idle (replacing an unreadable one)")


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
        patch = journal.release(node, socket.gethostname(), journal.now_rfc3339())
        log.info("dry run: Reconciling would write: %s; the node is left as it is",
                 patch.why if patch else "nothing")

    def cordon(self, usage: str) -> None:
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
