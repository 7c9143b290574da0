"""A runtime without the build-prune endpoint: Podman's Docker-compatible service answers 404, and the
agent skips PruningBuildCache with one log line, not a failed cycle."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from devtools.podmanbed import PodmanBed
from devtools.testbed import TestbedError
from fsm_cleaner.docker_runtime import Docker
from fsm_cleaner.runtime import Unsupported
from tests.conftest import agent_env, run_agent


@pytest.fixture(scope="module")
def pbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodmanBed]:
    bed = PodmanBed(tmp_path_factory.mktemp("pbed"), size_mb=400, inodes=20000)
    try:
        bed.start()
    except TestbedError as e:  # a failure under CI=true (tests/conftest.py)
        pytest.skip(f"podman test bed unavailable: {e}")
    yield bed
    bed.stop()


def test_the_port_says_unsupported(pbed: PodmanBed) -> None:
    api = docker.APIClient(base_url=pbed.host, version="auto", timeout=60)
    with pytest.raises(Unsupported, match="no build cache endpoint"):
        Docker(lambda: api).prune_build_cache(1800, 0)
    api.close()


def test_the_agent_skips_the_state_once_and_the_cycle_succeeds(pbed: PodmanBed, tmp_path: Path) -> None:
    pbed.reset()
    pbed.base_image()
    pbed.build_image("fsmtest/old:1", 3)
    high = round(pbed.usage()[0] - 0.2, 2)
    env = agent_env(None, tmp_path, node=False, DOCKER_HOST=pbed.host,
                    FSM_CLEANER_PATH_TO_CHECK=str(pbed.mountpoint), DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH=high)
    run = run_agent(env)
    assert run.code == 0, run.log
    assert len(re.findall(r"PruningBuildCache skipped for the life of this process", run.log)) == 1, run.log
    assert "PruningBuildCache -> PruningAll (next)" in run.log
    assert "FAILED" not in run.log
