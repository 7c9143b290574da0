"""README promises only a real daemon can show (issue 9, item 21): a runtime call in flight is cut short
by SIGTERM, and TIMEOUT_SECONDS bounds a runtime call; on both beds (dockerd and Podman).

The agent runs as a subprocess against the test-bed dockerd through a socket proxy that forwards every
request except the one a test holds: that one reaches dockerd never and is answered never, so the
agent's call is in flight for as long as the test wants, and the test acts when it arrives.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.fakekube import FakeKube
from devtools.testbed import DockerBed
from tests.conftest import NODE, REPO, agent_env, journal_of, settled_usage


class HoldingProxy:
    """A unix socket in front of dockerd; requests whose line matches ``hold`` are never forwarded."""

    def __init__(self, upstream: Path, path: Path, hold: str):
        self.upstream, self.path, self.hold = str(upstream), path, re.compile(rb"[A-Z]+ \S*" + hold.encode())
        self.held = threading.Event()  # a held request arrived
        self.dropped = threading.Event()  # the client gave up on it (closed the connection)
        self._server = socket.socket(socket.AF_UNIX)
        self._server.bind(str(path))
        self._server.listen(16)
        self._sockets: list[socket.socket] = [self._server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._server.accept()
                daemon = socket.socket(socket.AF_UNIX)
                daemon.connect(self.upstream)
                self._sockets += [client, daemon]
                threading.Thread(target=self._requests, args=(client, daemon), daemon=True).start()
                threading.Thread(target=self._pump, args=(daemon, client), daemon=True).start()

    def _requests(self, client: socket.socket, daemon: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if self.hold.match(data):
                    self.held.set()
                    while client.recv(65536):  # swallow the rest; answer nothing
                        pass
                    self.dropped.set()
                    return
                daemon.sendall(data)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)

    def close(self) -> None:
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()


@pytest.fixture
def prune_held(runtime_bed: DockerBed, tmp_path: Path) -> Iterator[HoldingProxy]:
    """The runtime (dockerd or Podman) with `POST /containers/prune` (PruningContainers' call) held."""
    proxy = HoldingProxy(runtime_bed.socket, tmp_path / "docker.sock", r"/containers/prune")
    yield proxy
    proxy.close()


def start_agent(bed: DockerBed, proxy: HoldingProxy, tmp_path: Path,
                **settings: object) -> subprocess.Popen[str]:
    """`fsm-cleaner run --once` through the proxy, the bed above the high threshold, a stopped container."""
    bed.run_container(bed.build_image("app:1", 5), running=False)
    env = agent_env(bed, tmp_path, DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH=round(max(settled_usage(bed)) - 1, 2),
                    **settings)
    env["DOCKER_HOST"] = f"unix://{proxy.path}"
    return subprocess.Popen([sys.executable, "-m", "fsm_cleaner", "run", "--once"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def handed_back(cluster: FakeKube) -> bool:
    node = cluster.node(NODE)
    entry = journal_of(node)
    return not node["spec"].get("unschedulable") and entry is not None and entry["state"] == "Idle"


def test_sigterm_cuts_a_docker_call_in_flight_short(runtime_bed: DockerBed, cluster: FakeKube,
                                                     prune_held: HoldingProxy, tmp_path: Path) -> None:
    """The prune never answers (TIMEOUT_SECONDS is 300): the stop must not wait for it."""
    agent = start_agent(runtime_bed, prune_held, tmp_path)
    try:
        assert prune_held.held.wait(60), "the agent never reached PruningContainers"
        sent = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        log, _ = agent.communicate(timeout=60)  # the held call alone would take 300 s
        took = time.monotonic() - sent
    finally:
        agent.kill()
    assert agent.returncode == 0, log
    assert "PruningContainers -> Uncordoning (stop)" in log and "Uncordoning -> Stopped (next)" in log, log
    assert handed_back(cluster)
    assert runtime_bed.client().containers.list(all=True, filters={"status": "exited"})  # never pruned
    assert took < 25, f"stopped {took:.1f} s after SIGTERM (STOP_TIMEOUT_SECONDS 25)"


def test_timeout_seconds_bounds_a_docker_call(runtime_bed: DockerBed, cluster: FakeKube,
                                              prune_held: HoldingProxy, tmp_path: Path) -> None:
    agent = start_agent(runtime_bed, prune_held, tmp_path, DOCKER_IMAGE_CLEANER_TIMEOUT_SECONDS=2,
                        FSM_CLEANER_RETRY_ATTEMPTS=1)
    try:
        assert prune_held.held.wait(60), "the agent never reached PruningContainers"
        held = time.monotonic()
        assert prune_held.dropped.wait(60), "the agent never gave up on the call"
        waited = time.monotonic() - held
        log, _ = agent.communicate(timeout=60)
    finally:
        agent.kill()
    assert agent.returncode == 1, log  # --once: the cycle failed
    assert re.search(r"PruningContainers failed: .*[Tt]imed? ?out", log), log
    assert 2 <= waited < 30, f"the call was given up after {waited:.1f} s (TIMEOUT_SECONDS 2)"
    assert "PruningContainers -> Uncordoning (fail)" in log and handed_back(cluster)


def test_the_proxy_forwards_what_it_does_not_hold(runtime_bed: DockerBed, prune_held: HoldingProxy) -> None:
    """The two tests above prove something only if everything else reaches dockerd unchanged."""
    import docker

    client = docker.DockerClient(base_url=f"unix://{prune_held.path}", timeout=10)
    assert client.ping() and client.images.get(runtime_bed.base_image())
    assert not prune_held.held.is_set()
