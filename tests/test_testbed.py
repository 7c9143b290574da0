"""Tests of the real-Docker test bed (devtools/testbed.py) itself.

Needs root, loop devices and dockerd. If the bed cannot start, the tests are skipped with the
reason, except under CI=true, where that is a failure (CI must run them).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools import testbed
from devtools.testbed import DockerBed

REPO = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


def _mounted_under(root: Path) -> list[str]:
    with open("/proc/mounts") as f:
        return [line for line in f if str(root) in line]


def _fs_mb(bed: DockerBed) -> float:
    st = os.statvfs(bed.mountpoint)
    return st.f_blocks * st.f_frsize / MiB


def _assert_gone(bed: DockerBed, pid: int | None = None) -> None:
    assert _mounted_under(bed.root) == []
    assert _mounted_under(bed.exec_root) == []
    assert testbed._loops_backing(bed.disk_image) == []
    assert not bed.disk_image.exists()
    assert bed.dockerd_pid() is None
    if pid is not None:
        assert not testbed._alive(pid), f"dockerd {pid} still alive"
    assert bed._stray_pids() == []


def test_missing_tool_names_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    # Runs without Docker: the error must say what to install.
    monkeypatch.setitem(testbed.REQUIRED_TOOLS, "no-such-tool-xyz", "some-debian-pkg")
    with pytest.raises(testbed.TestbedError, match="apt-get install some-debian-pkg"):
        testbed.check_prerequisites()


def test_long_root_moves_exec_root() -> None:
    b = DockerBed(Path("/tmp") / ("deep-" * 30))
    assert str(b.exec_root).startswith("/tmp/fsm-testbed-")
    assert len(f"{b.exec_root}/containerd/containerd-debug.sock") < 108
    assert b.exec_root == DockerBed(Path("/tmp") / ("deep-" * 30)).exec_root  # stable for `down`


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerBed]:
    b = DockerBed(tmp_path_factory.mktemp("bed"))
    try:
        b.start()
    except testbed.TestbedError as e:  # a failure under CI=true (tests/conftest.py)
        pytest.skip(f"docker test bed unavailable: {e}")
    yield b
    b.stop()


@pytest.fixture
def clean(bed: DockerBed) -> DockerBed:
    bed.reset()
    return bed


def test_build_raises_block_usage(clean: DockerBed) -> None:
    blocks0, _ = clean.usage()
    clean.build_image("fsmtest/big:1", 30)
    blocks1, _ = clean.usage()
    expected = 30 / _fs_mb(clean) * 100
    assert blocks1 - blocks0 == pytest.approx(expected, rel=0.25)


def test_many_files_raise_inode_usage(clean: DockerBed) -> None:
    _, inodes0 = clean.usage()
    clean.build_image(None, 5, files=5000)
    _, inodes1 = clean.usage()
    expected = 5000 / os.statvfs(clean.mountpoint).f_files * 100
    assert inodes1 - inodes0 >= 0.95 * expected


def test_make_dangling_and_rebuilt_tag(clean: DockerBed) -> None:
    client = clean.client()
    ids = clean.make_dangling(3, 1)
    dangling = {i.id for i in client.images.list(filters={"dangling": True})}
    assert len(set(ids)) == 3
    assert set(ids) <= dangling

    first = clean.build_image("fsmtest/re:1", 1)
    second = clean.build_image("fsmtest/re:1", 1)
    dangling = {i.id for i in client.images.list(filters={"dangling": True})}
    assert first != second
    assert first in dangling and second not in dangling
    assert client.images.get("fsmtest/re:1").id == second


def test_run_container_states(clean: DockerBed) -> None:
    clean.build_image("fsmtest/run:1", 1)
    running = clean.client().containers.get(clean.run_container("fsmtest/run:1"))
    stopped = clean.client().containers.get(clean.run_container("fsmtest/run:1", running=False))
    assert running.status == "running"
    assert running.attrs["HostConfig"]["NetworkMode"] == "none"
    assert stopped.status == "exited"
    assert stopped.attrs["State"]["ExitCode"] == 0
    t0 = time.monotonic()
    running.stop(timeout=10)  # honours SIGTERM: no 10 s stop timeout in tests
    assert time.monotonic() - t0 < 5


def test_reset(bed: DockerBed) -> None:
    bed.reset()
    baseline, _ = bed.usage()
    bed.build_image("fsmtest/r:1", 10)
    bed.make_dangling(2, 2)
    bed.run_container("fsmtest/r:1")
    bed.run_container("fsmtest/r:1", running=False)
    bed.reset()
    client = bed.client()
    assert client.containers.list(all=True) == []
    assert [i.tags for i in client.images.list(all=True)] == [[testbed.BASE_TAG]]
    assert bed.usage()[0] == pytest.approx(baseline, abs=0.5)


def test_base_image_survives_prune(clean: DockerBed) -> None:
    # The agent under test may prune the (unused) base image; the bed must recover.
    client = clean.client()
    client.images.remove(testbed.BASE_TAG)
    assert clean.base_image() == testbed.BASE_TAG
    assert client.images.get(testbed.BASE_TAG).id == clean.base_id


def test_start_failure_cleans_up(bed: DockerBed, tmp_path: Path) -> None:
    broken = DockerBed(tmp_path / "broken", size_mb=100, storage_driver="no-such-driver")
    with pytest.raises(testbed.TestbedError, match="dockerd exited") as err:
        broken.start()
    assert "no-such-driver" in str(err.value)  # the dockerd.log tail is in the message
    _assert_gone(broken)


def test_second_bed_in_parallel_and_crash_recovery(bed: DockerBed, tmp_path: Path) -> None:
    # A root this long moves the exec-root (unix socket paths) to /tmp/fsm-testbed-<hash>.
    other = DockerBed(tmp_path / ("other-" + "x" * 40), size_mb=200, inodes=10000)
    assert not other.exec_root.is_relative_to(other.root)
    assert len(f"{other.exec_root}/containerd/containerd-debug.sock") < 108
    try:
        other.start()
        theirs = other.run_container(other.base_image())
        mine = bed.run_container(bed.base_image())
        assert [c.id for c in other.client().containers.list()] == [theirs]
        assert theirs not in {c.id for c in bed.client().containers.list(all=True)}

        # Crash: dockerd dies hard, leaving mounts, containerd, shim and container behind.
        pid = other.dockerd_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while testbed._alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _mounted_under(other.root)

        again = DockerBed(other.root, size_mb=200, inodes=10000).start()  # cleans leftovers
        assert again.client().containers.list(all=True) == []
        again.stop()
        _assert_gone(again, pid)
    finally:
        other.stop()
    # The crash and cleanup of the other bed did not disturb this one.
    assert bed.client().containers.get(mine).status == "running"


def test_cli_up_twice_and_down(bed: DockerBed, tmp_path: Path) -> None:
    root = tmp_path / "cli"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "devtools.testbed", *args, str(root)],
                              cwd=REPO, capture_output=True, text=True, timeout=120)

    probe = DockerBed(root)
    try:
        up = cli("up", "--size-mb", "200")
        assert up.returncode == 0, up.stderr
        assert f"export DOCKER_HOST=unix://{probe.socket}" in up.stdout
        assert f"export PATH_TO_CHECK={probe.mountpoint}" in up.stdout
        pid = probe.dockerd_pid()
        assert pid is not None and probe.is_running()  # outlived the CLI process

        again = cli("up")
        assert again.returncode == 0, again.stderr
        assert "already running" in again.stderr
        assert probe.dockerd_pid() == pid
        assert sum(line.split()[1] == str(probe.mountpoint)
                   for line in _mounted_under(root)) == 1

        down = cli("down")
        assert down.returncode == 0, down.stderr
        _assert_gone(probe, pid)
    finally:
        probe.stop()


def test_stop_leaves_nothing(bed: DockerBed) -> None:
    # Last in this module: stops the shared bed (fixture teardown then stops it again).
    bed.run_container(bed.base_image())  # a running container must not slow or block stop()
    pid = bed.dockerd_pid()
    assert pid is not None
    bed.stop()
    _assert_gone(bed, pid)
    bed.stop()  # idempotent
