"""Shared fixtures: the real dockerd test bed, the fake API server, and the agent as a subprocess.

Against a real cluster: set FSM_TEST_KUBECONFIG and FSM_TEST_NODE (a node the tests may cordon and
annotate; it is uncordoned and its fsm-cleaner annotations removed around each test). The checks that
need the fake's fault injection or request log are skipped there.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devtools.fakekube import FakeKube
from devtools.podmanbed import PodmanBed
from devtools.testbed import DockerBed, TestbedError
from fsm_cleaner.journal import ANNOTATION

IN_CI = os.environ.get("CI", "").lower() == "true"
REPO = Path(__file__).resolve().parent.parent
NODE = os.environ.get("FSM_TEST_NODE", "node-1")
REAL_CLUSTER = bool(os.environ.get("FSM_TEST_KUBECONFIG"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Under CI=true nothing skips: a test that would skip (no root, no dockerd, a missing tool) fails,
    with the skip's reason, so that CI never passes without having run every test."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"skipped, and under CI=true nothing may skip: {reason}"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kubernetes client (37) takes HTTP(S)_PROXY from the environment: the fake API server on
    127.0.0.1 must never be reached through a proxy, in any test."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


# The agent's default STATE_DIR: a test that runs the agent without its own would write to the machine.
HOST_STATE_DIR = Path("/var/lib/fsm-cleaner")


@pytest.fixture(scope="session", autouse=True)
def the_host_is_left_alone() -> Iterator[None]:
    """Every test gives the agent a STATE_DIR of its own: the suite leaves no /var/lib/fsm-cleaner behind."""
    there_before = HOST_STATE_DIR.exists()
    yield
    assert there_before or not HOST_STATE_DIR.exists(), (
        f"a test ran the agent with the default STATE_DIR and created {HOST_STATE_DIR} on this machine")


@pytest.fixture(scope="session")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerBed]:
    """One private dockerd for the session, its data root on a 600 MiB ext4 with 40,000 inodes."""
    testbed = DockerBed(tmp_path_factory.mktemp("bed"), size_mb=600, inodes=40000)
    try:
        testbed.start()
    except TestbedError as e:  # a failure under CI=true (pytest_runtest_makereport below)
        pytest.skip(f"the dockerd test bed could not start: {e}")
    yield testbed
    testbed.stop()


@pytest.fixture
def docker_bed(bed: DockerBed) -> DockerBed:
    bed.reset()
    bed.base_image()
    return bed


@pytest.fixture(scope="session")
def podman_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodmanBed]:
    """One private `podman system service` for the session, the dockerd bed's twin (devtools/podmanbed.py)."""
    testbed = PodmanBed(tmp_path_factory.mktemp("podman"), size_mb=600, inodes=40000)
    try:
        testbed.start()
    except TestbedError as e:  # a failure under CI=true
        pytest.skip(f"the podman test bed could not start: {e}")
    yield testbed
    testbed.stop()


RUNTIMES = ["docker", "podman"]


@pytest.fixture(params=RUNTIMES)
def runtime_bed(request: pytest.FixtureRequest) -> DockerBed:
    """The test once on the dockerd bed and once on the Podman bed (same object API), each reset."""
    bed: DockerBed = request.getfixturevalue("bed" if request.param == "docker" else "podman_bed")
    bed.reset()
    bed.base_image()
    return bed


class RealCluster:
    """The `cluster` fixture's face on a real cluster: the node FSM_TEST_NODE, reset around each test.

    It offers what the fake offers for reading and writing the node; no request log, no faults.
    """

    def __init__(self, kubeconfig: str):
        from kubernetes import client, config

        self.api = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))

    def node(self, name: str) -> dict:
        return self.api.api_client.sanitize_for_serialization(self.api.read_node(name))

    def mutate(self, name: str, fn: Any) -> dict:
        node = self.node(name)
        node = fn(node) or node
        return self.api.replace_node(name, node)

    def reset(self, name: str) -> None:
        def clean(node: dict) -> None:
            node["spec"]["unschedulable"] = False
            annotations = node["metadata"].setdefault("annotations", {})
            annotations.pop(ANNOTATION, None)
            annotations.pop("hub.jupyter.org/image-cleaner-cordoned", None)
            annotations["team"] = "ml"
            node["metadata"].setdefault("labels", {})["fsm-test/keep"] = "yes"

        self.mutate(name, clean)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[FakeKube | RealCluster]:
    """The fake API server with node-1; or, with FSM_TEST_KUBECONFIG set, the real cluster's node."""
    if REAL_CLUSTER:
        real = RealCluster(os.environ["FSM_TEST_KUBECONFIG"])
        real.reset(NODE)
        yield real
        real.reset(NODE)
        return
    with FakeKube() as fake:
        fake.add_node(NODE, labels={"fsm-test/keep": "yes"}, annotations={"team": "ml"})
        fake.kubeconfig(tmp_path / "kubeconfig")
        yield fake


def needs_fake(cluster: FakeKube | RealCluster) -> FakeKube:
    """For the checks that need the fake's request log or fault injection; skipped on a real cluster."""
    if not isinstance(cluster, FakeKube):
        pytest.skip("needs the fake API server (request log, fault injection)")
    return cluster


@dataclass
class Run:
    code: int
    log: str
    seconds: float
    lines: list[str] = field(default_factory=list)

    def states(self) -> list[str]:
        """The states entered, in order, from the transition log lines."""
        return re.findall(r" \w+ -> (\w+) \(\w+\) after ", self.log)


def agent_env(bed: DockerBed | None, tmp_path: Path, node: bool = True, **settings: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FSM_CLEANER_", "DOCKER_IMAGE_CLEANER_"))}
    env.update(
        NO_PROXY="127.0.0.1,localhost",
        PYTHONPATH=str(REPO),
        FSM_CLEANER_HEARTBEAT_FILE=str(tmp_path / "heartbeat"),
        DOCKER_IMAGE_CLEANER_DELAY_SECONDS="0",
        FSM_CLEANER_RETRY_MAX_WAIT_SECONDS="0.5",
        FSM_CLEANER_UNCORDON_RETRY_SECONDS="20",
        # images built a moment ago may go (MIN_AGE's 30 m would keep every one); the use history in
        # the test's own directory, never the host's /var/lib/fsm-cleaner
        FSM_CLEANER_MIN_AGE="0",
        FSM_CLEANER_STATE_DIR=str(tmp_path / "state"),
    )
    env.pop("KUBECONFIG", None)
    if bed is not None:
        env.update(DOCKER_HOST=bed.host, DOCKER_IMAGE_CLEANER_PATH_TO_CHECK=str(bed.mountpoint))
    if node:
        env.update(DOCKER_IMAGE_CLEANER_NODE_NAME=NODE,
                   KUBECONFIG=os.environ.get("FSM_TEST_KUBECONFIG", str(tmp_path / "kubeconfig")))
    env.update({k: str(v) for k, v in settings.items()})
    return env


def run_agent(env: dict[str, str], *args: str, timeout: float = 180) -> Run:
    """`fsm-cleaner run --once` as a subprocess, as the DaemonSet would run it."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "fsm_cleaner", "run", "--once", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
    return Run(proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start)


def settled_usage(bed: DockerBed, timeout: float = 10) -> tuple[float, float]:
    """The bed's (blocks %, inodes %) once ext4 has settled (dockerd deletes build contexts and ext4
    frees blocks a moment later): two readings 0.2 s apart agree. Raises if it never settles: a
    threshold computed from a moving figure would make the test prove nothing."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        os.sync()
        now = bed.usage()
        if now == last:
            return now
        if time.monotonic() > deadline:
            raise AssertionError(f"usage of {bed.mountpoint} still moving after {timeout:g} s: "
                                 f"{last} -> {now}")
        last = now
        time.sleep(0.2)


def journal_of(node: dict) -> dict | None:
    raw = (node["metadata"].get("annotations") or {}).get(ANNOTATION)
    return None if raw is None else json.loads(raw)
