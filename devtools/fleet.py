"""Several agents, one per node of a fake cluster, each in a thread of this process: the cordon budget's
test and benchmark. Every node has an in-memory runtime and disk (devtools.fakes); all of them talk to
one FakeKube through the real Kubernetes client, as separate agents would.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client, config

from devtools.fakekube import FakeKube
from devtools.fakes import FakeDisk, FakeRuntime
from fsm_cleaner import config as settings
from fsm_cleaner.agent import Agent
from fsm_cleaner.cli import build_agent
from fsm_cleaner.clock import RealClock
from fsm_cleaner.kube import Kube
from fsm_cleaner.runtime import Image

MiB = 2**20
Remove = Callable[[Image], "str | None"]
NAMESPACE = "fsm-cleaner"


@dataclass
class FleetNode:
    name: str
    runtime: FakeRuntime = field(default_factory=FakeRuntime)
    agent: Agent | None = None
    exit_code: int | None = None
    removed_while: list[bool] = field(default_factory=list)  # cordoned at each image removal?

    def __post_init__(self) -> None:
        self.disk = FakeDisk(self.runtime, total=100 * MiB, base=40 * MiB)

    def fill(self, images: int = 5, size: int = 10 * MiB) -> None:
        """Old images no container uses, one a running container uses: 91.5 % of the disk."""
        for n in range(images):
            self.runtime.add_image(f"sha256:{n:064x}", size, f"old:{n}")
        self.runtime.add_image("sha256:" + "f" * 64, MiB, "live:1")
        self.runtime.add_container("sha256:" + "f" * 64, running=True)
        self.runtime.add_container("sha256:" + "f" * 64, running=False, size=MiB // 2)

    @property
    def cleaned(self) -> bool:
        return self.disk.used() <= 50 * MiB


def api_for(kubeconfig: Path) -> client.CoreV1Api:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    configuration.retries = 0
    configuration.no_proxy = "127.0.0.1,localhost"  # the fake API server is local: never through a proxy
    return client.CoreV1Api(client.ApiClient(configuration))


class Fleet:
    """``n`` nodes, ``node-0`` ... on ``fake``, each filled past the high threshold (80 %, low 50 %)."""

    def __init__(self, fake: FakeKube, tmp: Path, n: int, env: dict[str, str]):
        self.fake = fake
        self.nodes = [FleetNode(f"node-{i}") for i in range(n)]
        kubeconfig = fake.kubeconfig(tmp / "kubeconfig")
        for node in self.nodes:
            fake.add_node(node.name)
            node.fill()
            (tmp / node.name).mkdir()
            cfg = settings.load({
                "FSM_CLEANER_PATH_TO_CHECK": str(tmp / node.name), "FSM_CLEANER_NODE_NAME": node.name,
                "FSM_CLEANER_THRESHOLD_HIGH": "80", "FSM_CLEANER_THRESHOLD_LOW": "50",
                "FSM_CLEANER_HEARTBEAT_FILE": str(tmp / node.name / "heartbeat"),
                "FSM_CLEANER_NAMESPACE": NAMESPACE, "FSM_CLEANER_MIN_AGE": "0", **env})
            kube = Kube(api_for(kubeconfig), node.name, namespace=NAMESPACE)
            node.agent = build_agent(cfg, node.runtime, kube, clock=RealClock(), disk=node.disk)
            node.runtime.remove_image = self._recording(node, node.runtime.remove_image)  # type: ignore[method-assign]
        self._threads: list[threading.Thread] = []

    def _recording(self, node: FleetNode, remove: Remove) -> Remove:
        """``remove``, noting first whether the API server has the node cordoned at that moment."""
        def remove_image(image: Image) -> str | None:
            node.removed_while.append(bool(self.fake.node(node.name)["spec"].get("unschedulable")))
            return remove(image)
        return remove_image

    def start(self) -> None:
        for node in self.nodes:
            thread = threading.Thread(target=self._run, args=(node,), name=node.name, daemon=True)
            self._threads.append(thread)
            thread.start()

    @staticmethod
    def _run(node: FleetNode) -> None:
        assert node.agent is not None
        node.exit_code = node.agent.run()

    def wait_until(self, done: Callable[[], bool], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not done():
            if time.monotonic() > end:
                return False
            time.sleep(0.05)
        return True

    def stop(self) -> list[int | None]:
        """What SIGTERM does to each agent; their exit codes."""
        for node in self.nodes:
            assert node.agent is not None
            node.agent.shutdown.request(signal.SIGTERM)
        for thread in self._threads:
            thread.join(timeout=30)
        return [node.exit_code for node in self.nodes]


class ByNode(logging.Handler):
    """Collects the agents' log lines by node (the thread's name)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: dict[str, list[tuple[float, str]]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.setdefault(record.threadName or "", []).append((record.created, record.getMessage()))
