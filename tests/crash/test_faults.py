"""Faults mid-cycle: API errors, timeouts, a concurrent writer, the node deleted, the API server
down during the uncordon, the Docker daemon stopped while images are being removed."""

from __future__ import annotations

import signal
import time

import pytest

from tests.conftest import NODE
from tests.crash.conftest import (
    API_READ_TIMEOUT,
    NODE_PATH,
    RECOVER_BOUND,
    STOP_TIMEOUT,
    Row,
    Scene,
    image_exists,
    wait_until,
)

CYCLE = ["Cordoning", "PruningContainers", "PruningDangling", "PruningAll", "Uncordoning"]


def full_cycle(agent) -> bool:
    """Exactly one cycle through every state that works on the node or on Docker."""
    return [s for s in agent.states() if s not in ("Reconciling", "Idle", "Measuring", "Stopped")] == CYCLE


def test_api_500s_on_the_first_writes_and_on_the_uncordon(scene: Scene, agents, row: Row) -> None:
    row.case = "API 500 on the first 3 PATCHes and 8 times on the uncordon"
    scene.cluster.fail("PATCH", status=500, times=3)
    fault: dict[str, float] = {}

    def failing_uncordon() -> None:  # runs before the fault queue is consulted: hits this PATCH too
        fault["t"] = time.monotonic()
        scene.cluster.fail("PATCH", status=500, times=8)  # more than RETRY_ATTEMPTS (5): patient
    scene.watch.before("PATCH", failing_uncordon, journal="PruningAll")
    agent = agents(scene.env()).start()
    assert agent.wait(90) == 0, agent.log
    assert full_cycle(agent), agent.log
    assert agent.count(r"Cordoning: attempt \d failed \(Kubernetes API 500") == 3
    assert agent.count(r"Uncordoning: attempt \d+ failed \(Kubernetes API 500") == 8
    row.invariants = scene.check_handed_back() + ["retried, exit 0", "uncordon outlasts RETRY_ATTEMPTS"]
    row.recover, row.since = scene.watch.recovered_after(fault["t"], False), "first failed uncordon"
    row.note = "8 failed attempts, backoff <= 0.5 s"


def test_api_read_timeouts_whose_writes_land_late(scene: Scene, agents, row: Row) -> None:
    row.case = f"API read timeout ({API_READ_TIMEOUT} s) on the cordon and the uncordon; the writes land late"
    late = API_READ_TIMEOUT + 0.3  # the server applies the write after the client gave up
    scene.cluster.fail("PATCH", status=None, delay=late)
    fault: dict[str, float] = {}

    def slow_uncordon() -> None:
        fault["t"] = time.monotonic()
        scene.cluster.fail("PATCH", status=None, delay=late)
    scene.watch.before("PATCH", slow_uncordon, journal="PruningAll")
    agent = agents(scene.env()).start()
    assert agent.wait(90) == 0, agent.log
    assert agent.count(r"attempt 1 failed \(ReadTimeoutError") == 2, agent.log
    assert full_cycle(agent), agent.log
    cordons = [r.journal() for r in scene.watch.records if r.state == "Cordoning"]
    assert len(cordons) == 2 and all(j["cordoned_by_us"] for j in cordons), cordons  # still ours on retry
    row.invariants = scene.check_handed_back() + ["the retried cordon is still ours", "exit 0"]
    row.recover, row.since = scene.watch.recovered_after(fault["t"], False), "uncordon sent"
    row.note = f"the timed-out uncordon itself landed after {late:.1f} s"


@pytest.mark.parametrize("writer", ["label", "admin-cordon"])
def test_conflict_from_a_concurrent_writer(scene: Scene, agents, row: Row, writer: str) -> None:
    row.case = {"label": "409: a writer adds a label between the cordon's GET and PATCH",
                "admin-cordon": "409: an admin cordons between the cordon's GET and PATCH"}[writer]
    fault: dict[str, float] = {}

    def concurrent_write() -> None:
        fault["t"] = time.monotonic()

        def change(node: dict) -> None:
            if writer == "label":
                node["metadata"]["labels"]["crash-test/writer"] = "was-here"
            else:
                node["spec"]["unschedulable"] = True
        scene.cluster.mutate(NODE, change)
    scene.watch.before("PATCH", concurrent_write, journal=None)
    agent = agents(scene.env()).start()
    assert agent.wait(60) == 0, agent.log
    assert agent.count(r"Cordoning: attempt 1 failed \(Kubernetes API 409") == 1, agent.log
    assert full_cycle(agent), agent.log
    if writer == "label":
        row.invariants = scene.check_handed_back(labels={"crash-test/writer": "was-here"})
        row.invariants.insert(2, "writer's label kept")
        row.recover, row.since = scene.watch.recovered_after(fault["t"], False), "409"
        row.note = "handed back at the end of the (completed) cycle"
    else:  # re-read: the cordon is the admin's, so it is left in place
        row.invariants = scene.check_handed_back(unschedulable=True)
        assert scene.watch.last().journal()["was_unschedulable"] is True
        assert not [r for r in scene.cluster.requests if r.method == "PATCH" and "spec" in (r.body or {})
                    and r.body["spec"].get("unschedulable") is False]
        row.invariants.insert(0, "admin's cordon kept")
        row.note = "pre-cycle state here: cordoned by the admin"
    row.invariants.append("re-read after 409, exit 0")


def test_node_deleted_mid_cycle(scene: Scene, agents, row: Row) -> None:
    row.case = "node deleted (404) mid-cycle, loop mode"
    deleted: dict[str, float] = {}

    def delete() -> None:
        scene.cluster.delete_node(NODE)
        deleted["t"] = time.monotonic()
        deleted["n"] = len(scene.cluster.requests) - 1  # this PATCH is logged before hooks run
    scene.watch.before("PATCH", delete, journal="PruningContainers")  # PruningDangling's journal write
    agent = agents(scene.env(DOCKER_IMAGE_CLEANER_INTERVAL_SECONDS=1), once=False).start()
    gone = agent.wait_for(r"node node-1 is gone")
    # the loop carries on: another measurement, and a cycle that no longer touches the node
    tick = agent.wait_for(r"Idle -> Measuring", start=gone.index)
    agent.wait_for(r"cycle (done|FAILED)|nothing to do", start=tick.index)
    assert agent.running, agent.log
    t = agent.signal(signal.SIGTERM)
    assert agent.wait(STOP_TIMEOUT + 5) == 0, agent.log
    assert agent.exited_at - t <= STOP_TIMEOUT
    after = [r for r in scene.cluster.requests[deleted["n"]:] if r.path == NODE_PATH]
    assert [r.method for r in after] == ["PATCH"], after  # the one that got 404, then nothing
    assert agent.count("Traceback") == 0 and agent.count(r"is gone") == 1
    assert scene.live_ok()
    row.invariants = ["error logged once", "no node request after the 404", "loop keeps running",
                      "live image kept", "SIGTERM: exit 0"]
    row.note = "no node left to hand back; later cycles prune without cordoning"


def test_api_server_down_during_uncordoning(scene: Scene, agents, row: Row) -> None:
    row.case = "API server down from PruningAll until after 3 failed uncordon attempts"
    agent = agents(scene.env()).start()
    agent.wait_for(r"images can go")  # PruningAll's journal write has been answered
    scene.cluster.stop()  # PruningAll goes on for ~2.4 s without the API server
    down = time.monotonic()
    try:
        agent.wait_for(r"Uncordoning: attempt 3 failed", timeout=30)
        assert scene.watch.last().unschedulable
    finally:
        scene.cluster.start()
    back = time.monotonic()
    assert agent.wait(60) == 0, agent.log
    row.invariants = scene.check_handed_back() + ["kept retrying (patient)", "exit 0"]
    recover = scene.watch.recovered_after(back, False)
    assert recover is not None and recover <= RECOVER_BOUND
    row.recover, row.since = recover, "API server back"
    row.note = f"outage {back - down:.1f} s; {recover + back - down:.2f} s from the outage's start"


SLOW_PRUNING = {"DOCKER_IMAGE_CLEANER_DELAY_SECONDS": 1.5}  # PruningAll: 3 pauses, 4.5 s


def stop_docker_during_pruning_all(scene: Scene, agent) -> float:
    agent.start()
    agent.wait_for(r"images can go")  # PruningAll has listed the images, removals begin
    stopped = time.monotonic()
    scene.bed.stop_daemon()  # ~1 s, while PruningAll pauses 1.5 s before each removal
    return stopped


def test_docker_stopped_during_pruning_all_once(scene: Scene, agents, row: Row) -> None:
    row.case = "dockerd stopped during PruningAll (--once), then a restart"
    agent = agents(scene.env(**SLOW_PRUNING))
    try:
        stopped = stop_docker_during_pruning_all(scene, agent)
        code = agent.wait(60)
        assert code == 1, agent.log
        assert "PruningAll failed: " in agent.log and "cycle FAILED (PruningAll: " in agent.log, agent.log
        assert agent.states()[-2:] == ["Uncordoning", "Idle"]
        recover = scene.watch.recovered_after(stopped, False)
        assert recover is not None and recover <= RECOVER_BOUND
    finally:
        scene.bed.start_daemon()
    wait_until(scene.live_ok, 30, "the running container is back", interval=0.2)
    row.invariants = scene.check_handed_back() + ["error logged", "exit 1"]
    restarted = agents(scene.env(DOCKER_IMAGE_CLEANER_DELAY_SECONDS=0)).start()
    assert restarted.wait(60) == 0, restarted.log
    scene.check_handed_back()
    row.invariants += ["restart: exit 0"]
    row.recover, row.since = recover, "dockerd stopped"


def test_docker_stopped_during_pruning_all_loop(scene: Scene, agents, row: Row) -> None:
    row.case = "dockerd stopped during PruningAll (loop, 2 s interval), back after the failed cycle"
    agent = agents(scene.env(DOCKER_IMAGE_CLEANER_INTERVAL_SECONDS=2, **SLOW_PRUNING), once=False)
    try:
        stopped = stop_docker_during_pruning_all(scene, agent)
        agent.wait_for(r"cycle FAILED \(PruningAll: ")
        scene.wait_handed_back()
        recover = scene.watch.recovered_after(stopped, False)
    finally:
        scene.bed.start_daemon()
    back = len(agent.lines)
    # the loop carries on: a cycle after dockerd is back succeeds (or finds nothing left to do)
    agent.wait_for(r"cycle done|nothing to do", start=back, timeout=60)
    assert agent.running
    t = agent.signal(signal.SIGTERM)
    assert agent.wait(STOP_TIMEOUT + 5) == 0, agent.log
    assert agent.exited_at - t <= STOP_TIMEOUT
    wait_until(scene.live_ok, 30, "the running container is back", interval=0.2)
    row.invariants = scene.check_handed_back() + ["error logged", "next cycle after dockerd is back OK",
                                                  "SIGTERM: exit 0"]
    assert recover is not None and recover <= RECOVER_BOUND
    row.recover, row.since = recover, "dockerd stopped"
    assert image_exists(scene.bed, scene.live_image)
