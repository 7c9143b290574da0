"""A cordon slot whose holder died without a restart (its node gone): it frees itself SLOT_LEASE_SECONDS
after the holder's last renewal, and another node's agent takes it. Two real agent processes, the
test-bed dockerd and the fake API server."""

from __future__ import annotations

import signal
from datetime import datetime

from tests.conftest import NODE
from tests.crash.conftest import AgentProcess, Row, Scene, image_exists, wait_until
from tests.crash.test_kill import SLOT0, kill_at, slot_holders

LEASE_SECONDS = 6
OTHER = "node-b"


def lease_time(scene: Scene, field: str) -> float:
    value = scene.cluster.lease("default", SLOT0)["spec"][field]
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_a_dead_holders_slot_expires_and_another_node_takes_it(scene: Scene, agents, row: Row) -> None:
    row.case = (f"SIGKILL of the slot holder mid-PruningAll, its node gone (no restart); MAX_CORDONED 1, "
                f"SLOT_LEASE_SECONDS {LEASE_SECONDS}: another node's agent waits, then takes the slot")
    scene.cluster.add_node(OTHER)
    holder = agents(scene.env(FSM_CLEANER_SLOT_LEASE_SECONDS=LEASE_SECONDS))
    killed = kill_at(scene, holder, "PruningAll")
    holder.start()
    assert holder.wait(60) == -signal.SIGKILL, holder.log
    assert slot_holders(scene) == {SLOT0: NODE}
    last_renewal = lease_time(scene, "renewTime")
    scene.cluster.delete_node(NODE)  # the node went with its agent: nothing will restart there

    other: AgentProcess = agents(scene.env(
        FSM_CLEANER_NODE_NAME=OTHER, POD_NAME="agent-b", FSM_CLEANER_SLOT_LEASE_SECONDS=LEASE_SECONDS,
        FSM_CLEANER_INTERVAL_SECONDS=1, FSM_CLEANER_STATE_DIR=str(scene.tmp / "state-b"),
        FSM_CLEANER_HEARTBEAT_FILE=str(scene.tmp / "heartbeat-b")), once=False).start()
    waited = other.wait_for(r"TakingSlot: no cordon slot free \(1 held, by node-1\)", timeout=30)
    took = other.wait_for(r"TakingSlot: holding fsm-cleaner-slot-0 after waiting \d+ s", timeout=60)
    assert waited.t < took.t
    taken_at = lease_time(scene, "acquireTime")
    assert LEASE_SECONDS <= taken_at - last_renewal <= LEASE_SECONDS + 5, taken_at - last_renewal
    other.wait_for(r"Uncordoning -> Idle", timeout=60, start=took.index)
    wait_until(lambda: slot_holders(scene) == {}, 10, "the slot freed by the other agent")
    assert not any(image_exists(scene.bed, i) for i in scene.old_images[1:]), other.log
    assert image_exists(scene.bed, scene.live_image)
    # the other node was cordoned while it removed images, and handed back; never two cordons at once
    assert frozenset({OTHER}) in scene.cluster.cordoned_history
    assert max(len(c) for c in scene.cluster.cordoned_history) == 1
    assert not scene.cluster.node(OTHER)["spec"].get("unschedulable")
    other.signal(signal.SIGTERM)
    assert other.wait(30) == 0, other.log
    row.invariants = [
        "the other agent waited while the dead holder's slot was live (images kept for a slot)",
        f"took it {taken_at - last_renewal:.1f} s after the last renewal (>= {LEASE_SECONDS} s)",
        "then cordoned its node, removed the old images, handed back, freed the slot",
        "never two nodes cordoned", "live image kept", "SIGTERM: exit 0"]
    row.recover, row.since = took.t - killed["t"], "SIGKILL of the holder"
    row.note = f"counted to the slot taken; the other agent waited {took.t - waited.t:.1f} s"
