"""Shared fixtures: the real dockerd test bed, the fake API server, and the agent as a subprocess.

Against a real cluster: set FSM_TEST_KUBECONFIG and FSM_TEST_NODE (a node the tests may cordon);
tests that need the fake's fault injection or request log are skipped there.
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

from fsm_cleaner.journal import ANNOTATION
from tests.fakekube import FakeKube
from tests.testbed import DockerBed, TestbedError

IN_CI = os.environ.get("CI", "").lower() == "true"
REPO = Path(__file__).resolve().parent.parent
NODE = os.environ.get("FSM_TEST_NODE", "node-1")
REAL_CLUSTER = bool(os.environ.get("FSM_TEST_KUBECONFIG"))


@pytest.fixture(scope="session")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerBed]:
    """One private dockerd for the session, its data root on a 600 MiB ext4 with 40,000 inodes."""
    testbed = DockerBed(tmp_path_factory.mktemp("bed"), size_mb=600, inodes=40000)
    try:
        testbed.start()
    except TestbedError as e:
        if IN_CI:  # CI must never pass without having run the Docker tests
            pytest.fail(f"the dockerd test bed could not start: {e}", pytrace=False)
        pytest.skip(f"the dockerd test bed could not start: {e}")
    yield testbed
    testbed.stop()


@pytest.fixture
def docker_bed(bed: DockerBed) -> DockerBed:
    bed.reset()
    bed.base_image()
    return bed


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[FakeKube]:
    if REAL_CLUSTER:
        pytest.skip("this test needs the fake API server (fault injection, request log)")
    with FakeKube() as fake:
        fake.add_node(NODE, labels={"kubernetes.io/hostname": NODE}, annotations={"team": "ml"})
        fake.kubeconfig(tmp_path / "kubeconfig")
        yield fake


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


def journal_of(node: dict) -> dict | None:
    raw = (node["metadata"].get("annotations") or {}).get(ANNOTATION)
    return None if raw is None else json.loads(raw)
