"""Crash-recovery matrix: the agent as a real subprocess, killed, stopped and faulted mid-cycle.

Pieces (all fixtures are function-scoped; the dockerd bed is the session's ``bed``):

* ``scene``: one node ("node-1", label + annotation of its own) and a Docker state whose cycle
  passes through every state: three small old images (one used by a stopped container), a
  dangling image, and a running container (restart policy "always") whose image must survive.
  THRESHOLD_HIGH sits just below the bed's usage; DELAY_SECONDS makes PruningAll last ~2.5 s.
* ``NodeWatch``: on the fake API server's ``before_reply`` and ``on_request`` hooks, so that a test
  can act right AFTER a node PATCH has been applied and BEFORE the agent gets the reply (the worst
  moment to die: the write landed, the agent does not know it), or right before a request is
  served. It records the node after every applied PATCH; "time to recover" is computed from that.
* ``AgentProcess``: ``python -m fsm_cleaner run`` in its own session; a reader thread timestamps each
  log line and fires one-shot triggers on lines; cleanup kills the process group.
* ``row``: the test's line in the results table, printed at the end of the run and written to
  ``.testbed/crash-last-run.md`` (gitignored).
* ``slow_du``: a `du` that hangs, to catch the agent in Measuring (absolute mode).

Test settings: FSM_CLEANER_STOP_TIMEOUT_SECONDS=10, FSM_CLEANER_API_TIMEOUT_SECONDS=1.5 (the
Kubernetes API read timeout, 15 by default; see the README's configuration table), retry backoff
<= 0.5 s (tests/conftest.agent_env).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import docker.errors
import pytest

from devtools.fakekube import FakeKube
from devtools.testbed import DockerBed
from fsm_cleaner.journal import ANNOTATION, LEGACY_ANNOTATION
from tests.conftest import NODE, REPO, agent_env, settled_usage

STOP_TIMEOUT = 10  # FSM_CLEANER_STOP_TIMEOUT_SECONDS in these tests (default 25)
API_READ_TIMEOUT = 1.5  # FSM_CLEANER_API_TIMEOUT_SECONDS (default 15)
DELAY = 0.8  # DELAY_SECONDS between two image removals: PruningAll lasts ~3 pauses
# Seconds from the event (SIGKILL, the API server back) to the node handed back. The README promises
# about a second after a SIGKILL on a quiet machine (measured 0.7 s: the restart's Python start, one
# GET and one PATCH); 3 s leaves room for a loaded CI machine, where the Python start alone took 1-2 s.
RECOVER_BOUND = 3.0
RETRY_ATTEMPTS = 5  # FSM_CLEANER_RETRY_ATTEMPTS in these tests (the default)
NODE_PATH = f"/api/v1/nodes/{NODE}"
OURS = (ANNOTATION, LEGACY_ANNOTATION)  # the annotations the agent may write or remove
RESULTS_FILE = REPO / ".testbed" / "crash-last-run.md"

# --------------------------------------------------------------------------------------------
# The results table
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    case: str
    invariants: list[str] = field(default_factory=list)
    recover: float | None = None  # seconds from `since` to the node handed back
    since: str = ""  # what the recovery time is counted from
    note: str = ""
    outcome: str = "not run"


ROWS: list[Row] = []


@pytest.fixture
def row(request: pytest.FixtureRequest) -> Row:
    r = Row(case=request.node.name)
    request.node._crash_row = r
    ROWS.append(r)
    return r


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    r: Row | None = getattr(item, "_crash_row", None)
    if r is None:
        return
    if report.when == "call":
        r.outcome = "pass" if report.passed else "skipped" if report.skipped else "FAIL"
    elif report.failed:  # setup or teardown
        r.outcome = f"ERROR ({report.when})"
    elif report.skipped and report.when == "setup":
        r.outcome = "skipped"


def table() -> str:
    lines = ["| case | invariants checked | result | time to recover (s) | counted from | note |",
             "|---|---|---|---:|---|---|"]
    for r in ROWS:
        recover = "—" if r.recover is None else f"{r.recover:.3f}"
        lines.append(f"| {r.case} | {'; '.join(r.invariants)} | {r.outcome} | {recover} | "
                     f"{r.since or '—'} | {r.note} |")
    timed = [r for r in ROWS if r.recover is not None]
    if timed:
        worst = max(timed, key=lambda r: r.recover or 0)
        lines.append("")
        lines.append(f"Worst time to recover: {worst.recover:.2f} s ({worst.case}).")
    return "\n".join(lines) + "\n"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not ROWS:
        return
    text = table()
    terminalreporter.section("crash-recovery matrix")
    terminalreporter.write(text)
    try:
        RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
        RESULTS_FILE.write_text(text)
        terminalreporter.write_line(f"table written to {RESULTS_FILE}")
    except OSError as e:
        terminalreporter.write_line(f"could not write {RESULTS_FILE}: {e}")


# --------------------------------------------------------------------------------------------
# Polling
# --------------------------------------------------------------------------------------------


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------------------------
# The node, watched
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snap:
    t: float  # time.monotonic()
    unschedulable: bool
    annotations: dict[str, str]
    labels: dict[str, str]

    @property
    def state(self) -> str | None:
        raw = self.annotations.get(ANNOTATION)
        if raw is None:
            return None
        try:
            return str(json.loads(raw)["state"])
        except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: a hostile journal
            return "<unreadable>"

    def journal(self) -> dict | None:
        raw = self.annotations.get(ANNOTATION)
        return None if raw is None else json.loads(raw)

    def handed_back(self, unschedulable: bool) -> bool:
        return (self.unschedulable == unschedulable and self.state in (None, "Idle")
                and LEGACY_ANNOTATION not in self.annotations)


def spec_changes(body: Any) -> list[tuple[str, Any]]:
    """What a node PATCH body changes under spec, as (path, value); a JSON patch's tests only read."""
    if isinstance(body, list):
        return [(op["path"], op.get("value")) for op in body
                if op.get("op") != "test" and str(op.get("path", "")).startswith("/spec")]
    spec = body.get("spec") if isinstance(body, dict) else None
    return [(f"/spec/{key}", value) for key, value in (spec or {}).items()]


def snap(node: dict, t: float | None = None) -> Snap:
    meta = node["metadata"]
    return Snap(time.monotonic() if t is None else t, bool(node["spec"].get("unschedulable")),
                dict(meta.get("annotations") or {}), dict(meta.get("labels") or {}))


class NodeWatch:
    """Records the node after every applied PATCH and runs one-shot actions around requests."""

    def __init__(self, cluster: FakeKube) -> None:
        self.cluster = cluster
        self._lock = threading.Lock()
        self.records: list[Snap] = [snap(cluster.node(NODE))]
        self._after: list[tuple[str | None, Callable[[], None]]] = []
        self._before: list[tuple[str, str | None, Callable[[], None]]] = []
        cluster.on_request(self._on_request)
        cluster.before_reply(self._before_reply)

    def after_state(self, state: str | None, action: Callable[[], None]) -> None:
        """Run ``action`` once, right after the first PATCH that leaves the journal in ``state``
        has been applied, before the agent receives the reply."""
        with self._lock:
            self._after.append((state, action))

    def before(self, method: str, action: Callable[[], None], *, journal: str | None = "any") -> None:
        """Run ``action`` once, before the first ``method`` request to the node served while the
        recorded journal state is ``journal`` ("any": whatever it is)."""
        with self._lock:
            self._before.append((method, journal, action))

    def _before_reply(self, method: str, path: str, code: int, body: Any) -> None:
        if method != "PATCH" or path != NODE_PATH or not 200 <= code < 300:
            return
        record = snap(body)
        with self._lock:
            self.records.append(record)
            fire = [a for a in self._after if a[0] == record.state]
            for a in fire:
                self._after.remove(a)
        for _, action in fire:
            action()

    def _on_request(self, method: str, path: str) -> None:
        if path != NODE_PATH:
            return
        with self._lock:
            state = self.records[-1].state
            fire = [b for b in self._before if b[0] == method and b[1] in ("any", state)]
            for b in fire[:1]:
                self._before.remove(b)
        for _, _, action in fire[:1]:
            action()

    def last(self) -> Snap:
        with self._lock:
            return self.records[-1]

    def states(self) -> list[str | None]:
        with self._lock:
            return [r.state for r in self.records]

    def recovered_after(self, t0: float, unschedulable: bool) -> float | None:
        """Seconds from ``t0`` until the node was handed back for good (0 if it never left that
        state after t0), or None if it is not handed back."""
        with self._lock:
            records = list(self.records)
        bad = [i for i, r in enumerate(records) if not r.handed_back(unschedulable)]
        if not bad:
            return 0.0
        if bad[-1] == len(records) - 1:
            return None
        return max(0.0, records[bad[-1] + 1].t - t0)


# --------------------------------------------------------------------------------------------
# The agent, as a process
# --------------------------------------------------------------------------------------------


class Line(NamedTuple):
    t: float  # time.monotonic() when it was read
    text: str
    index: int


class AgentProcess:
    """`python -m fsm_cleaner run [--once]` in its own session, its log read line by line."""

    def __init__(self, env: dict[str, str], *args: str, once: bool = True) -> None:
        self.cmd = [sys.executable, "-m", "fsm_cleaner", "run", *(["--once"] if once else []), *args]
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[tuple[float, str]] = []
        self.started = self.exited_at = 0.0
        self.signalled: list[tuple[float, int]] = []
        self._cond = threading.Condition()
        self._triggers: list[tuple[re.Pattern[str], Callable[[], None]]] = []
        self._reader: threading.Thread | None = None

    def on_line(self, pattern: str, action: Callable[[], None]) -> None:
        """Run ``action`` once (in the reader thread) on the first log line matching ``pattern``."""
        with self._cond:
            self._triggers.append((re.compile(pattern), action))

    def start(self) -> AgentProcess:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=REPO, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"agent-{self.proc.pid}")
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.monotonic()
            with self._cond:
                self.lines.append((now, line.rstrip("\n")))
                fire = [t for t in self._triggers if t[0].search(line)]
                for t in fire:
                    self._triggers.remove(t)
                self._cond.notify_all()
            for _, action in fire:
                action()
        self.proc.wait()
        with self._cond:
            self.exited_at = time.monotonic()
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log(self) -> str:
        with self._cond:
            return "\n".join(line for _, line in self.lines)

    def states(self, start: int = 0) -> list[str]:
        """The states entered, in order, from log line ``start`` on."""
        with self._cond:
            text = "\n".join(line for _, line in self.lines[start:])
        return re.findall(r" \w+ -> (\w+) \(\w+\) after ", text)

    def signal(self, sig: int) -> float:
        """Send ``sig``; returns the time it was sent."""
        now = time.monotonic()
        with self._cond:
            self.signalled.append((now, sig))
        os.kill(self.pid, sig)
        return now

    def wait_for(self, pattern: str, timeout: float = 30, start: int = 0) -> Line:
        """The first log line from index ``start`` on that matches (waiting for it)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for index, (t, line) in enumerate(self.lines[start:], start):
                    if regex.search(line):
                        return Line(t, line, index)
                if self.exited_at:
                    raise AssertionError(f"the agent exited without logging {pattern!r}:\n{self.log}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no log line {pattern!r} within {timeout:g} s:\n{self.log}")
                self._cond.wait(min(left, 0.2))

    def count(self, pattern: str) -> int:
        regex = re.compile(pattern)
        with self._cond:
            return sum(1 for _, line in self.lines if regex.search(line))

    def wait(self, timeout: float = 60) -> int:
        """Wait for the exit (and the end of its log); the exit code (negative: killed by that signal)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.exited_at, timeout):
                raise AssertionError(f"the agent did not exit within {timeout:g} s:\n{self.log}")
        assert self.proc is not None and self.proc.returncode is not None
        return self.proc.returncode

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cleanup(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # Its own session: the group holds the agent and anything it started.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self._reader is not None:
            self._reader.join(5)


@pytest.fixture
def agents() -> Iterator[Callable[..., AgentProcess]]:
    """``agents(env, once=True)`` makes an AgentProcess (call .start()); every one is killed at teardown."""
    made: list[AgentProcess] = []

    def make(env: dict[str, str], *args: str, once: bool = True) -> AgentProcess:
        agent = AgentProcess(env, *args, once=once)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.cleanup()


# --------------------------------------------------------------------------------------------
# The Docker side and the node: one scene per test
# --------------------------------------------------------------------------------------------


def image_exists(bed: DockerBed, image: str) -> bool:
    with contextlib.closing(bed.client()) as client:
        try:
            client.images.get(image)
            return True
        except docker.errors.ImageNotFound:
            return False


@dataclass
class Scene:
    bed: DockerBed
    cluster: FakeKube
    tmp: Path
    watch: NodeWatch
    old_images: list[str]  # in build order; old_images[0] is used by the stopped container
    stopped_container: str
    dangling: str
    live_image: str
    live_container: str
    high: float
    unschedulable_before: bool
    labels_before: dict[str, str]
    annotations_before: dict[str, str]  # not counting ours

    def env(self, **settings: Any) -> dict[str, str]:
        base = {
            "DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH": self.high,
            "DOCKER_IMAGE_CLEANER_DELAY_SECONDS": DELAY,
            "FSM_CLEANER_STOP_TIMEOUT_SECONDS": STOP_TIMEOUT,
            "FSM_CLEANER_API_TIMEOUT_SECONDS": API_READ_TIMEOUT,
            "FSM_CLEANER_RETRY_ATTEMPTS": RETRY_ATTEMPTS,
        }
        base.update(settings)
        return agent_env(self.bed, self.tmp, **base)

    def live_ok(self) -> bool:
        """The running container's image is there and the container runs."""
        if not image_exists(self.bed, self.live_image):
            return False
        with contextlib.closing(self.bed.client()) as client:
            return client.containers.get(self.live_container).status == "running"

    def check_handed_back(self, unschedulable: bool | None = None, journal: bool = True,
                          labels: dict[str, str] | None = None) -> list[str]:
        """Assert the node and Docker invariants; returns their names for the table."""
        unschedulable = self.unschedulable_before if unschedulable is None else unschedulable
        node = snap(self.cluster.node(NODE))
        names = []
        assert node.unschedulable is unschedulable, f"node unschedulable={node.unschedulable}"
        names.append(("cordoned" if unschedulable else "schedulable")
                     + (" as before" if unschedulable == self.unschedulable_before else ""))
        if journal:
            assert node.state == "Idle", f"journal {node.annotations.get(ANNOTATION)!r}"
            names.append("journal Idle")
        assert LEGACY_ANNOTATION not in node.annotations
        assert node.labels == {**self.labels_before, **(labels or {})}, node.labels
        assert {k: v for k, v in node.annotations.items() if k not in OURS} == self.annotations_before
        names.append("labels+annotations intact")
        assert image_exists(self.bed, self.live_image), "the running container's image was removed"
        names.append("live image kept")
        return names

    def wait_handed_back(self, unschedulable: bool | None = None, timeout: float = RECOVER_BOUND) -> None:
        unschedulable = self.unschedulable_before if unschedulable is None else unschedulable
        wait_until(lambda: snap(self.cluster.node(NODE)).handed_back(unschedulable), timeout,
                   "the node handed back")


def run_live(bed: DockerBed, image: str) -> str:
    """A running container that dockerd restarts when it comes back (restart policy always)."""
    container = bed.client().containers.run(
        image, ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"], detach=True,
        network_mode="none", restart_policy={"Name": "always"})
    container.reload()
    assert container.status == "running", container.logs()
    return str(container.id)


def make_scene(bed: DockerBed, cluster: FakeKube, tmp: Path, *, cordoned: bool = False,
               annotations: dict[str, str] | None = None, margin: float = 1.0) -> Scene:
    old = [bed.build_image(f"crash/old:{n}", 2) for n in range(3)]
    stopped = bed.run_container(old[0], running=False)
    dangling = bed.make_dangling(1, 1)[0]
    live = bed.build_image("crash/live:1", 1)
    live_container = run_live(bed, live)
    if cordoned or annotations:
        def change(node: dict) -> None:
            node["spec"]["unschedulable"] = cordoned
            node["metadata"]["annotations"].update(annotations or {})
        cluster.mutate(NODE, change)
    high = round(max(settled_usage(bed)) - margin, 2)
    watch = NodeWatch(cluster)
    before = watch.last()
    assert before.labels and before.annotations, "the node should carry a label and an annotation of its own"
    return Scene(bed, cluster, tmp, watch, old, stopped, dangling, live, live_container, high, cordoned,
                 before.labels, {k: v for k, v in before.annotations.items() if k not in OURS})


@pytest.fixture
def fake(cluster: Any) -> FakeKube:
    """The crash tests need the fake API server (faults, request hooks); skipped on a real cluster."""
    if not isinstance(cluster, FakeKube):
        pytest.skip("the crash tests need the fake API server (fault injection, request hooks)")
    return cluster


@pytest.fixture
def scene(docker_bed: DockerBed, fake: FakeKube, tmp_path: Path) -> Scene:
    return make_scene(docker_bed, fake, tmp_path)


@pytest.fixture
def slow_du(tmp_path: Path) -> Path:
    """A directory to put first on PATH: its `du` waits 30 s (or until its parent dies), then runs
    the real one. Makes Measuring in absolute mode slow enough to be signalled."""
    real = shutil.which("du")
    assert real, "du not found"
    folder = tmp_path / "slow-bin"
    folder.mkdir()
    script = folder / "du"
    script.write_text(
        f"#!{sys.executable}\n"
        "import os, sys, time\n"
        "parent, end = os.getppid(), time.monotonic() + 30\n"
        "while time.monotonic() < end and os.getppid() == parent:\n"
        "    time.sleep(0.05)\n"
        "if os.getppid() == parent:\n"
        f"    os.execv({real!r}, ['du', *sys.argv[1:]])\n")
    script.chmod(0o755)
    return folder
