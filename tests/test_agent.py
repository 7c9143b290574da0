"""The agent's machine in process, against in-memory fakes (devtools/fakes.py): every row of
machine.TRANSITIONS taken, with the real node writer and journal decisions, no root, dockerd or sleep.

Fast: run them alone with `.venv/bin/python -m pytest tests/test_agent.py`.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from devtools.fakes import FakeClock, FakeDisk, FakeNodeApi, FakePod, FakeRuntime
from fsm_cleaner import config, machine
from fsm_cleaner.agent import Agent
from fsm_cleaner.cli import build_agent
from fsm_cleaner.journal import ANNOTATION, decode
from fsm_cleaner.kube import PodsForbidden
from fsm_cleaner.slots import Lease

MiB = 2**20
FORBIDDEN = ApiException(status=403, reason="Forbidden")  # not transient: the step fails at once


def rows() -> set[tuple[str, str, str]]:
    """Every row of the table, one per source."""
    out = set()
    for trigger, sources, dest, conditions in machine.TRANSITIONS:
        for source in [sources] if isinstance(sources, str) else sources:
            out.add((trigger, source, dest, tuple(conditions)))
    return out


@dataclass
class Bed:
    """An agent wired to fakes: 100 MiB disk, 40 MiB used by other things, thresholds 80 % / 50 %."""

    tmp: Path
    node: bool = True
    env: dict[str, str] = field(default_factory=dict)
    taken: list[tuple[str, str, str]] = field(default_factory=list)
    rows: set[tuple[str, str, str, tuple[str, ...]]] = field(default_factory=set)  # with the conditions

    def __post_init__(self) -> None:
        self.runtime = FakeRuntime()
        self.disk = FakeDisk(self.runtime, total=100 * MiB, base=40 * MiB)
        self.clock = FakeClock()
        self.api = FakeNodeApi()
        self._agent: Agent | None = None

    def fill(self, images: int = 5, size: int = 10 * MiB) -> None:
        """Old images no container uses, one in use by a running container, a stopped container."""
        for n in range(images):
            self.runtime.add_image(f"sha256:{n:064x}", size, f"old:{n}")
        self.runtime.add_image("sha256:" + "f" * 64, 1 * MiB, "live:1")
        self.runtime.add_container("sha256:" + "f" * 64, running=True)
        self.runtime.add_container("sha256:" + "f" * 64, running=False, size=MiB // 2)

    @property
    def agent(self) -> Agent:
        if self._agent is None:
            env = {"FSM_CLEANER_PATH_TO_CHECK": str(self.tmp), "FSM_CLEANER_THRESHOLD_HIGH": "80",
                   "FSM_CLEANER_THRESHOLD_LOW": "50", "FSM_CLEANER_INTERVAL_SECONDS": "60",
                   "FSM_CLEANER_RETRY_ATTEMPTS": "2", "FSM_CLEANER_NODE_NAME": "node-1",
                   "FSM_CLEANER_HEARTBEAT_FILE": str(self.tmp / "heartbeat")} | self.env
            cfg = config.load(env)
            self._agent = build_agent(cfg, self.runtime, self.api if self.node else None,
                                      clock=self.clock, disk=self.disk)
            self._agent.machine.before_state_change.append(self._record)
        return self._agent

    def _record(self, e: Any) -> None:
        t = e.transition
        self.taken.append((e.event.name, t.source, t.dest))
        self.rows.add((e.event.name, t.source, t.dest, tuple(c.func for c in t.conditions)))

    def stop(self) -> None:
        """What SIGTERM's handler does."""
        self.agent.shutdown.request(signal.SIGTERM)

    def run(self, once: bool = True) -> int:
        return self.agent.run(once=once)

    @property
    def states(self) -> list[str]:
        return [dest for _, _, dest in self.taken]

    def handed_back(self) -> bool:
        """Schedulable again, and the journal (if any was written) says Idle."""
        raw = self.api.annotations.get(ANNOTATION)
        return not self.api.unschedulable and (raw is None or decode(raw).state == "Idle")


# --- scenarios: each returns nothing and asserts what a user would see ----------------------------

def full_cycle_through_pruning_all(bed: Bed) -> None:
    bed.fill()
    assert bed.run() == 0
    assert bed.states == ["Reconciling", "Idle", "Measuring", "TakingSlot", "Cordoning", "PruningContainers",
                          "PruningDangling", "PruningBuildCache", "PruningAll", "Uncordoning", "Idle"]
    assert bed.handed_back()
    assert [p.unschedulable for p in bed.api.patches if p.unschedulable is not None] == [True, False]
    assert "sha256:" + "f" * 64 in bed.runtime.store  # the image in use stays
    assert bed.disk.used() <= 50 * MiB < 80 * MiB  # stopped at the target


def below_the_threshold_nothing_happens(bed: Bed) -> None:
    bed.fill(images=1)
    assert bed.run() == 0
    assert bed.states[-2:] == ["Measuring", "Idle"]
    assert bed.api.patches == []  # a quiet node is not written to


def dangling_images_free_enough(bed: Bed) -> None:
    bed.fill(images=0)
    for n in range(4):
        bed.runtime.add_image(f"sha256:d{n:063x}", 10 * MiB)
    assert bed.run() == 0
    assert bed.states[-4:] == ["PruningDangling", "PruningBuildCache", "Uncordoning", "Idle"]
    assert bed.handed_back()


def build_cache_frees_enough(bed: Bed) -> None:
    """Old cache entries go, one used a minute ago stays, and no image is touched: the target is met."""
    bed.fill(images=0)
    for n in range(4):
        bed.runtime.add_cache(f"old{n}", 10 * MiB, idle=2 * 3600)
    bed.runtime.add_cache("fresh", 5 * MiB, idle=60)  # younger than MIN_AGE (30m)
    images = set(bed.runtime.store)
    assert bed.run() == 0
    assert bed.taken[-2:] == [("next", "PruningBuildCache", "Uncordoning"), ("next", "Uncordoning", "Idle")]
    assert set(bed.runtime.cache) == {"fresh"} and set(bed.runtime.store) == images
    assert bed.disk.used() <= 50 * MiB and bed.handed_back()


def reconciling_fails(bed: Bed) -> None:
    bed.fill(images=1)
    bed.api.faults.add("read", FORBIDDEN)
    assert bed.run() == 0  # the cycle after it succeeded; the uncordon owed is retried at the tick
    assert bed.taken[1] == ("fail", "Reconciling", "Idle")


def measuring_fails_without_a_runtime(bed: Bed) -> None:
    bed.fill()
    bed.runtime.faults.add("ping", ConnectionError("docker is down"))
    bed.runtime.faults.add("ping", ConnectionError("docker is down"))
    assert bed.run() == 1
    assert bed.states[-2:] == ["Measuring", "Idle"]
    assert bed.api.patches == []  # nothing cordoned for a runtime that cannot prune


def fails_in(state: str, arm: Callable[[Bed], None]) -> Callable[[Bed], None]:
    def scenario(bed: Bed) -> None:
        bed.fill()
        arm(bed)
        assert bed.run() == 1
        assert ("fail", state, "Uncordoning") in bed.taken
        assert bed.states[-1] == "Idle" and bed.handed_back()
        assert bed.agent.cycle.failed and bed.agent.cycle.failed.startswith(state)
    scenario.__name__ = f"fails_in_{state}"
    return scenario


def stopped_in(state: str, arm: Callable[[Bed], None]) -> Callable[[Bed], None]:
    def scenario(bed: Bed) -> None:
        bed.fill()
        arm(bed)
        assert bed.run() == 0
        assert bed.taken[-2:] == [("stop", state, "Uncordoning"), ("next", "Uncordoning", "Stopped")]
        assert bed.handed_back()
    scenario.__name__ = f"stopped_in_{state}"
    return scenario


def uncordon_fails_then_the_next_tick_retries_it(bed: Bed) -> None:
    bed.fill()
    writes = []

    def forbid_the_uncordon() -> None:
        writes.append(1)
        if len(writes) == 7:  # TakingSlot, Cordoning, four journal steps, then the uncordon
            raise FORBIDDEN
    for _ in range(7):
        bed.api.faults.add("write", forbid_the_uncordon)
    bed.clock.at(90, bed.stop)  # in the second Idle wait
    assert bed.run(once=False) == 0
    assert ("fail", "Uncordoning", "Idle") in bed.taken
    assert ("tick", "Idle", "Uncordoning") in bed.taken
    assert bed.taken[-1] == ("stop", "Idle", "Stopped")
    assert bed.handed_back()


def uncordon_fails_while_stopping(bed: Bed) -> None:
    bed.fill()
    bed.env["FSM_CLEANER_DELAY_SECONDS"] = "1"
    bed.clock.at(0.5, lambda: (bed.api.faults.add("write", FORBIDDEN), bed.stop()))  # in the first pause
    assert bed.run() == 1  # our cordon may remain: the next start reconciles
    assert bed.taken[-1] == ("fail", "Uncordoning", "Stopped")
    assert bed.api.unschedulable


SELECTOR = "component=binderhub-build"


def a_build_pod_defers_image_removals(bed: Bed) -> None:
    """A build pod runs on the node: the stopped container goes, every image stays, the node is handed
    back."""
    bed.env["FSM_CLEANER_BLOCKING_POD_SELECTOR"] = SELECTOR
    bed.api.pods.append(FakePod("build-1", "node-1", {"component": "binderhub-build"}))
    bed.fill()
    images = set(bed.runtime.store)
    assert bed.run() == 0
    assert bed.taken[-3:] == [("next", "Cordoning", "PruningContainers"),
                              ("next", "PruningContainers", "Uncordoning"), ("next", "Uncordoning", "Idle")]
    assert set(bed.runtime.store) == images and not bed.runtime.removed
    assert [c for c in bed.runtime.containers if not c.running] == []
    assert bed.handed_back() and not bed.agent.cycle.failed
    message = (f"fsm-cleaner waiting: pod default/build-1 (selector {SELECTOR}) runs on this node; images, "
               "dangling images and build cache stay until the next tick")
    assert ("RemovalsDeferred", message, False) in bed.api.events


def another_node_holds_the_only_slot(bed: Bed) -> None:
    """MAX_CORDONED 1, held by node-2: what needs no cordon goes, the node stays schedulable, the images
    wait for a slot."""
    bed.api.leases.put(Lease("fsm-cleaner-slot-0", "node-2", datetime.now(timezone.utc), 120))
    bed.fill()
    images = set(bed.runtime.store)
    assert bed.run() == 0
    assert bed.taken[4:6] == [("next", "TakingSlot", "PruningContainers"),
                              ("next", "PruningContainers", "PruningDangling")]
    assert bed.taken[-2:] == [("next", "PruningBuildCache", "Uncordoning"), ("next", "Uncordoning", "Idle")]
    assert all(p.unschedulable is None for p in bed.api.patches)  # never cordoned
    assert set(bed.runtime.store) == images and not [c for c in bed.runtime.containers if not c.running]
    assert bed.handed_back() and bed.api.leases.holders() == {"fsm-cleaner-slot-0": "node-2"}


def never_cordon(bed: Bed) -> None:
    """CORDON=false: the whole cycle, images included, with no write to spec.unschedulable."""
    bed.env["FSM_CLEANER_CORDON"] = "false"
    bed.fill()
    assert bed.run() == 0
    assert ("next", "TakingSlot", "PruningContainers") in bed.taken and "PruningAll" in bed.states
    assert bed.runtime.removed and bed.disk.used() <= 50 * MiB
    assert bed.api.patches and all(p.unschedulable is None for p in bed.api.patches)
    assert bed.handed_back() and bed.api.leases.writes == []


def stopped_before_start(bed: Bed) -> None:
    bed.stop()
    assert bed.run() == 0
    assert bed.taken == [("stop", "Starting", "Stopped")]


def stopped_in_reconciling(bed: Bed) -> None:
    bed.api.faults.add("read", bed.stop)
    assert bed.run() == 0
    assert bed.taken == [("start", "Starting", "Reconciling"), ("stop", "Reconciling", "Stopped")]


def stopped_in_measuring(bed: Bed) -> None:
    bed.fill()
    bed.env["FSM_CLEANER_THRESHOLD_TYPE"] = "absolute"
    bed.env["FSM_CLEANER_THRESHOLD_HIGH"] = "80Mi"
    bed.env["FSM_CLEANER_THRESHOLD_LOW"] = "50Mi"
    bed.disk.faults.add("tree_bytes", bed.stop)  # du is running: the signal cuts it short
    assert bed.run() == 0
    assert bed.taken[-1] == ("stop", "Measuring", "Stopped")
    assert bed.api.patches == []


def stopped_in_idle(bed: Bed) -> None:
    bed.fill(images=1)
    bed.clock.at(30, bed.stop)
    assert bed.run(once=False) == 0
    assert bed.taken[-1] == ("stop", "Idle", "Stopped")


SCENARIOS: list[Callable[[Bed], None]] = [
    full_cycle_through_pruning_all,
    below_the_threshold_nothing_happens,
    dangling_images_free_enough,
    build_cache_frees_enough,
    reconciling_fails,
    measuring_fails_without_a_runtime,
    a_build_pod_defers_image_removals,
    another_node_holds_the_only_slot,
    never_cordon,
    fails_in("TakingSlot", lambda b: b.api.leases.faults.add("slot_leases", lambda: None, FORBIDDEN)),
    fails_in("Cordoning", lambda b: b.api.faults.add("write", lambda: None, FORBIDDEN)),
    fails_in("PruningContainers", lambda b: b.runtime.faults.add("prune_containers", RuntimeError("boom"))),
    fails_in("PruningDangling", lambda b: b.runtime.faults.add("prune_dangling", RuntimeError("boom"))),
    fails_in("PruningBuildCache", lambda b: b.runtime.faults.add("prune_build_cache", RuntimeError("boom"))),
    fails_in("PruningAll", lambda b: b.runtime.faults.add("image_records", RuntimeError("boom"))),
    stopped_in("TakingSlot", lambda b: b.api.leases.faults.add("slot_leases", lambda: None, b.stop)),
    stopped_in("Cordoning", lambda b: b.api.faults.add("write", lambda: None, b.stop)),
    stopped_in("PruningContainers", lambda b: b.runtime.faults.add("prune_containers", b.stop)),
    stopped_in("PruningDangling", lambda b: b.runtime.faults.add("prune_dangling", b.stop)),
    stopped_in("PruningBuildCache", lambda b: b.runtime.faults.add("prune_build_cache", b.stop)),
    stopped_in("PruningAll", lambda b: (b.env.update(FSM_CLEANER_DELAY_SECONDS="1"),
                                        b.clock.at(0.5, b.stop))),
    uncordon_fails_then_the_next_tick_retries_it,
    uncordon_fails_while_stopping,
    stopped_before_start,
    stopped_in_reconciling,
    stopped_in_measuring,
    stopped_in_idle,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
def test_scenario(scenario: Callable[[Bed], None], tmp_path: Path) -> None:
    scenario(Bed(tmp_path))


def test_every_row_of_the_table_is_taken(tmp_path: Path) -> None:
    taken: set[tuple[str, str, str, tuple[str, ...]]] = set()
    for n, scenario in enumerate(SCENARIOS):
        (tmp_path / str(n)).mkdir()
        bed = Bed(tmp_path / str(n))
        scenario(bed)
        taken.update(bed.rows)
    assert len(rows()) == sum(1 if isinstance(s, str) else len(s) for _, s, _, _ in machine.TRANSITIONS)
    assert rows() - taken == set()
    assert taken <= rows()


# --- regressions (issue 9) ------------------------------------------------------------------------

LEFT_CORDONED = {ANNOTATION: '{"cordoned_by_us":true,"holder":"old-pod","since":"2026-01-01T00:00:00Z",'
                             '"state":"PruningAll","was_unschedulable":false}'}


def test_a_dry_run_never_writes_to_the_node(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A dry run from a laptop must not undo a live agent's cordon, nor journal, nor emit Events."""
    bed = Bed(tmp_path, env={"FSM_CLEANER_DRY_RUN": "true"})
    bed.api = FakeNodeApi(unschedulable=True, annotations=LEFT_CORDONED)
    bed.fill()
    before = bed.runtime.stored_bytes()
    with caplog.at_level("INFO", logger="fsm_cleaner"):
        assert bed.run() == 0
    assert bed.api.patches == [] and bed.api.events == []
    assert bed.api.unschedulable and bed.api.annotations == LEFT_CORDONED
    assert bed.runtime.stored_bytes() == before  # and nothing removed
    assert "dry run: Reconciling would write: our cordon from PruningAll undone" in caplog.text
    assert "would remove 1 stopped containers" in caplog.text


def test_a_node_deleted_and_registered_again_is_cordoned_by_the_next_cycle(tmp_path: Path) -> None:
    """A 404 in one cycle must not turn cordoning off for the rest of the process's life."""
    bed = Bed(tmp_path)
    bed.fill(images=8)
    cordoned_at_removal: list[bool] = []

    def delete_node() -> None:
        bed.api.exists = False
        bed.clock.at(30, register_again)  # during the Idle wait

    def register_again() -> None:
        bed.api.exists, bed.api.unschedulable, bed.api.annotations = True, False, {}

    writes = iter(range(100))
    for _ in range(100):
        bed.api.faults.add("write", lambda: next(writes) == 2 and delete_node())  # PruningContainers' journal
    for _ in range(100):
        bed.runtime.faults.add("remove_image", lambda: cordoned_at_removal.append(bed.api.unschedulable))
    bed.clock.at(200, bed.stop)
    assert bed.run(once=False) == 0
    assert ("fail", "PruningContainers", "Uncordoning") in bed.taken
    assert cordoned_at_removal and all(cordoned_at_removal)  # the next cycle cordoned before removing
    assert bed.handed_back()


# --- blocking pods (issue 11) ---------------------------------------------------------------------

def blocked_bed(tmp_path: Path, *pods: FakePod) -> Bed:
    bed = Bed(tmp_path, env={"FSM_CLEANER_BLOCKING_POD_SELECTOR": SELECTOR})
    bed.api.pods.extend(pods)
    bed.fill()
    return bed


def test_the_next_tick_after_the_build_pod_ended_cleans(tmp_path: Path) -> None:
    build = FakePod("build-1", "node-1", {"component": "binderhub-build"})
    bed = blocked_bed(tmp_path, build)
    removed_at_end_of_first_cycle: list[int] = []

    def build_ends() -> None:  # during the first Idle wait
        removed_at_end_of_first_cycle.append(len(bed.runtime.removed))
        build.phase = "Succeeded"
    bed.clock.at(30, build_ends)
    bed.clock.at(90, bed.stop)  # during the second Idle wait
    assert bed.run(once=False) == 0
    assert removed_at_end_of_first_cycle == [0]
    assert bed.states.count("PruningAll") == 1 and bed.states.count("Cordoning") == 2
    assert bed.runtime.removed and bed.disk.used() <= 50 * MiB
    assert bed.handed_back()


@pytest.mark.parametrize("pod", [
    FakePod("build-1", "node-2", {"component": "binderhub-build"}),  # another node's
    FakePod("web-1", "node-1", {"component": "web"}),  # not selected
    FakePod("build-1", "node-1", {"component": "binderhub-build"}, phase="Succeeded"),  # done
    FakePod("build-1", "node-1", {"component": "binderhub-build"}, phase="Failed"),
], ids=["other-node", "other-labels", "succeeded", "failed"])
def test_pods_that_cannot_break_do_not_block(tmp_path: Path, pod: FakePod) -> None:
    bed = blocked_bed(tmp_path, pod)
    assert bed.run() == 0
    assert "PruningAll" in bed.states and bed.runtime.removed


def test_a_pending_build_pod_blocks_too(tmp_path: Path) -> None:
    pending = FakePod("build-1", "node-1", {"component": "binderhub-build"}, phase="Pending")
    bed = blocked_bed(tmp_path, pending)
    assert bed.run() == 0
    assert "PruningDangling" not in bed.states and not bed.runtime.removed


def test_at_the_critical_level_the_disk_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    bed = blocked_bed(tmp_path, FakePod("build-1", "node-1", {"component": "binderhub-build"}))
    bed.env["FSM_CLEANER_CRITICAL_THRESHOLD"] = "90"  # the fill leaves the disk at 91.5 %
    with caplog.at_level("WARNING", logger="fsm_cleaner"):
        assert bed.run() == 0
    assert "PruningAll" in bed.states and bed.runtime.removed
    assert "pod default/build-1 (selector component=binderhub-build) on this node, but usage 91.5% is at " \
           "the critical level: removing anyway" in caplog.text
    assert "CriticalUsage" in [reason for reason, _, _ in bed.api.events]


def test_below_the_critical_level_the_build_pod_still_blocks(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    bed = blocked_bed(tmp_path, FakePod("build-1", "node-1", {"component": "binderhub-build"}))
    bed.env["FSM_CLEANER_CRITICAL_THRESHOLD"] = "95"
    assert bed.run() == 0
    assert "PruningDangling" not in bed.states and not bed.runtime.removed


def test_pods_that_cannot_be_listed_fail_the_cycle_and_nothing_more_is_removed(tmp_path: Path) -> None:
    bed = blocked_bed(tmp_path)
    bed.api.faults.add("pods_on_node", PodsForbidden("the service account may not list pods"))
    images = set(bed.runtime.store)
    assert bed.run() == 1
    assert ("fail", "PruningContainers", "Uncordoning") in bed.taken
    assert set(bed.runtime.store) == images and bed.handed_back()
    assert "PodsForbidden" in (bed.agent.cycle.failed or "")


def test_without_a_selector_no_pod_is_listed(tmp_path: Path) -> None:
    bed = Bed(tmp_path)
    bed.api.pods.append(FakePod("build-1", "node-1", {"component": "binderhub-build"}))
    bed.fill()
    assert bed.run() == 0
    assert "PruningAll" in bed.states and "pods_on_node" not in bed.api.faults.calls


def test_a_dry_run_says_it_would_wait_and_emits_no_event(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    bed = blocked_bed(tmp_path, FakePod("build-1", "node-1", {"component": "binderhub-build"}))
    bed.env["FSM_CLEANER_DRY_RUN"] = "true"
    with caplog.at_level("WARNING", logger="fsm_cleaner"):
        assert bed.run() == 0
    assert "waiting: pod default/build-1" in caplog.text
    assert bed.api.events == [] and bed.api.patches == []


# --- the cordon budget (issue 11) -----------------------------------------------------------------

def test_at_the_critical_level_with_no_slot_free_the_node_cleans_uncordoned_and_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bed = Bed(tmp_path, env={"FSM_CLEANER_CRITICAL_THRESHOLD": "90"})  # the fill leaves the disk at 91.5 %
    bed.api.leases.put(Lease("fsm-cleaner-slot-0", "node-2", datetime.now(timezone.utc), 120))
    bed.fill()
    with caplog.at_level("WARNING", logger="fsm_cleaner"):
        assert bed.run() == 0
    assert "PruningAll" in bed.states and "Cordoning" not in bed.states
    assert bed.runtime.removed and bed.disk.used() <= 50 * MiB
    assert all(p.unschedulable is None for p in bed.api.patches) and bed.handed_back()
    said = "no cordon slot free (1 held, by node-2), and usage 91.5% is above CRITICAL_THRESHOLD: " \
           "cleaning without a cordon rather than let the disk fill up"
    assert said in caplog.text
    assert ("CleaningWithoutCordon", f"fsm-cleaner: {said}", False) in bed.api.events


def test_a_restart_frees_the_slot_its_dead_predecessor_held(tmp_path: Path) -> None:
    """Killed after taking slot 0 (journal TakingSlot): the next start's Reconciling frees the slot, and
    the other node's slot stays."""
    bed = Bed(tmp_path)
    now = datetime.now(timezone.utc)
    stamp = now.isoformat().replace("+00:00", "Z")
    bed.api.annotations[ANNOTATION] = (
        f'{{"cordoned_by_us":false,"holder":"{bed.agent.node.me.pod}","since":"{stamp}","renewed":"{stamp}",'
        f'"state":"TakingSlot","token":"dead","was_unschedulable":false}}')
    bed.api.leases.put(Lease("fsm-cleaner-slot-0", "node-1", now, 120))
    bed.api.leases.put(Lease("fsm-cleaner-slot-1", "node-2", now, 120))
    assert bed.run() == 0
    assert bed.taken[:2] == [("start", "Starting", "Reconciling"), ("next", "Reconciling", "Idle")]
    assert bed.api.leases.holders() == {"fsm-cleaner-slot-1": "node-2"} and bed.handed_back()


def test_the_slot_held_is_named_in_the_journal_and_freed_after_the_uncordon(tmp_path: Path) -> None:
    bed = Bed(tmp_path)
    bed.fill()
    seen: list[tuple[bool, dict[str, str]]] = []
    for _ in range(20):  # at each node write: cordoned, and who holds which slot
        bed.api.faults.add("write", lambda: seen.append((bed.api.unschedulable, bed.api.leases.holders())))
    assert bed.run() == 0
    assert decode(bed.api.patches[1].annotations[ANNOTATION]).slot == "fsm-cleaner-slot-0"  # Cordoning
    # from the cordon to the uncordon's write, the slot is held; after it, free
    assert all(holders == {"fsm-cleaner-slot-0": "node-1"} for cordoned, holders in seen if cordoned)
    assert bed.api.leases.holders() == {} and bed.handed_back()
