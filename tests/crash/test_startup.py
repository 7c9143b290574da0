"""What a starting agent finds on the node: docker-image-cleaner's cordon, an unreadable journal, a
hostile one."""

from __future__ import annotations

import subprocess
import sys
import time

from fsm_cleaner.journal import ANNOTATION, LEGACY_ANNOTATION
from tests.conftest import NODE, REPO, agent_env
from tests.crash.conftest import Row, image_exists, make_scene


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


HOSTILE = "[" * 50_000 + "]" * 50_000  # 100 KB of nested arrays: json.loads would hit RecursionError


def test_a_hostile_journal_does_not_stop_cleaning(docker_bed, fake, tmp_path, agents, row: Row) -> None:
    row.case = "hostile journal: 100 KB of nested arrays on a schedulable node; `status` while it is there"
    scene = make_scene(docker_bed, fake, tmp_path, annotations={ANNOTATION: HOSTILE})
    status = subprocess.run([sys.executable, "-m", "fsm_cleaner", "status", "--node-name", NODE],
                            env=scene.env(), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert "journal:      UNREADABLE" in status.stdout and "(100000 characters)" in status.stdout
    assert max(len(line) for line in status.stdout.splitlines()) < 400  # an excerpt, not the annotation
    t0 = time.monotonic()
    agent = agents(scene.env()).start()
    assert agent.wait(60) == 0, agent.log
    assert "PruningAll" in agent.states() and "cycle done" in agent.log, agent.log
    assert "(100000 characters)" in agent.log and agent.count("Traceback") == 0, agent.log
    assert max(len(line) for line in agent.log.splitlines()) < 1000  # logged as a bounded excerpt
    assert not any(image_exists(scene.bed, i) for i in scene.old_images)
    # the cordon was ours (the node was schedulable): written over the hostile value, then handed back
    assert scene.watch.records[1].state == "TakingSlot"  # the hostile value replaced by the cycle's journal
    assert scene.watch.records[2].state == "Cordoning" and scene.watch.records[2].unschedulable
    row.invariants = ["status exits 0 with an excerpt", "logged as an excerpt", "a full cycle, exit 0",
                      *scene.check_handed_back()]
    row.note = f"the journal is replaced by the cycle's own; run --once took {agent.exited_at - t0:.1f} s"
