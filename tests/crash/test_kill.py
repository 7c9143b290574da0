"""SIGKILL at every journaled step, then a restart: the new process reconciles from the journal.

The kill is deterministic: NodeWatch runs it inside the fake API server right after the agent's
PATCH for that step has been applied and before the reply is sent, so the write has landed and
the agent never learns it (the worst moment). "Uncordoning, before its write" kills on the
Uncordoning state's GET instead: pruning is done, the journal still says PruningAll.
"""

from __future__ import annotations

import re
import signal

import pytest

from tests.conftest import NODE
from tests.crash.conftest import (
    RECOVER_BOUND,
    AgentProcess,
    Row,
    Scene,
    image_exists,
    make_scene,
    spec_changes,
)

# (case id, journal state whose write triggers the kill or None, what the journal says at the kill)
KILL_POINTS = [
    ("TakingSlot", "TakingSlot", "TakingSlot"),
    ("Cordoning", "Cordoning", "Cordoning"),
    ("PruningContainers", "PruningContainers", "PruningContainers"),
    ("PruningDangling", "PruningDangling", "PruningDangling"),
    ("PruningBuildCache", "PruningBuildCache", "PruningBuildCache"),
    ("PruningAll", "PruningAll", "PruningAll"),
    ("Uncordoning-before-write", None, "PruningAll"),
    ("Uncordoning-after-write", "Idle", "Idle"),
]


SLOT0 = "fsm-cleaner-slot-0"


def slot_holders(scene: Scene) -> dict[str, str]:
    """The cordon slots' holders (the agents here run in the default namespace)."""
    return {lease["metadata"]["name"]: lease["spec"]["holderIdentity"]
            for lease in scene.cluster.leases("default") if lease["spec"].get("holderIdentity")}


def kill_at(scene: Scene, agent: AgentProcess, after_write_of: str | None) -> dict[str, float]:
    """Arm the kill; returns a dict that gets the kill time under "t"."""
    killed: dict[str, float] = {}

    def kill() -> None:
        killed["t"] = agent.signal(signal.SIGKILL)

    if after_write_of is None:
        scene.watch.before("GET", kill, journal="PruningAll")  # the first read after it: Uncordoning's
    else:
        scene.watch.after_state(after_write_of, kill)
    return killed


def restart_and_check(scene: Scene, agents, row: Row, t_kill: float, journal_at_kill: str) -> AgentProcess:
    restarted = agents(scene.env(DOCKER_IMAGE_CLEANER_DELAY_SECONDS=0)).start()
    code = restarted.wait(60)
    assert code == 0, restarted.log
    row.invariants = scene.check_handed_back()
    if journal_at_kill != "Idle":
        # reconciled from the journal: "our cordon from X undone" / "cycle in X ended; ... left so"
        assert re.search(rf"Reconciling: .*(from|in) {journal_at_kill}\b", restarted.log), restarted.log
        row.invariants.append("reconciled from the journal")
    assert restarted.states()[:2] == ["Reconciling", "Idle"] and restarted.states()[-1] == "Idle"
    assert "Measuring" in restarted.states()
    row.invariants.append("restart: a normal cycle, exit 0")
    recover = scene.watch.recovered_after(t_kill, scene.unschedulable_before)
    assert recover is not None and recover <= RECOVER_BOUND, recover
    row.recover, row.since = recover, "SIGKILL"
    return restarted


@pytest.mark.parametrize("case,after_write_of,journal_at_kill", KILL_POINTS, ids=[k[0] for k in KILL_POINTS])
def test_sigkill_then_restart(scene: Scene, agents, row: Row, case: str, after_write_of: str | None,
                              journal_at_kill: str) -> None:
    row.case = f"SIGKILL in {case}" + (" (right after its journal write)" if after_write_of else "")
    agent = agents(scene.env())
    killed = kill_at(scene, agent, after_write_of)
    agent.start()
    assert agent.wait(60) == -signal.SIGKILL, agent.log
    assert "t" in killed, agent.log
    at_kill = scene.watch.last()
    assert at_kill.state == journal_at_kill
    # ours from the cordon until the release lands
    assert at_kill.unschedulable is (journal_at_kill not in ("Idle", "TakingSlot"))
    # the cordon slot is taken after TakingSlot's journal write, and freed after the uncordon has landed
    held_at_kill = slot_holders(scene)
    assert held_at_kill == ({} if journal_at_kill == "TakingSlot" else {SLOT0: NODE}), held_at_kill
    if case == "PruningContainers":
        # the write landed, the prune had not begun
        assert scene.bed.client().containers.get(scene.stopped_container)
    restart_and_check(scene, agents, row, killed["t"], journal_at_kill)
    assert slot_holders(scene) == {}
    if held_at_kill:
        row.invariants.append("the slot it held freed")
    if case == "Uncordoning-before-write":
        assert not any(image_exists(scene.bed, i) for i in scene.old_images)
    row.note = f"journal at the kill: {journal_at_kill}"


def test_admin_cordon_survives_a_cycle_a_kill_and_a_restart(docker_bed, fake, tmp_path, agents,
                                                           row: Row) -> None:
    row.case = "admin cordon: SIGKILL in PruningAll, restart"
    scene = make_scene(docker_bed, fake, tmp_path, cordoned=True)
    agent = agents(scene.env())
    killed = kill_at(scene, agent, "PruningAll")
    agent.start()
    assert agent.wait(60) == -signal.SIGKILL, agent.log
    at_kill = scene.watch.last()
    assert at_kill.state == "PruningAll" and at_kill.unschedulable
    assert at_kill.journal()["cordoned_by_us"] is False
    restarted = restart_and_check(scene, agents, row, killed["t"], "PruningAll")
    assert "PruningAll" in restarted.states(), restarted.log  # a full cycle after the restart
    # and no write ever touched spec.unschedulable
    patches = [r for r in fake.requests if r.method == "PATCH"]
    assert patches and not [r for r in patches if spec_changes(r.body)]
    row.invariants.append("no write to spec.unschedulable")
    row.note = "node unschedulable before the cycle (admin)"
