"""The README's promises that no other test checked (issue 9, item 21), in process and fast.

Each test is named after the promise. They drive the real agent (cli.build_agent) against the fakes
of devtools/fakes.py, as tests/test_agent.py does; the Events namespace goes through the real
Kubernetes client to the fake API server, and the log format through a real `fsm-cleaner run`.
The promises only a real dockerd can show are in tests/test_promises_docker.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException
from kubernetes.config import kube_config

from devtools.fakekube import FakeKube
from devtools.fakes import FakeClock, FakeDisk, FakeRuntime
from fsm_cleaner import cli, config, docker_runtime
from fsm_cleaner.config import RETRY_MIN_WAIT_SECONDS
from tests.conftest import NODE, REPO, needs_fake
from tests.test_agent import FORBIDDEN, Bed, MiB


def use_kubeconfig(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """KUBECONFIG as a process started with it sees it: the client reads the variable when imported."""
    monkeypatch.setenv("KUBECONFIG", path)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", path)


def test_the_running_agent_refreshes_its_heartbeat_through_a_long_idle_wait(tmp_path: Path) -> None:
    """Liveness fails past HEARTBEAT_MAX_AGE_SECONDS (900): an hour-long Idle must keep the file fresh."""
    bed = Bed(tmp_path, env={"FSM_CLEANER_INTERVAL_SECONDS": "3600"})
    bed.fill(images=1)  # below the threshold: the loop idles
    heartbeat = tmp_path / "heartbeat"
    rewritten: list[bool] = []
    for t in (100, 1000, 2500):  # fake seconds into the Idle wait: the file is removed, then looked for
        bed.clock.at(t, heartbeat.unlink)
        bed.clock.at(t + 30.5, lambda: rewritten.append(heartbeat.is_file()))
    bed.clock.at(3000, bed.stop)
    assert bed.run(once=False) == 0
    assert bed.states.count("Measuring") == 1  # all of it inside one Idle wait
    assert rewritten == [True, True, True]


def test_run_exits_1_only_when_the_agents_cordon_may_remain(tmp_path: Path) -> None:
    """Loop mode: a failed cycle whose node was handed back exits 0 on SIGTERM; an uncordon that fails
    while stopping leaves the agent's cordon, and `run` says so with 1."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    handed_back = Bed(tmp_path / "a")
    handed_back.fill()
    handed_back.runtime.faults.add("prune_containers", RuntimeError("boom"))
    handed_back.clock.at(30, handed_back.stop)  # in the Idle wait after the failed cycle
    assert handed_back.run(once=False) == 0
    assert ("fail", "PruningContainers", "Uncordoning") in handed_back.taken and handed_back.handed_back()

    left_cordoned = Bed(tmp_path / "b", env={"FSM_CLEANER_DELAY_SECONDS": "1"})
    left_cordoned.fill()
    left_cordoned.clock.at(0.5, lambda: (left_cordoned.api.faults.add("write", FORBIDDEN),
                                         left_cordoned.stop()))
    assert left_cordoned.run(once=False) == 1
    assert left_cordoned.taken[-1] == ("fail", "Uncordoning", "Stopped")
    assert left_cordoned.api.unschedulable


def test_the_owed_uncordon_is_retried_at_the_next_tick_before_anything_else(tmp_path: Path) -> None:
    bed = Bed(tmp_path)
    bed.fill()
    bed.api.faults.add("write", *[lambda: None] * 6, FORBIDDEN)  # TakingSlot, cordon, 4 journal, uncordon
    bed.clock.at(90, bed.stop)  # after the next tick
    assert bed.run(once=False) == 0
    after_failure = bed.taken[bed.taken.index(("fail", "Uncordoning", "Idle")) + 1:]
    assert after_failure[0] == ("tick", "Idle", "Uncordoning")  # not Measuring: the uncordon first
    assert bed.handed_back()


def test_a_removal_docker_refuses_is_logged_not_counted_and_the_cycle_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A container started on a planned image between the plan and its removal: the image stays."""
    bed = Bed(tmp_path)
    bed.fill()
    planned: list = []
    remove = bed.runtime.remove_image

    def container_appears_first(image):  # on the first image the plan removes, right before
        if not planned:
            planned.append(bed.runtime.store[image.id])
            bed.runtime.add_container(image.id, running=True)
        return remove(image)
    bed.runtime.remove_image = container_appears_first
    with caplog.at_level("INFO", logger="fsm_cleaner"):
        assert bed.run() == 0
    [first] = planned
    assert re.search(rf"image {re.escape(first.tags[0])} \[.*\] not removed: conflict", caplog.text)
    assert bed.runtime.store[first.id].tags == first.tags  # kept, with its tag
    removed = len(bed.runtime.removed)
    assert removed > 0 and f"removed 1 containers and {removed} images" in caplog.text


def test_a_429_is_retried_after_what_its_retry_after_asks(tmp_path: Path) -> None:
    bed = Bed(tmp_path)
    bed.fill()
    too_many = ApiException(status=429, reason="Too Many Requests")
    too_many.headers = {"Retry-After": "7"}
    attempts: list[float] = []

    def refused() -> None:
        attempts.append(bed.clock.now)
        raise too_many
    # the cordon's PATCH, after TakingSlot's journal
    bed.api.faults.add("write", lambda: None, refused, lambda: attempts.append(bed.clock.now))
    assert bed.run() == 0
    assert bed.api.patches[1].unschedulable is True  # the second attempt cordoned
    # The first RETRY_MIN_WAIT_SECONDS are held in real time; the rest of the wait on the agent's clock.
    assert attempts[1] - attempts[0] >= 7 - RETRY_MIN_WAIT_SECONDS


def test_retry_total_seconds_caps_a_steps_attempts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With 100 attempts allowed, a step failing transiently gives up once RETRY_TOTAL_SECONDS is spent."""
    bed = Bed(tmp_path, env={"FSM_CLEANER_RETRY_ATTEMPTS": "100", "FSM_CLEANER_RETRY_TOTAL_SECONDS": "1.5",
                             "FSM_CLEANER_RETRY_MAX_WAIT_SECONDS": "0.5"})
    bed.fill()
    bed.runtime.faults.add("prune_containers", *[ConnectionError("docker is restarting")] * 100)
    with caplog.at_level("WARNING", logger="fsm_cleaner"):
        assert bed.run() == 1
    attempts = bed.runtime.faults.calls.count("prune_containers")
    assert 2 <= attempts <= 1.5 / RETRY_MIN_WAIT_SECONDS + 1, attempts  # every retry waits the floor
    assert "PruningContainers failed: ConnectionError: docker is restarting" in caplog.text
    assert bed.handed_back()


@pytest.mark.parametrize("kubeconfig", ["missing", "a directory", "unset, and no ~/.kube/config"])
def test_missing_kubernetes_credentials_exit_2_naming_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        kubeconfig: str) -> None:
    runtime = FakeRuntime()
    monkeypatch.setattr(docker_runtime.Docker, "from_env", classmethod(lambda cls, t: runtime))
    for name in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "KUBECONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("FSM_CLEANER_PATH_TO_CHECK", str(tmp_path))
    monkeypatch.setenv("FSM_CLEANER_NODE_NAME", "node-1")
    monkeypatch.setenv("FSM_CLEANER_HEARTBEAT_FILE", str(tmp_path / "heartbeat"))
    where = {"missing": str(tmp_path / "nope.yaml"), "a directory": str(tmp_path)}.get(kubeconfig)
    if where:
        use_kubeconfig(monkeypatch, where)
    else:
        monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", "~/.kube/config")
    assert cli.main(["run", "--once"]) == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"kubeconfig {where or '~/.kube/config'!r} is unusable" in err and "accepted:" in err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback
    assert runtime.faults.calls == []  # Docker never asked


def test_events_go_to_events_namespace(cluster: FakeKube, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the real Kubernetes client to the fake API server."""
    fake = needs_fake(cluster)
    use_kubeconfig(monkeypatch, str(tmp_path / "kubeconfig"))
    cfg = config.load({"FSM_CLEANER_PATH_TO_CHECK": str(tmp_path), "FSM_CLEANER_NODE_NAME": NODE,
                       "FSM_CLEANER_EVENTS_NAMESPACE": "fsm-events", "FSM_CLEANER_THRESHOLD_HIGH": "80",
                       "FSM_CLEANER_HEARTBEAT_FILE": str(tmp_path / "heartbeat")})
    runtime = FakeRuntime()
    runtime.add_image("sha256:" + "1" * 64, 50 * MiB, "old:1")
    agent = cli.build_agent(cfg, runtime, cli._kube(cfg.node_name, cfg.events_namespace), clock=FakeClock(),
                            disk=FakeDisk(runtime, total=100 * MiB, base=40 * MiB))
    assert agent.run(once=True) == 0
    posted = {r.path for r in fake.requests if r.method == "POST"}
    # Events in EVENTS_NAMESPACE; the cordon slot in the agent's namespace (no POD_NAMESPACE here: default)
    assert posted == {"/api/v1/namespaces/fsm-events/events",
                      "/apis/coordination.k8s.io/v1/namespaces/default/leases"}
    assert {e["reason"] for e in fake.events} >= {"Cordoned", "Uncordoned"}
    assert {e["metadata"]["namespace"] for e in fake.events} == {"fsm-events"}


def test_the_summary_numbers_are_what_the_cycle_did(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bed = Bed(tmp_path)  # DELAY_SECONDS 1 (the default): the cordon lasts the pauses between removals
    bed.fill()
    before = bed.disk.used()
    stopped = sum(c.size for c in bed.runtime.containers if not c.running)
    with caplog.at_level("INFO", logger="fsm_cleaner"):
        assert bed.run() == 0
    after = bed.disk.used()
    images = len(bed.runtime.removed)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("cycle done"))
    freed, total = before - after, bed.disk.total
    assert line == (f"cycle done: usage {100 * before / total:.1f}% -> {100 * after / total:.1f}%; "
                    f"freed {freed / MiB:.1f} MiB and 0 inodes (Docker reports {freed / MiB:.1f} MiB); "
                    f"removed 1 containers and {images} images; node cordoned {images - 1:.1f} s; "
                    f"took {images - 1:.1f} s")
    assert stopped and images >= 2


LOG_LINE = re.compile(r"(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z "
                      r"(?P<level>DEBUG|INFO|WARNING|ERROR) +\S")


def test_every_log_line_carries_the_utc_time_and_the_level(tmp_path: Path) -> None:
    """A real `fsm-cleaner run --once` in a zone 5.5 h off UTC: each line starts with UTC and the level."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FSM_CLEANER_", "DOCKER_IMAGE_CLEANER_"))}
    env.pop("KUBECONFIG", None)
    env.update(TZ="Asia/Kolkata", PYTHONPATH=str(REPO), FSM_CLEANER_PATH_TO_CHECK=str(tmp_path),
               FSM_CLEANER_THRESHOLD_HIGH="99.99", FSM_CLEANER_HEARTBEAT_FILE=str(tmp_path / "heartbeat"),
               FSM_CLEANER_STATE_DIR=str(tmp_path / "state"))
    start = datetime.now(timezone.utc)
    run = subprocess.run([sys.executable, "-m", "fsm_cleaner", "run", "--once"], env=env, capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    end = datetime.now(timezone.utc)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) >= 5 and run.stdout == ""
    for line in lines:
        m = LOG_LINE.match(line)
        assert m, line
        at = datetime.fromisoformat(m["time"]).replace(tzinfo=timezone.utc)
        assert start.replace(microsecond=0) <= at.replace(microsecond=0) <= end, line
    assert any(" INFO    usage of " in line for line in lines)
