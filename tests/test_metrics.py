"""Prometheus metrics: each record_* helper, the exposition text, the hooks in a fast in-process cycle,
METRICS_PORT / METRICS_ADDRESS, and a real cycle on the dockerd test bed scraped during and after it.

The metrics live in one process-wide registry, so the tests compare values before and after what they
do instead of expecting a fresh registry.
"""

from __future__ import annotations

import platform
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from tenacity import wait_none

from devtools.fakekube import FakeKube
from devtools.testbed import DockerBed
from fsm_cleaner import config, machine, metrics, retry
from fsm_cleaner.cli import EXIT_CONFIG
from fsm_cleaner.config import ConfigError
from fsm_cleaner.disk import FsStats
from tests.conftest import REPO, RealCluster, agent_env, journal_of, needs_fake
from tests.test_agent import Bed, MiB
from tests.test_cycle import high_just_below, to_bytes

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def value(name: str, **labels: str) -> float:
    """A sample of the registry; 0 for a series that does not exist yet."""
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def parse(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


# --- the helpers ---------------------------------------------------------------------------------
def test_record_state_sets_one_state_and_the_cordon() -> None:
    metrics.record_state("PruningAll", cordoned=True)
    states = {name: value("fsm_cleaner_state", state=name) for name in machine.STATE_NAMES}
    assert states == {name: float(name == "PruningAll") for name in machine.STATE_NAMES}
    assert value("fsm_cleaner_node_cordoned") == 1
    metrics.record_state("Idle", cordoned=False)
    assert value("fsm_cleaner_state", state="PruningAll") == 0
    assert value("fsm_cleaner_state", state="Idle") == 1
    assert value("fsm_cleaner_node_cordoned") == 0


def test_record_usage_gives_blocks_and_inodes_as_ratios() -> None:
    metrics.record_usage(FsStats(total_bytes=1000, free_bytes=250, total_inodes=100, free_inodes=90,
                                 reserved_bytes=50))
    assert value("fsm_cleaner_disk_usage_ratio", kind="blocks") == pytest.approx(700 / 950)  # as df's Use%
    assert value("fsm_cleaner_disk_usage_ratio", kind="inodes") == pytest.approx(0.1)
    # a filesystem without an inode table (btrfs): no inode series, rather than a made-up 0
    metrics.record_usage(FsStats(total_bytes=1000, free_bytes=500, total_inodes=0, free_inodes=0))
    assert metrics.REGISTRY.get_sample_value("fsm_cleaner_disk_usage_ratio", {"kind": "inodes"}) is None
    assert value("fsm_cleaner_disk_usage_ratio", kind="blocks") == 0.5


def test_record_removal_counts_objects_and_bytes_by_kind_and_reason() -> None:
    labels = {"kind": "image", "reason": "least_needed"}
    objects, reclaimed = value("fsm_cleaner_removed_objects_total", **labels), \
        value("fsm_cleaner_reclaimed_bytes_total", **labels)
    metrics.record_removal("image", "least needed", 3 * MiB)  # the planner's words, made label-safe
    metrics.record_removal("image", "least needed", 2 * MiB, count=2)
    assert value("fsm_cleaner_removed_objects_total", **labels) == objects + 3
    assert value("fsm_cleaner_reclaimed_bytes_total", **labels) == reclaimed + 5 * MiB
    with pytest.raises(ValueError, match="'images' is none of"):
        metrics.record_removal("images", "dangling", 1)


def test_record_skipped_counts_by_reason() -> None:
    before = value("fsm_cleaner_removals_skipped_total", reason="too_young")
    metrics.record_skipped("too young", 4)
    metrics.record_skipped("too young")
    assert value("fsm_cleaner_removals_skipped_total", reason="too_young") == before + 5


def test_record_cycle_counts_results_and_observes_durations() -> None:
    done, skipped = value("fsm_cleaner_cycles_total", result="done"), \
        value("fsm_cleaner_cycles_total", result="skipped")
    runs, cordons = value("fsm_cleaner_cycle_duration_seconds_count"), \
        value("fsm_cleaner_cordon_duration_seconds_count")
    in_two_hours = value("fsm_cleaner_cycle_duration_seconds_bucket", le="7200.0")
    metrics.record_cycle("done", 5400.0, 5399.0)  # an hour and a half: buckets reach hours
    metrics.record_cycle("skipped")  # a measurement below the threshold: no duration
    assert value("fsm_cleaner_cycles_total", result="done") == done + 1
    assert value("fsm_cleaner_cycles_total", result="skipped") == skipped + 1
    assert value("fsm_cleaner_cycle_duration_seconds_count") == runs + 1
    assert value("fsm_cleaner_cordon_duration_seconds_count") == cordons + 1
    assert value("fsm_cleaner_cycle_duration_seconds_bucket", le="7200.0") == in_two_hours + 1
    with pytest.raises(ValueError, match="'ok' is none of"):
        metrics.record_cycle("ok")


def test_a_retry_of_the_policy_is_counted_by_step() -> None:
    cfg = config.load({"FSM_CLEANER_PATH_TO_CHECK": str(REPO)})
    before = value("fsm_cleaner_retries_total", step="Cordoning")
    answers = iter([ConnectionError("refused"), ConnectionError("refused"), "ok"])

    def flaky() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    policy = retry.policy(cfg, "Cordoning", sleep=lambda s: None, hold=lambda s: None).copy(wait=wait_none())
    assert policy(flaky) == "ok"
    assert value("fsm_cleaner_retries_total", step="Cordoning") == before + 2


# --- the exposition ------------------------------------------------------------------------------
# name -> (type, label names), as a scraper sees them
EXPOSED = {
    "fsm_cleaner_state": ("gauge", {"state"}),
    "fsm_cleaner_node_cordoned": ("gauge", set()),
    "fsm_cleaner_cordon_slot_held": ("gauge", set()),
    "fsm_cleaner_disk_usage_ratio": ("gauge", {"kind"}),
    "fsm_cleaner_cycles": ("counter", {"result"}),
    "fsm_cleaner_cycle_duration_seconds": ("histogram", set()),
    "fsm_cleaner_cordon_duration_seconds": ("histogram", set()),
    "fsm_cleaner_reclaimed_bytes": ("counter", {"kind", "reason"}),
    "fsm_cleaner_removed_objects": ("counter", {"kind", "reason"}),
    "fsm_cleaner_removals_skipped": ("counter", {"reason"}),
    "fsm_cleaner_retries": ("counter", {"step"}),
    "fsm_cleaner_build_info": ("gauge", {"version", "python"}),  # an Info: a gauge at 1 in the text format
}


def test_exposition_names_types_and_labels() -> None:
    metrics.record_usage(FsStats(total_bytes=1000, free_bytes=500, total_inodes=10, free_inodes=5))
    metrics.record_removal("container", "stopped", 0, count=0)
    metrics.record_skipped("in use", 0)
    metrics.record_retry("Measuring")
    text = generate_latest(metrics.REGISTRY).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {n: f.type for n, f in families.items()} == {n: t for n, (t, _) in EXPOSED.items()}
    for name, family in families.items():
        _, labels = EXPOSED[name]
        assert family.documentation, name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, sample
            suffix = sample.name.removeprefix(name)
            assert suffix in {"counter": {"_total"}, "histogram": {"_bucket", "_count", "_sum"}}.get(
                family.type, {""}), sample.name
    assert not re.search(r"_created\b", text)  # no extra series per counter
    # every state of the machine has its series, whether or not it was visited
    assert {s.labels["state"] for s in families["fsm_cleaner_state"].samples} == set(machine.STATE_NAMES)
    assert {s.labels["result"] for s in families["fsm_cleaner_cycles"].samples} >= {
        "done", "failed", "stopped", "skipped"}
    tomllib = pytest.importorskip("tomllib")
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    [build] = families["fsm_cleaner_build_info"].samples
    assert build.labels == {"version": version, "python": platform.python_version()} and build.value == 1


# --- the hooks, in a fast in-process cycle -------------------------------------------------------
def snapshot() -> Samples:
    return parse(generate_latest(metrics.REGISTRY).decode())


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


@pytest.mark.parametrize("node", [True, False], ids=["node", "no-cluster"])
def test_a_cycle_is_recorded_as_its_report_says(tmp_path: Path, node: bool) -> None:
    bed = Bed(tmp_path, node=node)
    bed.fill()
    during: list[Samples] = []
    bed.runtime.faults.add("remove_image", lambda: during.append(snapshot()))
    before = snapshot()
    assert bed.run() == 0
    after, cycle = snapshot(), bed.agent.cycle

    [seen] = during  # while PruningAll removes its first image
    assert total(seen, "fsm_cleaner_state", state="PruningAll") == 1
    assert total(seen, "fsm_cleaner_node_cordoned") == (1 if node else 0)  # no cluster: nothing cordoned
    assert total(seen, "fsm_cleaner_cordon_slot_held") == (1 if node else 0)
    assert delta(seen, before, "fsm_cleaner_removed_objects_total", kind="container") == 1
    assert delta(seen, before, "fsm_cleaner_cycles_total") == 0  # under way (Reconciling is no cycle)
    assert total(after, "fsm_cleaner_state", state="Idle") == 1
    assert total(after, "fsm_cleaner_node_cordoned") == 0
    assert delta(after, before, "fsm_cleaner_cycles_total", result="done") == 1
    assert delta(after, before, "fsm_cleaner_cycles_total") == 1
    assert delta(after, before, "fsm_cleaner_removed_objects_total", kind="container") == cycle.containers
    assert cycle.containers == 1
    # by the planner's reasons (dangling, superseded, least needed): together, what the summary counts
    assert delta(after, before, "fsm_cleaner_removed_objects_total", kind="image") == cycle.images > 0
    assert delta(after, before, "fsm_cleaner_reclaimed_bytes_total") == cycle.reported_bytes
    assert delta(after, before, "fsm_cleaner_removals_skipped_total", reason="in_use") == 1  # live:1
    assert delta(after, before, "fsm_cleaner_cycle_duration_seconds_count") == 1
    assert delta(after, before, "fsm_cleaner_cordon_duration_seconds_count") == 1
    assert total(after, "fsm_cleaner_disk_usage_ratio", kind="blocks") == pytest.approx(
        bed.disk.fs_stats("").block_percent / 100)


def test_below_the_threshold_a_cycle_is_skipped_and_a_dry_run_says_so(tmp_path: Path) -> None:
    quiet = Bed(tmp_path)
    quiet.fill(images=1)
    before = snapshot()
    assert quiet.run() == 0
    after = snapshot()
    assert delta(after, before, "fsm_cleaner_cycles_total", result="skipped") == 1
    assert delta(after, before, "fsm_cleaner_cycle_duration_seconds_count") == 0
    assert total(after, "fsm_cleaner_disk_usage_ratio", kind="blocks") == pytest.approx(
        quiet.disk.fs_stats("").block_percent / 100)

    dry = Bed(tmp_path, env={"FSM_CLEANER_DRY_RUN": "true"})
    dry.fill()
    assert dry.run() == 0
    final = snapshot()
    assert delta(final, after, "fsm_cleaner_cycles_total", result="dry_run") == 1
    assert delta(final, after, "fsm_cleaner_cycles_total", result="done") == 0
    # what a dry run would have removed, as its summary says
    assert delta(final, after, "fsm_cleaner_reclaimed_bytes_total") == dry.agent.cycle.reported_bytes > 0


# --- the settings --------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, port", [("", None), ("0", None), ("9477", 9477), (" 1 ", 1), ("65535", 65535)])
def test_metrics_port_accepts_a_port_or_off(tmp_path: Path, raw: str, port: int | None) -> None:
    cfg = config.load({"FSM_CLEANER_PATH_TO_CHECK": str(tmp_path), "FSM_CLEANER_METRICS_PORT": raw})
    assert cfg.metrics_port == port


@pytest.mark.parametrize("raw", ["65536", "-1", "http", "9477.0", "9477/tcp"])
def test_metrics_port_refuses_what_is_not_a_port(tmp_path: Path, raw: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.load({"FSM_CLEANER_PATH_TO_CHECK": str(tmp_path), "FSM_CLEANER_METRICS_PORT": raw})
    assert str(e.value).startswith(f"FSM_CLEANER_METRICS_PORT={raw!r} is not a port; accepted: a whole")


@pytest.mark.parametrize("raw, address", [("127.0.0.1", "127.0.0.1"), (" :: ", "::"), ("0.0.0.0", "0.0.0.0")])
def test_metrics_address_accepts_an_ip_address(tmp_path: Path, raw: str, address: str) -> None:
    cfg = config.load({"FSM_CLEANER_PATH_TO_CHECK": str(tmp_path), "FSM_CLEANER_METRICS_ADDRESS": raw})
    assert cfg.metrics_address == address


@pytest.mark.parametrize("raw", ["localhost", "10.0.0.256", "0.0.0.0:9477"])
def test_metrics_address_refuses_what_is_not_an_ip_address(tmp_path: Path, raw: str) -> None:
    with pytest.raises(ConfigError, match=f"METRICS_ADDRESS={raw!r} is not an IP address; accepted"):
        config.load({"FSM_CLEANER_PATH_TO_CHECK": str(tmp_path), "FSM_CLEANER_METRICS_ADDRESS": raw})


def test_metrics_are_off_by_default(tmp_path: Path) -> None:
    cfg = config.load({"FSM_CLEANER_PATH_TO_CHECK": str(tmp_path)})
    assert (cfg.metrics_port, cfg.metrics_address) == (None, "0.0.0.0")


def test_a_port_in_use_is_a_configuration_error_before_anything_is_touched(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = agent_env(None, tmp_path, node=False, FSM_CLEANER_PATH_TO_CHECK=tmp_path,
                        FSM_CLEANER_METRICS_PORT=port, FSM_CLEANER_METRICS_ADDRESS="127.0.0.1",
                        DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock")
        proc = subprocess.run([sys.executable, "-m", "fsm_cleaner", "run", "--once"], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    assert f"configuration error: METRICS_PORT={port}: cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert " -> " not in proc.stderr  # not a single transition: nothing was touched


# --- a real cycle on the test bed, scraped -------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        return parse(reply.read().decode())


def shown_as(measured: float, shown: str) -> bool:
    """``measured`` is what the log shows as ``shown``, a figure rounded to one decimal."""
    return abs(measured - float(shown)) <= 0.05 + 1e-9


def wait_for(path: Path, pattern: str, proc: subprocess.Popen, timeout: float = 120) -> re.Match:
    """The first match of ``pattern`` in the agent's log, once the agent has written it."""
    deadline = time.monotonic() + timeout
    while True:
        match = re.search(pattern, path.read_text())
        if match:
            return match
        assert proc.poll() is None, f"the agent exited ({proc.returncode}):\n{path.read_text()}"
        assert time.monotonic() < deadline, f"no {pattern!r} in the log:\n{path.read_text()}"
        time.sleep(0.1)


def test_a_real_cycle_scraped_during_and_after_matches_its_summary(
        docker_bed: DockerBed, cluster: FakeKube | RealCluster, tmp_path: Path) -> None:
    fake = needs_fake(cluster)  # the scrape during the cycle runs in the fake's hook
    old = docker_bed.build_image("app:old", 10)
    for n in range(3):
        docker_bed.build_image(f"app:{n}", 10)
    docker_bed.run_container(old, running=False)
    docker_bed.run_container(docker_bed.build_image("app:live", 10), running=True)
    port, agent_log = free_port(), tmp_path / "agent.log"
    during: list[Samples] = []

    def scrape_when_pruning_all(method: str, path: str, code: int, body: object) -> None:
        # The agent journals PruningAll before its first removal and waits for this reply: its state
        # is PruningAll for as long as this hook runs.
        entry = journal_of(body) if method == "PATCH" and code == 200 else None
        if entry and entry["state"] == "PruningAll" and not during:
            during.append(scrape(port))

    fake.before_reply(scrape_when_pruning_all)
    env = agent_env(docker_bed, tmp_path, DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH=high_just_below(docker_bed),
                    FSM_CLEANER_INTERVAL_SECONDS=3600, FSM_CLEANER_METRICS_PORT=port,
                    FSM_CLEANER_METRICS_ADDRESS="127.0.0.1")
    with agent_log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fsm_cleaner", "run"], env=env, cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        summary = wait_for(agent_log, r"cycle done: usage (?P<first>[\d.]+)% -> (?P<last>[\d.]+)%; freed .*? "
                           r"\(Docker reports (?P<reported>[\d.]+ \w+)\); removed (?P<containers>\d+) "
                           r"containers and (?P<images>\d+) images; node cordoned (?P<cordoned>[\d.]+) s; "
                           r"took (?P<took>[\d.]+) s", proc)
        after = scrape(port)
        plan = re.search(r"images stay: (?:.*, )?(\d+) in use", agent_log.read_text())
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    log = agent_log.read_text()
    assert code == 0, log
    assert "metrics at http://127.0.0.1:" in log

    [seen] = during
    assert total(seen, "fsm_cleaner_state", state="PruningAll") == 1
    assert total(seen, "fsm_cleaner_node_cordoned") == 1
    assert total(seen, "fsm_cleaner_cycles_total") == 0  # under way
    assert total(seen, "fsm_cleaner_removed_objects_total", kind="container") == 1
    assert total(seen, "fsm_cleaner_cordon_duration_seconds_count") == 0
    # the usage measured at the start of the cycle, as the summary rounds it
    usage = max(total(seen, "fsm_cleaner_disk_usage_ratio", kind=k) for k in ("blocks", "inodes"))
    assert shown_as(100 * usage, summary["first"])

    assert total(after, "fsm_cleaner_state", state="Idle") == 1
    assert total(after, "fsm_cleaner_node_cordoned") == 0
    assert total(after, "fsm_cleaner_cycles_total", result="done") == 1
    assert total(after, "fsm_cleaner_cycles_total") == 1
    containers = total(after, "fsm_cleaner_removed_objects_total", kind="container")
    assert containers == int(summary["containers"]) == 1
    assert total(after, "fsm_cleaner_removed_objects_total") - containers == int(summary["images"]) == 4
    reported, unit = summary["reported"].split()
    assert shown_as(total(after, "fsm_cleaner_reclaimed_bytes_total") / to_bytes(f"1 {unit}"), reported)
    assert shown_as(total(after, "fsm_cleaner_cycle_duration_seconds_sum"), summary["took"])
    assert shown_as(total(after, "fsm_cleaner_cordon_duration_seconds_sum"), summary["cordoned"])
    assert total(after, "fsm_cleaner_cycle_duration_seconds_count") == 1
    assert plan is not None
    assert total(after, "fsm_cleaner_removals_skipped_total", reason="in_use") == int(plan[1]) > 0
    usage_after = max(total(after, "fsm_cleaner_disk_usage_ratio", kind=k) for k in ("blocks", "inodes"))
    assert usage_after < usage
