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
    spec_changes,
    wait_until,
)

CYCLE = ["TakingSlot", "Cordoning", "PruningContainers", "PruningDangling", "PruningBuildCache", "PruningAll",
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
    # TakingSlot's journal write is the first PATCH, the cordon the next
    assert agent.count(r"(TakingSlot|Cordoning): attempt \d failed \(Kubernetes API 500") == 3
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
                       journal="TakingSlot")
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
def test_a_concurrent_writer_between_the_cordons_read_and_write(scene: Scene, agents, row: Row,
                                                                 writer: str) -> None:
    row.case = {"label": "a writer adds a label between the cordon's GET and PATCH (no conflict: both land)",
                "admin-cordon": "422: an admin cordons between the cordon's GET and PATCH"}[writer]
    fault: dict[str, float] = {}

    def concurrent_write() -> None:
        fault["t"] = time.monotonic()

        def change(node: dict) -> None:
            if writer == "label":
                node["metadata"]["labels"]["crash-test/writer"] = "was-here"
            else:
                node["spec"]["unschedulable"] = True
        scene.cluster.mutate(NODE, change)
    scene.watch.before("PATCH", concurrent_write, journal="TakingSlot")
    agent = agents(scene.env()).start()
    assert agent.wait(60) == 0, agent.log
    assert full_cycle(agent), agent.log
    if writer == "label":  # the write's tests are on our data only: someone else's change is no conflict
        assert agent.count(r"attempt \d failed") == 0, agent.log
        row.invariants = scene.check_handed_back(labels={"crash-test/writer": "was-here"})
        row.invariants.insert(2, "writer's label kept")
        row.recover, row.since = scene.watch.recovered_after(fault["t"], False), "label written"
        row.note = "handed back at the end of the (completed) cycle; no retry"
        row.invariants.append("no retry, exit 0")
        return
    # the test of spec.unschedulable fails: re-read, the cordon is the admin's, so it is left in place
    assert agent.count(r"Cordoning: attempt 1 failed \(NodeChanged: node node-1 changed since it was") == 1
    row.invariants = scene.check_handed_back(unschedulable=True)
    assert scene.watch.last().journal()["was_unschedulable"] is True
    assert not [r for r in scene.cluster.requests  # the admin's cordon never undone, not even tried
                if r.method == "PATCH" and ("/spec/unschedulable", False) in spec_changes(r.body)]
    row.invariants.insert(0, "admin's cordon kept")
    row.note = "pre-cycle state here: cordoned by the admin"
    row.invariants.append("re-read after 422, exit 0")


# A busy node (issue 9 item 8): the kubelet updates the node's status ten times a second, and the API
# server takes 150 ms to apply a PATCH. Every write is held that long, so a precondition on the whole
# object's resourceVersion always loses (409 for UNCORDON_RETRY_SECONDS, the node left cordoned).
CHURN_SECONDS, PATCH_LATENCY = 0.1, 0.15


def test_busy_node_uncordon(scene: Scene, agents, row: Row) -> None:
    row.case = (f"busy node: status updated every {CHURN_SECONDS * 1000:.0f} ms, PATCH latency "
                f"{PATCH_LATENCY * 1000:.0f} ms, from the cordon on")
    stop = threading.Event()
    updates = [0]

    def kubelet() -> None:
        while not stop.wait(CHURN_SECONDS):
            updates[0] += 1
            scene.cluster.mutate(NODE, lambda node, n=updates[0]: node["status"].update(heartbeat=str(n)))

    def busy() -> None:
        scene.cluster.fail("PATCH", path=f"{NODE_PATH}$", status=None, delay=PATCH_LATENCY, times=1000)
        threading.Thread(target=kubelet, daemon=True).start()
    scene.watch.after_state("Cordoning", busy)
    sent: dict[str, float] = {}
    scene.watch.before("PATCH", lambda: sent.setdefault("t", time.monotonic()), journal="PruningAll")
    agent = agents(scene.env()).start()
    try:
        assert agent.wait(90) == 0, agent.log
    finally:
        stop.set()
    assert full_cycle(agent), agent.log
    assert agent.count(r"attempt \d+ failed") == 0, agent.log  # not one write lost a race
    assert updates[0] >= 10, updates  # the status really churned while the cycle ran
    row.invariants = scene.check_handed_back() + ["no retry", "exit 0"]
    row.recover, row.since = scene.watch.recovered_after(sent["t"], False), "uncordon sent"
    row.note = f"{updates[0]} status updates during the cycle"


NOT_FOUND = r"node node-1 not found \(404\): .*the next cycle reads it again"


def test_node_deleted_mid_cycle_then_registered_again(scene: Scene, agents, row: Row) -> None:
    row.case = "node deleted (404) mid-cycle, loop mode; registered again under the same name"
    deleted: dict[str, float] = {}

    def delete() -> None:
        scene.cluster.delete_node(NODE)
        deleted["t"] = time.monotonic()
    scene.watch.before("PATCH", delete, journal="PruningContainers")  # PruningDangling's journal write
    agent = agents(scene.env(DOCKER_IMAGE_CLEANER_INTERVAL_SECONDS=1), once=False).start()
    gone = agent.wait_for(NOT_FOUND)
    # the next cycle reads the node again (and, finding none, cordons and removes nothing)
    tick = agent.wait_for(r"Idle -> Measuring", start=gone.index)
    agent.wait_for(r"TakingSlot failed: .*not found", start=tick.index)
    assert agent.running and agent.count("Traceback") == 0, agent.log
    assert all(image_exists(scene.bed, i) for i in scene.old_images)  # nothing removed without a cordon
    records = len(scene.watch.records)
    scene.cluster.add_node(NODE, labels=scene.labels_before, annotations=scene.annotations_before)
    registered = len(agent.lines)
    agent.wait_for(r"cycle done", start=registered, timeout=60)
    after = scene.watch.records[records:]
    assert [r.state for r in after] == ["TakingSlot", "Cordoning", "PruningContainers", "PruningDangling",
                                        "PruningBuildCache", "PruningAll", "Idle"], after
    assert all(r.unschedulable for r in after[1:-1]) and not after[-1].unschedulable
    assert not scene.cluster.leases("default")[0]["spec"].get("holderIdentity")  # the slot freed
    assert not any(image_exists(scene.bed, i) for i in scene.old_images), agent.log  # removed, cordoned
    t = agent.signal(signal.SIGTERM)
    assert agent.wait(STOP_TIMEOUT + 5) == 0, agent.log
    assert agent.exited_at - t <= STOP_TIMEOUT
    row.invariants = scene.check_handed_back() + [
        "404 logged; the next cycle reads the node again", "nothing removed while it was gone",
        "registered again: cordoned before any removal", "SIGTERM: exit 0"]
    row.note = f"{agent.count(NOT_FOUND)} 404s logged while the node was gone"


def test_api_server_down_during_uncordoning(scene: Scene, agents, row: Row) -> None:
    row.case = (f"API server down from PruningAll until after {RETRY_ATTEMPTS + 1} failed uncordon attempts "
                f"(RETRY_ATTEMPTS {RETRY_ATTEMPTS})")
    agent = agents(scene.env()).start()
    agent.wait_for(r"removal plan: ")  # PruningAll's journal write has been answered
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
    restart_removes_the_old_images(scene, agents, row)
    row.recover, row.since = recover, "dockerd stopped"


def restart_removes_the_old_images(scene: Scene, agents, row: Row) -> None:
    """Nothing was removed while the daemon was gone; the restart's cycle does the work the failed one
    could not."""
    assert all(image_exists(scene.bed, i) for i in scene.old_images)
    restarted = agents(scene.env(DOCKER_IMAGE_CLEANER_DELAY_SECONDS=0)).start()
    assert restarted.wait(60) == 0, restarted.log
    assert full_cycle(restarted) and "cycle done" in restarted.log, restarted.log
    assert not any(image_exists(scene.bed, i) for i in scene.old_images), restarted.log
    scene.check_handed_back()
    row.invariants += ["restart: a full cycle removes the old images, exit 0"]


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
