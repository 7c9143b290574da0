"""The crash cases that are about the runtime, on the Podman bed: SIGKILL mid-prune, then a restart; the
Podman service stopped as PruningAll begins. Same scene, harness and checks as the dockerd cases
(test_kill.py, test_faults.py); what differs is the daemon and the port the agent picks for it.

Podman is daemonless: with the service stopped the running container keeps running under conmon, so
"the live container runs" is checked while the service is down too.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from devtools.fakekube import FakeKube
from devtools.podmanbed import PodmanBed
from tests.crash.conftest import RECOVER_BOUND, AgentProcess, Row, Scene, image_exists, make_scene, wait_until
from tests.crash.test_faults import (
    DOCKERD_STOPPING,
    FAILED_STEP_BOUND,
    restart_removes_the_old_images,
    stop_docker_as_pruning_all_begins,
)


@pytest.fixture
def scene(podman_bed: PodmanBed, fake: FakeKube, tmp_path: Path) -> Scene:
    podman_bed.reset()
    podman_bed.base_image()
    return make_scene(podman_bed, fake, tmp_path)


def tags(scene: Scene, image_id: str) -> set[str]:
    return set(scene.bed.client().images.get(image_id).tags)


def test_sigkill_between_two_image_removals_then_restart(scene: Scene, agents, row: Row) -> None:
    row.case = "Podman: SIGKILL in PruningAll right after its first image removal, then a restart"
    agent = agents(scene.env())
    killed: dict[str, float] = {}
    agent.on_line(r"removed image ", lambda: killed.setdefault("t", agent.signal(signal.SIGKILL)))
    agent.start()
    assert agent.wait(60) == -signal.SIGKILL, agent.log
    assert "t" in killed and "runtime: Podman Engine" in agent.log, agent.log
    assert scene.watch.last().state == "PruningAll" and scene.watch.last().unschedulable
    # nothing half-done: each image is gone or there with its tags (one removal done, the rest waiting)
    left = [i for i in scene.old_images if image_exists(scene.bed, i)]
    assert 0 < len(left) < len(scene.old_images)
    assert all(len(tags(scene, i)) == 1 for i in left)
    restarted = agents(scene.env(DOCKER_IMAGE_CLEANER_DELAY_SECONDS=0)).start()
    assert restarted.wait(60) == 0, restarted.log
    row.invariants = scene.check_handed_back()
    assert re.search(r"Reconciling: our cordon from PruningAll undone", restarted.log), restarted.log
    # The reconcile hands the node back first; the restart's own cycle (above the threshold still) then
    # cordons it again and removes the rest. Podman's slower answers make that cycle ~0.6 s here, so the
    # time to recover is counted to the reconcile's hand-back, as the README's promise is.
    reconciled = next(r.t for r in scene.watch.records if r.t > killed["t"] and r.handed_back(False))
    assert reconciled - killed["t"] <= RECOVER_BOUND, (reconciled - killed["t"], restarted.log)
    assert restarted.states()[:2] == ["Reconciling", "Idle"] and "PruningAll" in restarted.states()
    assert not any(image_exists(scene.bed, i) for i in scene.old_images), restarted.log
    assert scene.live_ok() and "Traceback" not in agent.log + restarted.log
    final = scene.watch.recovered_after(killed["t"], False)
    row.recover, row.since = reconciled - killed["t"], "SIGKILL (to the reconcile's hand-back)"
    row.invariants += ["reconciled from the journal", "no image half-removed", "restart removes the rest",
                       "live container runs"]
    row.note = (f"Podman 4.3; killed between two removals (DELAY_SECONDS 0.8); the restart's cycle handed "
                f"it back for good {final:.2f} s after the kill")


def test_podman_stopped_during_pruning_all_then_restart(scene: Scene, agents, row: Row) -> None:
    row.case = "Podman service stopped as PruningAll begins (--once), then a restart"
    agent: AgentProcess = agents(scene.env(**DOCKERD_STOPPING))
    try:
        stopped = stop_docker_as_pruning_all_begins(scene, agent)
        assert agent.wait(60) == 1, agent.log
        assert "PruningAll failed: " in agent.log and "cycle FAILED (PruningAll: " in agent.log, agent.log
        assert agent.states()[-2:] == ["Uncordoning", "Idle"] and "Traceback" not in agent.log
        recover = scene.watch.recovered_after(stopped["t"], False)
        assert recover is not None and recover <= FAILED_STEP_BOUND, recover
        # daemonless: the container never stopped; the agent removed nothing without its daemon
        assert scene.bed._stray_pids(), "the live container should outlive the service"
    finally:
        scene.bed.start_daemon()
    wait_until(scene.live_ok, 30, "the running container is listed again", interval=0.2)
    row.invariants = scene.check_handed_back() + ["error logged, no traceback", "exit 1"]
    restart_removes_the_old_images(scene, agents, row)
    row.recover, row.since = recover, "Podman service stopped"
