"""The model the state machine drives: one on_enter_<State> per state, the run loop, signals."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from transitions import MachineError

from . import disk, journal, machine, plan
from .config import Config
from .docker_runtime import Docker, Removed
from .journal import ANNOTATION, NodeView, Patch
from .kube import EVENT_TIMEOUT, REQUEST_TIMEOUT, Kube, NodeGone
from .retry import policy, short_error

log = logging.getLogger("fsm_cleaner")
T = TypeVar("T")


class StepFailed(Exception):
    """A state's side effect failed for good (retries exhausted, or not retryable)."""


class StopRequested(BaseException):
    """SIGTERM/SIGINT arrived while a Docker call or a measurement was in flight.

    A BaseException so that no `except Exception` (ours, tenacity's, the SDK's) swallows it.
    """


@dataclass
class Cycle:
    started: float = field(default_factory=time.monotonic)
    before: disk.FsStats | None = None
    usage: float = 0.0
    first_usage: float = 0.0
    containers: int = 0
    images: int = 0
    reported_bytes: int = 0  # what Docker says it freed (or would free, in a dry run)
    cordoned_at: float | None = None
    cordon_seconds: float = 0.0
    dangling_found: bool = False
    failed: str | None = None
    stopped: bool = False  # cut short by SIGTERM/SIGINT


class Agent:
    def __init__(self, cfg: Config, docker: Docker, kube: Kube | None):
        self.cfg = cfg
        self.docker = docker
        self.kube = kube
        self.holder = socket.gethostname()
        self.cycle = Cycle()
        self.owes_uncordon_flag = False  # we may have cordoned and not yet handed the node back
        self.journal_unreadable = False
        self.stop_deadline: float | None = None
        self._stop = threading.Event()
        self._interruptible = False
        self._entered = time.monotonic()
        self.machine = machine.build(self, before_state_change="_on_transition")
        self.state: str  # set by transitions

    # --- conditions (named after what they check) ---------------------------------------------
    def above_high_threshold(self, _: Any = None) -> bool:
        return plan.above_high(self.cycle.usage, self.cfg)

    def dangling_freed_enough(self, _: Any = None) -> bool:
        return self.cycle.dangling_found and plan.clean_enough(self.cycle.usage, self.cfg)

    def owes_uncordon(self, _: Any = None) -> bool:
        return self.owes_uncordon_flag

    def stopping(self, _: Any = None) -> bool:
        return self._stop.is_set()

    # --- states -------------------------------------------------------------------------------
    def on_enter_Reconciling(self, _: Any) -> None:
        if self.kube is None:
            log.info("no node name configured: no cluster to reconcile with")
            return
        self.owes_uncordon_flag = True  # until the release below has landed
        self._release("Reconciling")

    def on_enter_Measuring(self, _: Any) -> None:
        self.cycle = Cycle()
        self.cycle.before = self._do("Measuring", lambda: disk.fs_stats(self.cfg.path_to_check))
        relative = self.cfg.threshold_type == "relative"
        self.cycle.usage = self.cycle.first_usage = self.cycle.before.percent if relative else self._measure()
        log.info("usage of %s: %s (high threshold %s%s)", self.cfg.path_to_check,
                 plan.describe(self.cycle.usage, self.cfg), plan.describe(self.cfg.threshold_high, self.cfg),
                 "" if self.cfg.threshold_low is None
                 else f", target {plan.describe(self.cfg.threshold_low, self.cfg)}")
        if self.above_high_threshold():  # no cordon for a Docker daemon that cannot prune anyway
            self._docker("Measuring", self.docker.ping)

    def on_enter_Cordoning(self, _: Any) -> None:
        self.cycle.cordoned_at = time.monotonic()
        if self.kube is None or self.cfg.dry_run:
            log.info("%s: nothing to cordon", "dry run" if self.cfg.dry_run else "no cluster")
            return
        self.owes_uncordon_flag = True
        patch = self._write_node("Cordoning", lambda n: journal.cordon(n, self.holder, journal.now_rfc3339()))
        self._event("Cordoned" if patch and patch.unschedulable else "CleanupStarted",
                    f"fsm-cleaner: {patch.why if patch else 'unreadable journal: node left as it is'}; "
                    f"usage {plan.describe(self.cycle.usage, self.cfg)}")

    def on_enter_PruningContainers(self, _: Any) -> None:
        self._journal_step("PruningContainers")
        prune = self.docker.stopped_containers if self.cfg.dry_run else self.docker.prune_containers
        found = self._docker("PruningContainers", prune)
        self._tally(found, f"{found.count} stopped containers", containers=True)

    def on_enter_PruningDangling(self, _: Any) -> None:
        self._journal_step("PruningDangling")
        if self.cfg.dry_run:
            images = self._docker("PruningDangling", self.docker.dangling_images)
            found = Removed(len(images), sum(i.size for i in images))
        else:
            found = self._docker("PruningDangling", self.docker.prune_dangling)
        self._tally(found, f"{found.count} dangling images")
        self.cycle.dangling_found = found.count > 0
        self.cycle.usage = self._measure()

    def on_enter_PruningAll(self, _: Any) -> None:
        self._journal_step("PruningAll")
        images, in_use, parents = self._docker("PruningAll", lambda: (
            self.docker.images(), self.docker.images_in_use(), self.docker.image_parents()))
        order = plan.removal_order(images, in_use, parents)
        low = self.cfg.threshold_low
        log.info("%d of %d images can go; removing children before parents, oldest first, %s",
                 len(order), len(images),
                 "until usage is at or below the target" if low is not None
                 else "all of them (THRESHOLD_LOW unset, as docker-image-cleaner did)")
        for n, image in enumerate(order):
            if low is not None and plan.clean_enough(self.cycle.usage, self.cfg):
                break
            if n and self.cfg.delay_seconds:
                self._pause(self.cfg.delay_seconds)
            name = ", ".join(image.tags) or image.id[:19]
            if not self.cfg.dry_run:
                kept = self._docker("PruningAll", lambda image=image: self.docker.remove_image(image))
                if kept:
                    log.info("kept image %s: %s", name, kept)
                    continue
            self._tally(Removed(1, image.size), f"image {name}")
            self.cycle.usage = self._usage_after(image.size)
            self._heartbeat()

    def on_enter_Uncordoning(self, event: Any) -> None:
        if event.transition.source == "Idle":  # the uncordon owed by a cycle whose uncordon failed
            log.warning("retrying the uncordon left over from the last cycle")
            self.cycle = Cycle()
        if self.cycle.cordoned_at is not None:
            self.cycle.cordon_seconds = time.monotonic() - self.cycle.cordoned_at
        if self.kube is None or self.cfg.dry_run:
            log.info("%s: nothing to uncordon", "dry run" if self.cfg.dry_run else "no cluster")
            self.owes_uncordon_flag = False
            return
        self._release("Uncordoning")

    def on_enter_Idle(self, event: Any) -> None:
        source = event.transition.source
        if source == "Measuring":
            if self.cycle.failed:
                log.error("cycle failed in Measuring: %s", self.cycle.failed)
            else:
                log.info("usage %s is below the high threshold %s: nothing to do",
                         plan.describe(self.cycle.usage, self.cfg),
                         plan.describe(self.cfg.threshold_high, self.cfg))
        elif source == "Uncordoning" and self.cycle.before is not None:
            self._summary()
        if (self.journal_unreadable and source in ("Measuring", "Uncordoning") and not self.cycle.failed
                and self.kube and not self.cfg.dry_run):  # only once a cycle of ours has succeeded
            with contextlib.suppress(StepFailed):  # try again after the next cycle
                self._write_node("Idle", self._idle_journal)

    def on_enter_Stopped(self, event: Any) -> None:
        if event.transition.source == "Uncordoning" and self.cycle.before is not None:
            self._summary()
        log.info("stopped")

    # --- the loop -----------------------------------------------------------------------------
    def run(self, once: bool = False) -> int:
        """Run cycles until stopped, or one cycle. Exit code 1 when the node may still hold our cordon
        or, with ``once``, when the cycle failed; 0 otherwise (a graceful stop included)."""
        self._drive("start")
        while self.state != "Stopped":
            self._drive("tick")
            if once:
                break
            if self.state == "Idle":
                self._sleep(self.cfg.interval_seconds)
                if self.stopping():
                    self._drive("stop")
        return 1 if self.owes_uncordon_flag or (once and self.cycle.failed) else 0

    def _drive(self, trigger: str) -> None:
        """Fire ``trigger``, then step until the machine rests in Idle or Stopped."""
        while True:
            try:
                getattr(self, trigger)()
            except MachineError:
                raise  # a bug in the table itself: "fail" would not help
            except Exception as e:  # StepFailed, or a bug in a state: either way, hand the node back
                reason = str(e)
                if not isinstance(e, StepFailed):
                    log.exception("unexpected error in %s", self.state)
                    reason = f"{self.state}: {short_error(e)}"
                self.cycle.failed = self.cycle.failed or reason
                trigger = "fail"
                continue
            except StopRequested:
                log.warning("stop requested: no new removals; handing the node back")
                self.cycle.stopped = True
                trigger = "stop"
                continue
            if self.state in ("Idle", "Stopped"):
                if self.state == "Idle" and self.stopping():
                    trigger = "stop"
                    continue
                return
            trigger = "stop" if self.stopping() and self.state != "Uncordoning" else "next"

    def request_stop(self, signum: int, _frame: Any = None) -> None:
        """Signal handler: the first signal stops gracefully, a second one exits at once."""
        if self._stop.is_set():
            log.error("second signal %s: exiting now; the next start reconciles the node", signum)
            logging.shutdown()
            os._exit(128 + signum)
        log.warning("signal %s: stopping (bound %.0f s)", signum, self.cfg.stop_timeout_seconds)
        # Leave a margin for the last PATCH's round trip inside the documented bound.
        self.stop_deadline = time.monotonic() + max(1.0, self.cfg.stop_timeout_seconds - 3)
        self._stop.set()
        if self._interruptible:
            self._interruptible = False
            raise StopRequested

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    # --- helpers ------------------------------------------------------------------------------
    def _on_transition(self, event: Any) -> None:
        now = time.monotonic()
        log.info("%s -> %s (%s) after %.2f s", event.transition.source, event.transition.dest,
                 event.event.name, now - self._entered)
        self._entered = now
        self._heartbeat()

    def _do(self, step: str, fn: Callable[[], T], *, patient: bool = False) -> T:
        """Run a side effect under the step's retry policy; a final failure becomes StepFailed."""
        try:
            return policy(self.cfg, step, patient=patient, deadline=lambda: self.stop_deadline,
                          sleep=self._wait)(fn)
        except Exception as e:
            log.error("%s failed: %s", step, short_error(e))
            raise StepFailed(f"{step}: {short_error(e)}") from e

    def _docker(self, step: str, fn: Callable[[], T]) -> T:
        with self._stoppable():
            return self._do(step, fn)

    def _measure(self) -> float:
        def measure() -> float:
            if self.cfg.threshold_type == "relative":
                return disk.fs_stats(self.cfg.path_to_check).percent
            return float(disk.tree_bytes(self.cfg.path_to_check))

        with self._stoppable():
            usage = self._do("Measuring", measure)
        if self.cfg.dry_run:  # nothing was removed: project what the removals would have freed
            if self.cfg.threshold_type == "absolute":
                usage -= self.cycle.reported_bytes
            elif self.cycle.before and self.cycle.before.total_bytes:
                usage -= 100 * self.cycle.reported_bytes / self.cycle.before.total_bytes
        return usage

    @contextlib.contextmanager
    def _stoppable(self) -> Iterator[None]:
        """A region where a stop signal aborts the call in flight (Docker calls, measurements)."""
        if self.stopping():
            raise StopRequested
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    def _within_stop_bound(self, timeout: tuple[float, float]) -> tuple[float, float] | None:
        """A request's (connect, read) timeout, cut to what is left of the stop bound when stopping;
        None when too little is left to be worth a request."""
        if self.stop_deadline is None:
            return timeout
        left = self.stop_deadline - time.monotonic()
        return None if left < 0.5 else (min(timeout[0], left), min(timeout[1], left))

    def _kube_timeout(self) -> tuple[float, float]:
        # A node write is tried even at the very end of the bound: it may be the uncordon.
        return self._within_stop_bound((REQUEST_TIMEOUT[0], self.cfg.api_timeout_seconds)) or (0.5, 0.5)

    def _event(self, reason: str, message: str, warning: bool = False) -> None:
        """Best effort, and within the stop bound: once stopping, the Event gets what time is left."""
        assert self.kube is not None
        timeout = self._within_stop_bound(EVENT_TIMEOUT)
        if timeout is None:
            log.debug("no time left for event %s", reason)
            return
        self.kube.event(reason, message, warning, timeout)

    def _write_node(self, step: str, decide: Callable[[NodeView], Patch | None],
                    *, patient: bool = False) -> Patch | None:
        """Read the node, decide, write with a resourceVersion precondition; a 409 re-reads."""
        assert self.kube is not None
        kube = self.kube

        def attempt() -> Patch | None:
            node = kube.read(self._kube_timeout())
            if node.journal_unreadable and not self.journal_unreadable:
                log.error("unreadable %s annotation %r: no guessing; the node's schedulability is left "
                          "alone and the annotation kept until a cycle succeeds",
                          ANNOTATION, node.annotations[ANNOTATION])
                self.journal_unreadable = True
            patch = decide(node)
            if patch is not None:
                kube.write(node, patch, self._kube_timeout())
            return patch

        try:
            patch = self._do(step, attempt, patient=patient)
        except StepFailed as e:
            if isinstance(e.__cause__, NodeGone):
                log.error("node %s is gone: no more cordons or journal writes from this process",
                          kube.node_name)
                self.kube = None
                self.owes_uncordon_flag = False
            raise
        if patch is not None and ANNOTATION in patch.annotations:
            self.journal_unreadable = False
        return patch

    def _journal_step(self, state: str) -> None:
        if self.kube is not None and not self.cfg.dry_run:
            self._write_node(state, lambda n: journal.advance(n, state, self.holder, journal.now_rfc3339()))

    def _release(self, step: str) -> None:
        patch = self._write_node(step, lambda n: journal.release(n, self.holder, journal.now_rfc3339()),
                                 patient=True)
        self.owes_uncordon_flag = False
        if patch is not None:
            log.info("%s: %s", step, patch.why)
            self._event("Uncordoned" if patch.unschedulable is False else "Reconciled",
                        f"fsm-cleaner {step}: {patch.why}")

    def _idle_journal(self, node: NodeView) -> Patch:
        entry = journal.Journal("Idle", False, node.unschedulable, journal.now_rfc3339(), self.holder)
        return Patch({ANNOTATION: entry.encode()}, why="journal Idle (replacing an unreadable one)")

    def _tally(self, found: Removed, what: str, *, containers: bool = False) -> None:
        if containers:
            self.cycle.containers += found.count
        else:
            self.cycle.images += found.count
        self.cycle.reported_bytes += found.bytes
        log.info("%s %s (%s)", "would remove" if self.cfg.dry_run else "removed", what,
                 plan.human_bytes(found.bytes))

    def _usage_after(self, freed: int) -> float:
        """Usage after a removal. In absolute mode a measurement walks the tree, so it is estimated
        (Docker's size overstates what goes) and measured only to confirm that the target is reached."""
        if self.cfg.threshold_type == "absolute":
            estimate = self.cycle.usage - freed
            if self.cfg.threshold_low is None or not plan.clean_enough(estimate, self.cfg):
                return estimate
        return self._measure()

    def _summary(self) -> None:
        c = self.cycle
        after = None
        with contextlib.suppress(OSError):
            after = disk.fs_stats(self.cfg.path_to_check)
        freed = (c.before.used_bytes - after.used_bytes) if (after and c.before) else 0
        inodes = (c.before.used_inodes - after.used_inodes) if (after and c.before) else 0
        verb = "would free" if self.cfg.dry_run else "freed"
        log.log(logging.ERROR if c.failed else logging.INFO,
                "cycle %s: usage %s -> %s; %s %s and %d inodes (Docker reports %s); %s %d containers "
                "and %d images; node cordoned %.1f s; took %.1f s",
                f"FAILED ({c.failed})" if c.failed else "stopped early" if c.stopped
                else "dry run" if self.cfg.dry_run else "done",
                plan.describe(c.first_usage, self.cfg), plan.describe(c.usage, self.cfg), verb,
                plan.human_bytes(freed), inodes, plan.human_bytes(c.reported_bytes),
                "would remove" if self.cfg.dry_run else "removed", c.containers, c.images,
                c.cordon_seconds, time.monotonic() - c.started)
        if c.failed and self.kube is not None:
            self._event("CleanupFailed", f"fsm-cleaner cycle failed: {c.failed}", warning=True)

    def _heartbeat(self) -> None:
        path = Path(self.cfg.heartbeat_file)
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()

    def _wait(self, seconds: float) -> None:
        """Sleep that a stop request cuts short (used for retry backoff)."""
        self._stop.wait(seconds)

    def _pause(self, seconds: float) -> None:
        """Sleep between removals; a stop request aborts the pruning."""
        if self._stop.wait(seconds):
            raise StopRequested

    def _sleep(self, seconds: float) -> None:
        """The Idle wait, refreshing the heartbeat so liveness sees a live loop."""
        end = time.monotonic() + seconds
        while not self._stop.is_set() and (left := end - time.monotonic()) > 0:
            self._stop.wait(min(left, 30))
            self._heartbeat()
