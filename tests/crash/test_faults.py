"""Faults mid-cycle: API errors, timeouts, a concurrent writer, the node deleted, the API server
down during the uncordon, the Docker daemon stopped as PruningAll begins."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from tests.conftest import NODE
from tests.crash.conftest import (
    API_READ_TIMEOUT,
    NODE_PATH,
    RECOVER_BOUND,
    RETRY_ATTEMPTS,
    STOP_TIMEOUT,
    AgentProcess,
    Row,
    Scene,
    image_exists,
    wait_until,
)

CYCLE = ["Cordoning", "PruningContainers", "PruningDangling", "PruningBuildCache", "PruningAll",
         "Uncordoning"]


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


def land_late(scene: Scene, agent: AgentProcess, step: str, journal_after: str,
              sent: dict[str, float]) -> None:
    """The node PATCH being served is held until the agent has given up on it (it logged the read
    timeout), then applied; the retry's read is held until that late write has landed, so the
    retry sees it."""
    sent["t"] = time.monotonic()
    landed = threading.Event()
    scene.watch.after_state(journal_after, landed.set)
    scene.watch.before("GET", lambda: landed.wait(30))  # the next read is the retry's
    agent.wait_for(rf"{step}: attempt 1 failed \(ReadTimeoutError", timeout=30)


def test_api_read_timeouts_whose_writes_land_late(scene: Scene, agents, row: Row) -> None:
    row.case = f"API read timeout ({API_READ_TIMEOUT} s) on the cordon and the uncordon; the writes land late"
    agent = agents(scene.env())
    cordon: dict[str, float] = {}
    fault: dict[str, float] = {}
    scene.watch.before("PATCH", lambda: land_late(scene, agent, "Cordoning", "Cordoning", cordon),
                       journal=None)
    scene.watch.before("PATCH", lambda: land_late(scene, agent, "Uncordoning", "Idle", fault),
                       journal="PruningAll")
    agent.start()
    assert agent.wait(90) == 0, agent.log
    assert agent.count(r"attempt 1 failed \(ReadTimeoutError") == 2, agent.log
    assert full_cycle(agent), agent.log
    cordons = [r.journal() for r in scene.watch.records if r.state == "Cordoning"]
    assert len(cordons) == 2 and all(j["cordoned_by_us"] for j in cordons), cordons  # still ours on retry
    row.invariants = scene.check_handed_back() + ["the retried cordon is still ours", "exit 0"]
    row.recover, row.since = scene.watch.recovered_after(fault["t"], False), "uncordon sent"
    row.note = "each write landed after the agent had given up on it, before its retry read the node"


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
    row.case = (f"API server down from PruningAll until after {RETRY_ATTEMPTS + 1} failed uncordon attempts "
                f"(RETRY_ATTEMPTS {RETRY_ATTEMPTS})")
    agent = agents(scene.env()).start()
    agent.wait_for(r"images can go")  # PruningAll's journal write has been answered
    scene.cluster.stop()  # PruningAll goes on for ~2.4 s without the API server
    down = time.monotonic()
    try:
        # more failed attempts than any other step is allowed: the uncordon is patient
        agent.wait_for(rf"Uncordoning: attempt {RETRY_ATTEMPTS + 1} failed", timeout=30)
        assert agent.running and scene.watch.last().unschedulable
    finally:
        scene.cluster.start()
    back = time.monotonic()
    assert agent.wait(60) == 0, agent.log
    row.invariants = scene.check_handed_back() + [f"kept retrying past RETRY_ATTEMPTS ({RETRY_ATTEMPTS})",
                                                  "exit 0"]
    recover = scene.watch.recovered_after(back, False)
    assert recover is not None and recover <= RECOVER_BOUND
    row.recover, row.since = recover, "API server back"
    row.note = f"outage {back - down:.1f} s; {recover + back - down:.2f} s from the outage's start"


# From dockerd stopped to the node handed back: the failing step's retries (waits <= 0.5 s) come first.
FAILED_STEP_BOUND = RECOVER_BOUND + (RETRY_ATTEMPTS - 1) * 0.5
# The agent's API read timeout while dockerd stops inside the fake's reply to a write (about 1 s;
# up to the bed's 20 s grace in theory); the default 15 s, below the 25 s stop bound.
DOCKERD_STOPPING = {"FSM_CLEANER_API_TIMEOUT_SECONDS": 15, "FSM_CLEANER_STOP_TIMEOUT_SECONDS": 25}


def stop_docker_as_pruning_all_begins(scene: Scene, agent: AgentProcess) -> dict[str, float]:
    """dockerd is stopped while the agent waits for the reply to its PruningAll journal write: PruningAll
    then starts with Docker gone. Returns a dict that gets the time dockerd was down under "t"."""
    stopped: dict[str, float] = {}

    def stop() -> None:
        scene.bed.stop_daemon()
        stopped["t"] = time.monotonic()
    scene.watch.after_state("PruningAll", stop)
    agent.start()
    return stopped


def test_docker_stopped_during_pruning_all_once(scene: Scene, agents, row: Row) -> None:
    row.case = "dockerd stopped as PruningAll begins (--once), then a restart"
    agent = agents(scene.env(**DOCKERD_STOPPING))
    try:
        stopped = stop_docker_as_pruning_all_begins(scene, agent)
        code = agent.wait(60)
        assert code == 1, agent.log
        assert "PruningAll failed: " in agent.log and "cycle FAILED (PruningAll: " in agent.log, agent.log
        assert agent.states()[-2:] == ["Uncordoning", "Idle"]
        recover = scene.watch.recovered_after(stopped["t"], False)
        assert recover is not None and recover <= FAILED_STEP_BOUND, recover
    finally:
        scene.bed.start_daemon()
    wait_until(scene.live_ok, 30, "the running container is back", interval=0.2)
    row.invariants = scene.check_handed_back() + ["error logged", "exit 1"]
    assert all(image_exists(scene.bed, i) for i in scene.old_images)  # nothing removed with dockerd gone
    restarted = agents(scene.env(DOCKER_IMAGE_CLEANER_DELAY_SECONDS=0)).start()
    assert restarted.wait(60) == 0, restarted.log
    # the restart's cycle does the work the failed one could not
    assert full_cycle(restarted) and "cycle done" in restarted.log, restarted.log
    assert not any(image_exists(scene.bed, i) for i in scene.old_images), restarted.log
    scene.check_handed_back()
    row.invariants += ["restart: a full cycle removes the old images, exit 0"]
    row.recover, row.since = recover, "dockerd stopped"


def test_docker_stopped_during_pruning_all_loop(scene: Scene, agents, row: Row) -> None:
    row.case = "dockerd stopped as PruningAll begins (loop, 2 s interval), back after the failed cycle"
    agent = agents(scene.env(DOCKER_IMAGE_CLEANER_INTERVAL_SECONDS=2, **DOCKERD_STOPPING), once=False)
    try:
        stopped = stop_docker_as_pruning_all_begins(scene, agent)
        agent.wait_for(r"cycle FAILED \(PruningAll: ")
        scene.wait_handed_back()
        recover = scene.watch.recovered_after(stopped["t"], False)
    finally:
        scene.bed.start_daemon()
    back = len(agent.lines)
    assert all(image_exists(scene.bed, i) for i in scene.old_images)  # nothing removed with dockerd gone
    # the loop carries on: a cycle after dockerd is back does the work the failed one could not
    # (a tick while dockerd was still starting may fail in Measuring first)
    agent.wait_for(r"cycle done", start=back, timeout=60)
    assert "PruningAll" in agent.states(back), agent.log
    assert not any(image_exists(scene.bed, i) for i in scene.old_images), agent.log
    assert agent.running
    t = agent.signal(signal.SIGTERM)
    assert agent.wait(STOP_TIMEOUT + 5) == 0, agent.log
    assert agent.exited_at - t <= STOP_TIMEOUT
    wait_until(scene.live_ok, 30, "the running container is back", interval=0.2)
    row.invariants = scene.check_handed_back() + ["error logged", "next cycle after dockerd is back removes "
                                                  "the old images", "SIGTERM: exit 0"]
    assert recover is not None and recover <= FAILED_STEP_BOUND, recover
    row.recover, row.since = recover, "dockerd stopped"
    assert image_exists(scene.bed, scene.live_image)
