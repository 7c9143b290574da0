"""What a starting agent finds on the node: docker-image-cleaner's cordon, an unreadable journal."""

from __future__ import annotations

import time

from fsm_cleaner.journal import ANNOTATION, LEGACY_ANNOTATION
from tests.conftest import agent_env
from tests.crash.conftest import Row, make_scene


def test_old_cleaners_cordon_is_undone(docker_bed, fake, tmp_path, agents, row: Row) -> None:
    row.case = "old cleaner's leftover: unschedulable + image-cleaner-cordoned"
    scene = make_scene(docker_bed, fake, tmp_path, cordoned=True, annotations={LEGACY_ANNOTATION: "true"})
    agent = agents(scene.env(DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH=100))  # no cycle: only the start
    t0 = time.monotonic()
    agent.start()
    assert agent.wait(60) == 0, agent.log
    assert "docker-image-cleaner's cordon undone" in agent.log
    row.invariants = scene.check_handed_back(unschedulable=False, journal=False)
    node = scene.watch.last()
    assert LEGACY_ANNOTATION not in node.annotations and ANNOTATION not in node.annotations
    row.invariants.insert(1, "legacy annotation removed")
    row.recover, row.since = scene.watch.recovered_after(t0, False), "agent start"


def test_unreadable_journal_is_kept_until_a_cycle_succeeds(docker_bed, fake, tmp_path, agents,
                                                          row: Row) -> None:
    row.case = "unreadable journal on an unschedulable node; a failed cycle, then a good one"
    garbage = "{half-written by who knows"
    scene = make_scene(docker_bed, fake, tmp_path, cordoned=True, annotations={ANNOTATION: garbage})

    # 1. A cycle that fails (Docker unreachable): the node and the journal are left as they were.
    failing = agents(agent_env(docker_bed, tmp_path, DOCKER_HOST="unix:///nonexistent/docker.sock",
                               DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH=scene.high,
                               FSM_CLEANER_RETRY_ATTEMPTS=2)).start()
    assert failing.wait(60) == 1, failing.log
    assert "cycle failed in Measuring" in failing.log  # Docker is checked before any cordon
    assert repr(garbage) in failing.log  # the raw value, for the on-call engineer
    node = scene.watch.last()
    assert node.unschedulable and node.annotations[ANNOTATION] == garbage, node
    assert [r.method for r in scene.cluster.requests if r.method == "PATCH"] == []

    # 2. A normal cycle: still no cordon of ours, and the journal is replaced only at its end.
    good = agents(scene.env(DOCKER_IMAGE_CLEANER_DELAY_SECONDS=0)).start()
    assert good.wait(60) == 0, good.log
    assert "PruningAll" in good.states(), good.log
    assert scene.watch.states()[1:] == ["Idle"], scene.watch.states()  # one write, after the cycle
    row.invariants = ["raw value logged", "kept through a failed cycle"] + scene.check_handed_back(
        unschedulable=True) + ["overwritten after the good cycle"]
    entry = scene.watch.last().journal()
    assert entry["was_unschedulable"] is True and entry["cordoned_by_us"] is False
    row.note = "stays cordoned (by whom is unknown): uncordon by hand"
