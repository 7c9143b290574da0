"""The model the state machine drives: one on_enter_<State> per state, the conditions, the loop.

What it talks to is chosen before it starts (cli.build_agent): a runtime that prunes or only lists,
a node that is written to or a stand-in. The handlers do not ask which.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

from transitions import MachineError

from . import blocking, machine, metrics, plan, step
from .blocking import Pod, Pods
from .clock import Clock
from .config import Config, ConfigError
from .heartbeat import Heartbeat
from .node import Node
from .report import Cycle, Report, describe
from .retry import short_error
from .runtime import Image, Removed, Runtime, Unsupported
from .shutdown import Shutdown, StopRequested
from .slots import Slots
from .step import StepFailed
from .tracking import UseTracking
from .usage import Disk, Meter

log = logging.getLogger("fsm_cleaner")
T = TypeVar("T")


class Agent:
    def __init__(self, cfg: Config, runtime: Runtime, node: Node, shutdown: Shutdown, clock: Clock,
                 disk: Disk, pods: Pods, uses: UseTracking, slots: Slots):
        self.cfg = cfg
        self.runtime = runtime
        self.uses = uses
        self.node = node
        self.shutdown = shutdown
        self.clock = clock
        self.pods = pods
        self.slots = slots
        self.blocking_pods: list[Pod] = []  # the selected pods on the node, listed in PruningContainers
        self.report = Report(cfg, clock)
        self.meter = Meter(cfg, shutdown, self.report, disk)
        self.heartbeat = Heartbeat(cfg.heartbeat_file)
        self._entered = clock.monotonic()
        self._no_build_cache = False  # the runtime said it has none: the state passes through
        self.machine = machine.build(self, before_state_change="_on_transition")
        self.state: str  # set by transitions

    @property
    def cycle(self) -> Cycle:
        return self.report.cycle

    # --- conditions (named after what they check) ---------------------------------------------
    def above_high_threshold(self, _: Any = None) -> bool:
        return plan.above_high(self.cycle.usage, self.cfg)

    def freed_enough(self, _: Any = None) -> bool:
        """The old tool's rule, generalised: the cheap prunes freed something, and that was enough."""
        freed = self.cycle.dangling_found or self.cycle.cache_found
        return freed and plan.clean_enough(self.cycle.usage, self.cfg)

    def removals_blocked(self, _: Any = None) -> bool:
        return blocking.removals_blocked(self.blocking_pods, self.cycle.usage, self.cfg.critical_threshold)

    def slot_granted(self, _: Any = None) -> bool:
        return self.cycle.grant.cordon

    def waiting_for_slot(self, _: Any = None) -> bool:
        return not self.cycle.grant.images

    def owes_uncordon(self, _: Any = None) -> bool:
        return self.node.handback_pending

    def stopping(self, _: Any = None) -> bool:
        return self.shutdown.requested

    # --- states -------------------------------------------------------------------------------
    def on_enter_Reconciling(self, _: Any) -> None:
        self.node.reconcile()
        if not self.node.handback_pending:  # not while another agent on this node holds it
            self.slots.release()

    def on_enter_Measuring(self, _: Any) -> None:
        cycle = self.report.new_cycle()
        cycle.before, cycle.usage = self.meter.first()
        cycle.first_usage = cycle.usage
        self.report.measured()
        if self.above_high_threshold():  # no cordon for a runtime that cannot prune anyway
            self._runtime("Measuring", self.runtime.ping)

    def on_enter_TakingSlot(self, _: Any) -> None:
        self.node.begin()  # journaled first: should the process die holding a slot, the next start frees it
        usage = describe(self.cycle.usage, self.cfg)
        self.cycle.grant = self.slots.take(plan.critical(self.cycle.usage, self.cfg), usage)
        if self.cycle.grant.notice:
            log.warning("%s", self.cycle.grant.notice)
            self.node.notice("CleaningWithoutCordon", f"fsm-cleaner: {self.cycle.grant.notice}")

    def on_enter_Cordoning(self, _: Any) -> None:
        self.cycle.cordoned_at = self.clock.monotonic()
        self.node.cordon(describe(self.cycle.usage, self.cfg), self.cycle.grant.slot)

    def on_enter_PruningContainers(self, _: Any) -> None:
        self.node.journal("PruningContainers")
        self._runtime("PruningContainers", self.uses.before_container_prune)
        found = self._runtime("PruningContainers", self.runtime.prune_containers)
        self.report.tally(found, f"{found.count} stopped containers", "container", "stopped")
        self.blocking_pods = self._runtime("PruningContainers", self.pods.list)
        said = blocking.notice(self.blocking_pods, self.pods.selector, self.removals_blocked(),
                               describe(self.cycle.usage, self.cfg))
        if said:
            log.warning("%s", said[1])
            self.node.notice(said[0], f"fsm-cleaner {said[1]}")

    def on_enter_PruningDangling(self, _: Any) -> None:
        self.node.journal("PruningDangling")
        # only those older than MIN_AGE: a build in progress has committed an untagged image of its own
        min_age = self.cfg.min_age_seconds
        found = self._runtime("PruningDangling", lambda: self.runtime.prune_dangling(min_age))
        self.report.tally(found, f"{found.count} dangling images", "dangling", "dangling")
        self.cycle.dangling_found = found.count > 0
        self.cycle.usage = self.meter.measure()

    def on_enter_PruningBuildCache(self, _: Any) -> None:
        if self._no_build_cache:
            return
        self.node.journal("PruningBuildCache")
        budget = self.cfg.build_cache_max.bytes(self.cycle.before.total_bytes if self.cycle.before else 0)

        def prune() -> Removed | None:
            try:
                return self.runtime.prune_build_cache(self.cfg.min_age_seconds, budget)
            except Unsupported as e:  # not a failure: nothing to prune there, now or later
                log.info("PruningBuildCache skipped for the life of this process: %s", e)
                self._no_build_cache = True
                return None

        found = self._runtime("PruningBuildCache", prune)
        if found is None:
            return
        self.report.tally(found, f"{found.count} build cache entries", "build_cache", "unused")
        self.cycle.cache_found = found.count > 0
        self.cycle.usage = self.meter.measure()

    def on_enter_PruningAll(self, _: Any) -> None:
        self.node.journal("PruningAll")
        rt = self.runtime
        records = self._runtime("PruningAll", rt.image_records)
        uses = self.uses.snapshot()
        images = [dataclasses.replace(r, last_used=uses[r.id].last_used, uses=uses[r.id].count)
                  if r.id in uses else r for r in records]
        to_free = self._bytes_to_free()
        chosen = plan.plan_removals(images, to_free, self.cfg.keep, self.cfg.min_age_seconds, time.time())
        self.report.removal_plan(chosen, len(images), to_free)
        refused = 0
        for n, removal in enumerate(chosen.removals):
            if self.cfg.threshold_low is not None and plan.clean_enough(self.cycle.usage, self.cfg):
                break
            if n and self.cfg.delay_seconds:
                self.shutdown.pause(self.cfg.delay_seconds)
            image = removal.image
            what = f"image {plan.name(image)} [{removal.why}: {removal.detail}]"
            why_not = self._runtime("PruningAll", lambda i=image: rt.remove_image(
                Image(i.id, int(i.created), i.size, i.refs)))
            if why_not:
                log.info("%s not removed: %s", what, why_not)
                refused += 1
                continue
            self.report.tally(Removed(1, image.unique), what, "image", removal.why)
            self.cycle.usage = self.meter.after_removal(self.cycle.usage, image.unique)
            self.heartbeat.beat()
        if not plan.clean_enough(self.cycle.usage, self.cfg):
            self.report.short_of_target(chosen, refused)

    def on_enter_Uncordoning(self, event: Any) -> None:
        if event.transition.source == "Idle":  # the uncordon owed by a cycle whose uncordon failed
            log.warning("retrying the uncordon left over from the last cycle")
            self.report.new_cycle()
        if self.cycle.cordoned_at is not None:
            self.cycle.cordon_seconds = self.clock.monotonic() - self.cycle.cordoned_at
        try:
            self.node.uncordon()
        finally:  # the slot covers the cordon: freed once that is undone, or the node is gone (404)
            if not self.node.handback_pending:
                self.slots.release()

    def on_enter_Idle(self, event: Any) -> None:
        source = event.transition.source
        if source == "Measuring":
            self.report.measuring_ended()
        elif source == "Uncordoning" and self.cycle.before is not None:
            self._summary()
        if source in ("Measuring", "Uncordoning") and not self.cycle.failed:
            self.node.cycle_succeeded()

    def on_enter_Stopped(self, event: Any) -> None:
        if event.transition.source == "Uncordoning" and self.cycle.before is not None:
            self._summary()
        log.info("stopped")

    # --- the loop -----------------------------------------------------------------------------
    def run(self, once: bool = False) -> int:
        """Run cycles until stopped, or one cycle. Exit code 1 when the node may still hold our cordon
        or, with ``once``, when the cycle failed; 0 otherwise (a graceful stop included)."""
        self._drive("stop" if self.stopping() else "start")  # a signal may come before the first step
        while self.state != "Stopped":
            self._drive("tick")
            if once:
                break
            if self.state == "Idle":
                self.shutdown.idle(self.cfg.interval_seconds, self.heartbeat.beat)
                if self.stopping():
                    self._drive("stop")
        return 1 if self.node.handback_pending or (once and self.cycle.failed) else 0

    def _drive(self, trigger: str) -> None:
        """Fire ``trigger``, then step until the machine rests in Idle or Stopped."""
        while True:
            try:
                getattr(self, trigger)()
            except (MachineError, ConfigError):
                raise  # a bug in the table, or a wrong setting found at start: "fail" would not help
            except Exception as e:  # StepFailed, or a bug in a state: either way, hand the node back
                reason = str(e)
                if not isinstance(e, StepFailed):
                    log.exception("unexpected error in %s", self.state)
                    reason = f"{self.state}: {short_error(e)}"
                self.cycle.failed = self.cycle.failed or reason
                trigger = "fail"
                continue
            except StopRequested:
                self.shutdown.interrupted()
                self.cycle.stopped = True
                trigger = "stop"
                continue
            if self.state in ("Idle", "Stopped"):
                if self.state == "Idle" and self.stopping():
                    trigger = "stop"
                    continue
                return
            trigger = "stop" if self.stopping() and self.state != "Uncordoning" else "next"

    # --- helpers ------------------------------------------------------------------------------
    def _on_transition(self, event: Any) -> None:
        now = self.clock.monotonic()
        log.info("%s -> %s (%s) after %.2f s", event.transition.source, event.transition.dest,
                 event.event.name, now - self._entered)
        self._entered = now
        self.heartbeat.beat()
        # A cycle with no slot (or CORDON=false) holds the node's journal, not a cordon.
        held = self.node.handback_pending and self.cycle.grant.cordon
        metrics.record_state(event.transition.dest, cordoned=held,
                             slot_held=held and bool(self.cycle.grant.slot))

    def _runtime(self, name: str, fn: Callable[[], T]) -> T:
        with self.shutdown.stoppable():
            return step.run(self.cfg, self.shutdown, name, fn)

    def _bytes_to_free(self) -> float:
        """What the plan must free to reach THRESHOLD_LOW; unset: everything unused goes (the old tool).
        In relative mode the percentage is of the disk's bytes (when inodes are the fuller, bytes stand
        in for them: the plan is then long, and the re-measurement after each removal stops it)."""
        low, usage = self.cfg.threshold_low, self.cycle.usage
        if low is None:
            return math.inf
        if self.cfg.threshold_type == "absolute":
            return max(usage - low, 0.0)
        total = self.cycle.before.total_bytes if self.cycle.before else 0
        return max(usage - low, 0.0) / 100 * total

    def _summary(self) -> None:
        self.report.summary(self.meter.now())
        if self.cycle.failed:
            self.node.cycle_failed(self.cycle.failed)
