"""SIGTERM in every state the agent passes through: it hands the node back and exits 0 within
FSM_CLEANER_STOP_TIMEOUT_SECONDS (10 here); a second signal exits at once and the next start
reconciles.

How each signal lands in its state (deterministically, no sleeps):
  Reconciling        the startup GET is held 1 s by a delay fault; signalled when it arrives
  Idle               signalled on the "nothing to do" log line (the loop then waits INTERVAL)
  Measuring          absolute mode with a `du` that hangs; signalled on "Idle -> Measuring"
  TakingSlot         its journal PATCH (the cycle's first) is held 1 s; signalled when it arrives
  Cordoning          the cordon PATCH is held 1 s; signalled when it arrives
  PruningContainers  signalled after its journal write has been applied, before the reply
  PruningDangling    likewise
  PruningAll         signalled on the first "removed image" log line; DELAY_SECONDS is 60 there, so
                     the next removal cannot come before the signal has been handled
  Uncordoning        the uncordon PATCH is held 1 s; signalled when it arrives
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from fsm_cleaner.journal import ANNOTATION, Journal
from tests.conftest import NODE, agent_env
from tests.crash.conftest import (
    API_READ_TIMEOUT,
    NODE_PATH,
    STOP_TIMEOUT,
    AgentProcess,
    NodeWatch,
    Row,
    Scene,
    image_exists,
)

HELD = 1.0  # seconds a delay fault holds a request (below the 1.5 s read timeout)


def stopped_within_bound(agent: AgentProcess, row: Row, t_signal: float) -> float:
    code = agent.wait(STOP_TIMEOUT + 20)
    took = agent.exited_at - t_signal
    assert code == 0, agent.log
    assert took <= STOP_TIMEOUT, f"stopped {took:.1f} s after the signal (bound {STOP_TIMEOUT} s)"
    assert agent.states()[-1] == "Stopped", agent.log
    row.invariants += ["exit 0", f"exit within {STOP_TIMEOUT} s"]
    row.note = f"exit {took:.2f} s after SIGTERM"
    return took


def sigterm_now(agent: AgentProcess, sent: dict[str, float]):
    def send() -> None:
        sent["t"] = agent.signal(signal.SIGTERM)
    return send


CYCLE_STATES = ["TakingSlot", "Cordoning", "PruningContainers", "PruningDangling", "PruningBuildCache",
                "PruningAll", "Uncordoning"]


@pytest.mark.parametrize("state", CYCLE_STATES)
def test_sigterm_mid_cycle(scene: Scene, agents, row: Row, state: str) -> None:
    row.case = f"SIGTERM in {state}"
    # In PruningAll the signal comes with the first removal; the pause before the next one (cut short
    # by the stop) is long enough that only a lost signal lets a second removal happen.
    agent = agents(scene.env(**({"DOCKER_IMAGE_CLEANER_DELAY_SECONDS": 60} if state == "PruningAll" else {})))
    sent: dict[str, float] = {}
    send = sigterm_now(agent, sent)
    if state in ("TakingSlot", "Cordoning"):  # signalled while its PATCH is held 1 s
        def hold_and_send_first() -> None:
            scene.cluster.fail("PATCH", status=None, delay=HELD)
            send()
        journal = None if state == "TakingSlot" else "TakingSlot"  # what the node says before the PATCH
        scene.watch.before("PATCH", hold_and_send_first, journal=journal)
    elif state in ("PruningContainers", "PruningDangling", "PruningBuildCache"):
        scene.watch.after_state(state, send)
    elif state == "PruningAll":
        agent.on_line(r"removed image ", send)
    else:  # Uncordoning: signalled while its write is held
        def hold_and_send() -> None:
            scene.cluster.fail("PATCH", status=None, delay=HELD)
            send()
        scene.watch.before("PATCH", hold_and_send, journal="PruningAll")
    agent.start()
    stopped_within_bound(agent, row, wait_sent(sent, agent))
    entered = agent.states()
    assert entered[entered.index(state) + 1:][:2] == (["Stopped"] if state == "Uncordoning"
                                                     else ["Uncordoning", "Stopped"]), agent.log
    row.invariants = scene.check_handed_back() + row.invariants
    client = scene.bed.client()
    if state in ("TakingSlot", "Cordoning", "PruningContainers"):  # no removal once the signal is in
        assert client.containers.get(scene.stopped_container)
    if state in ("TakingSlot", "Cordoning", "PruningContainers", "PruningDangling"):
        assert image_exists(scene.bed, scene.dangling)
        assert all(image_exists(scene.bed, i) for i in scene.old_images)
        row.invariants.append("no removal after the signal")
    if state == "PruningAll":
        assert "stopped early" in agent.log
        # the signal came with the first removal: the other two old images stay
        assert sum(image_exists(scene.bed, i) for i in scene.old_images) == 2, agent.log
        row.invariants.append("no removal after the signal")
    recover = scene.watch.recovered_after(sent["t"], False)
    assert recover is not None
    row.recover, row.since = recover, "SIGTERM"


def wait_sent(sent: dict[str, float], agent: AgentProcess) -> float:
    deadline = time.monotonic() + 60
    while "t" not in sent:
        assert time.monotonic() < deadline and agent.running, f"the signal was never sent:\n{agent.log}"
        time.sleep(0.02)
    return sent["t"]


def test_sigterm_in_reconciling_still_undoes_a_crashed_cycle(bed, fake, tmp_path, agents, row: Row) -> None:
    row.case = "SIGTERM in Reconciling (crashed cycle's cordon on the node)"
    left = Journal("PruningAll", cordoned_by_us=True, was_unschedulable=False, since="2026-11-29T10:00:00Z",
                   holder="pod-before").encode()

    def crashed(node: dict) -> None:
        node["spec"]["unschedulable"] = True
        node["metadata"]["annotations"][ANNOTATION] = left
    fake.mutate(NODE, crashed)
    watch = NodeWatch(fake)
    agent = agents(agent_env(bed, tmp_path, DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH=100,
                             FSM_CLEANER_STOP_TIMEOUT_SECONDS=STOP_TIMEOUT,
                             FSM_CLEANER_API_TIMEOUT_SECONDS=API_READ_TIMEOUT))
    sent: dict[str, float] = {}
    fake.fail("GET", path=f"/nodes/{NODE}$", status=None, delay=HELD)  # the startup read takes 1 s
    watch.before("GET", sigterm_now(agent, sent))
    agent.start()
    stopped_within_bound(agent, row, wait_sent(sent, agent))
    assert agent.states() == ["Reconciling", "Stopped"], agent.log
    node = watch.last()
    assert not node.unschedulable and node.state == "Idle"
    row.invariants = ["schedulable as before", "journal Idle"] + row.invariants
    row.recover, row.since = watch.recovered_after(sent["t"], False), "SIGTERM"


def test_sigterm_while_idle_exits_at_once(docker_bed, fake, tmp_path, agents, row: Row) -> None:
    row.case = "SIGTERM in Idle (loop, waiting for the next tick)"
    agent = agents(agent_env(docker_bed, tmp_path, DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH=100,
                             DOCKER_IMAGE_CLEANER_INTERVAL_SECONDS=300,
                             FSM_CLEANER_STOP_TIMEOUT_SECONDS=STOP_TIMEOUT,
                             FSM_CLEANER_API_TIMEOUT_SECONDS=API_READ_TIMEOUT), once=False)
    agent.start()
    agent.wait_for(r"nothing to do")
    t = agent.signal(signal.SIGTERM)
    took = stopped_within_bound(agent, row, t)
    assert took < 2, f"{took:.2f} s: an idle agent should exit at once"
    assert agent.states()[-2:] == ["Idle", "Stopped"]
    assert [r for r in fake.requests if r.method != "GET"] == []
    row.invariants = ["node untouched", "exit at once (< 2 s)"] + row.invariants
    row.recover, row.since = 0.0, "SIGTERM"


def test_sigterm_in_measuring(docker_bed, fake, tmp_path, agents, row: Row, slow_du) -> None:
    row.case = "SIGTERM in Measuring (absolute mode, du hangs)"
    image = docker_bed.build_image("crash/old:0", 1)
    env = agent_env(docker_bed, tmp_path, DOCKER_IMAGE_CLEANER_THRESHOLD_TYPE="absolute",
                    DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH="1Mi", FSM_CLEANER_STOP_TIMEOUT_SECONDS=STOP_TIMEOUT,
                    FSM_CLEANER_API_TIMEOUT_SECONDS=API_READ_TIMEOUT)
    env["PATH"] = f"{slow_du}:{env['PATH']}"
    agent = agents(env)
    sent: dict[str, float] = {}
    agent.on_line(r"Idle -> Measuring", sigterm_now(agent, sent))
    agent.start()
    took = stopped_within_bound(agent, row, wait_sent(sent, agent))
    assert took < 2, f"{took:.2f} s: the measurement should be cut short"
    assert agent.states()[-2:] == ["Measuring", "Stopped"], agent.log
    assert [r for r in fake.requests if r.method != "GET"] == []  # never cordoned
    assert image_exists(docker_bed, image)
    row.invariants = ["node untouched", "nothing removed", "du cut short (< 2 s)"] + row.invariants
    row.recover, row.since = 0.0, "SIGTERM"


def test_second_signal_exits_at_once_and_the_next_start_reconciles(scene: Scene, agents, row: Row) -> None:
    row.case = "2nd SIGTERM while the uncordon is stuck; restart"
    agent = agents(scene.env())
    first: dict[str, float] = {}
    second: dict[str, float] = {}
    agent.on_line(r"removed image ", sigterm_now(agent, first))

    def stuck_then_signal() -> None:
        scene.cluster.fail("PATCH", status=None, delay=30, drop=True)  # the uncordon never lands
        second["t"] = agent.signal(signal.SIGTERM)
    scene.watch.before("PATCH", stuck_then_signal, journal="PruningAll")
    agent.start()
    code = agent.wait(STOP_TIMEOUT + 20)
    assert code == 128 + signal.SIGTERM, agent.log
    took = agent.exited_at - second["t"]
    assert took < 1.5, f"exited {took:.2f} s after the second signal"
    assert "second signal" in agent.log
    at_exit = scene.watch.last()
    assert at_exit.unschedulable and at_exit.state == "PruningAll"
    scene.cluster.clear_faults()
    restarted = agents(scene.env(DOCKER_IMAGE_CLEANER_DELAY_SECONDS=0)).start()
    assert restarted.wait(60) == 0, restarted.log
    assert "our cordon from PruningAll undone" in restarted.log
    row.invariants = [f"exit {code} at once ({took:.2f} s)"] + scene.check_handed_back() + [
        "restart reconciles, exit 0"]
    recover = scene.watch.recovered_after(second["t"], False)
    assert recover is not None
    row.recover, row.since = recover, "2nd SIGTERM"
    row.note = "includes the restart"
    assert json.loads(scene.cluster.node(NODE)["metadata"]["annotations"][ANNOTATION])["state"] == "Idle"


def test_sigterm_with_a_slow_api_server_keeps_the_bound(scene: Scene, agents, row: Row) -> None:
    row.case = "SIGTERM in PruningAll, API server slow (GET 2 s, PATCH 2 s, Event 8 s)"
    agent = agents(scene.env(FSM_CLEANER_API_TIMEOUT_SECONDS=STOP_TIMEOUT - 5))  # the most the bound allows
    sent: dict[str, float] = {}
    send = sigterm_now(agent, sent)
    before_signal: list[int] = []

    def slow_api() -> None:
        # The uncordon's read and write take 4 s of the bound; the Uncordoned Event, slower than
        # what is left, must be cut short rather than hold the exit.
        scene.cluster.fail("GET", path=f"/nodes/{NODE}$", status=None, delay=2)
        scene.cluster.fail("PATCH", status=None, delay=2)
        scene.cluster.fail("POST", path="/events$", status=None, delay=8)
        before_signal.append(len(scene.cluster.requests))
        send()
    agent.on_line(r"removed image ", slow_api)
    agent.start()
    stopped_within_bound(agent, row, wait_sent(sent, agent))  # within 10 s: the Event was cut short
    after = [(r.method, r.path) for r in scene.cluster.requests[before_signal[0]:]]
    leases = "/apis/coordination.k8s.io/v1/namespaces/default/leases"
    assert after == [("GET", NODE_PATH), ("PATCH", NODE_PATH), ("POST", "/api/v1/namespaces/default/events"),
                     ("GET", leases), ("PUT", f"{leases}/fsm-cleaner-slot-0")], after  # the slot freed last
    row.invariants = scene.check_handed_back() + row.invariants + ["the slow Event cut short"]
    row.recover, row.since = scene.watch.recovered_after(sent["t"], False), "SIGTERM"
