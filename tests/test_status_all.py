"""`fsm-cleaner status --all` against the fake API server: a line per node, and exit 3 for a node that
fsm-cleaner has held cordoned for too long."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from devtools.fakekube import FakeKube
from fsm_cleaner import fleet
from fsm_cleaner.cli import EXIT_CONFIG, EXIT_HELD_TOO_LONG
from fsm_cleaner.journal import ANNOTATION, LEGACY_ANNOTATION, NodeView
from tests.conftest import REPO

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def journal(state: str, ours: bool, ago: timedelta, **extra: object) -> str:
    since = (datetime.now(timezone.utc).replace(microsecond=0) - ago).isoformat().replace("+00:00", "Z")
    return json.dumps({"state": state, "cordoned_by_us": ours, "was_unschedulable": False, "since": since,
                       "holder": "fsm-cleaner-x", **extra})


def ages(since_cell: str, start: float, end: float) -> tuple[str, set[str]]:
    """The age a SINCE cell shows, and the ones it may show for a run between ``start`` and ``end``."""
    since, shown = since_cell.split(" (")
    then = datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp()
    possible = {fleet.duration(s) for s in range(int(start - then), int(end - then) + 1)}
    return shown.removesuffix(" ago)"), possible


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[FakeKube]:
    """Nodes in every state an on-call engineer may meet."""
    with FakeKube() as fake:
        fake.add_node("a-held-long", unschedulable=True, annotations={
            ANNOTATION: journal("PruningAll", True, timedelta(hours=2, minutes=5), slot=1)})
        fake.add_node("b-held-briefly", unschedulable=True, annotations={
            ANNOTATION: journal("Cordoning", True, timedelta(minutes=5), slot="fsm-cleaner-slot-0")})
        fake.add_node("c-idle", annotations={ANNOTATION: journal("Idle", False, timedelta(days=1))})
        fake.add_node("d-unreadable", unschedulable=True, annotations={ANNOTATION: "{half"})
        fake.add_node("e-never-cleaned")
        fake.add_node("f-drained", unschedulable=True, annotations={
            ANNOTATION: journal("Idle", False, timedelta(minutes=1))})
        fake.add_node("g-old-cleaner", unschedulable=True, annotations={LEGACY_ANNOTATION: "true"})
        # our journal says cordoned, but someone has uncordoned the node since: not held
        fake.add_node("h-uncordoned-by-hand", annotations={
            ANNOTATION: journal("PruningAll", True, timedelta(hours=3))})
        fake.kubeconfig(tmp_path / "kubeconfig")
        yield fake


def status_all(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """As a cron job runs it: a process of its own, the kubeconfig from KUBECONFIG."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FSM_CLEANER_", "DOCKER_IMAGE_CLEANER_"))}
    env.update(KUBECONFIG=str(tmp_path / "kubeconfig"), NO_PROXY="127.0.0.1,localhost", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "fsm_cleaner", "status", "--all", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def columns(out: str) -> dict[str, list[str]]:
    """Node -> its cells, split where the header's columns start (cells may hold spaces)."""
    header, *rows = out.splitlines()
    starts = [i for i, c in enumerate(header) if c != " " and (i == 0 or header[i - 1] == " ")]
    starts = [s for n, s in enumerate(starts) if n == 0 or header[starts[n - 1]:s].strip() != "LAST"]
    cut = [*starts, None]
    table = {}
    for row in [header, *rows]:
        cells = [row[cut[n]:cut[n + 1]].strip() for n in range(len(starts))]
        table[cells[0]] = cells[1:]
    return table


def test_a_line_per_node_and_exit_3_for_the_one_held_too_long(cluster: FakeKube, tmp_path: Path) -> None:
    start = time.time()
    run = status_all(tmp_path)
    end = time.time()
    assert run.returncode == EXIT_HELD_TOO_LONG, run.stderr
    out, err = run.stdout, run.stderr
    table = columns(out)
    assert table["NODE"] == ["STATE", "SINCE", "CORDONED", "SLOT"]  # no journal carries a result: no column
    assert list(table)[1:] == ["a-held-long", "b-held-briefly", "c-idle", "d-unreadable", "e-never-cleaned",
                               "f-drained", "g-old-cleaner", "h-uncordoned-by-hand"]
    state, since, cordoned, slot = table["a-held-long"]
    assert (state, cordoned, slot) == ("PruningAll", "fsm-cleaner", "1")
    shown_a, possible = ages(since, start, end)
    assert shown_a in possible and shown_a.startswith("2h0")
    assert table["b-held-briefly"][0::2] == ["Cordoning", "fsm-cleaner"]
    assert table["b-held-briefly"][3] == "fsm-cleaner-slot-0"
    assert table["c-idle"][2:] == ["no", "-"]
    shown, possible = ages(table["c-idle"][1], start, end)
    assert shown in possible and shown.startswith("1d00h")
    assert table["d-unreadable"] == ["UNREADABLE", "-", "unknown", "-"]
    assert table["e-never-cleaned"] == ["none", "-", "no", "-"]
    assert table["f-drained"][2] == "other"
    assert table["g-old-cleaner"] == ["none", "-", "docker-image-cleaner", "-"]
    assert table["h-uncordoned-by-hand"][2] == "no"
    assert err.count("\n") == 1 and f"a-held-long has been cordoned by fsm-cleaner for {shown_a} (" in err
    assert "longer than --max-cordoned-for 1h" in err and "The node has been cordoned for an hour" in err


def test_the_limit_is_the_operators(cluster: FakeKube, tmp_path: Path) -> None:
    run = status_all(tmp_path, "--max-cordoned-for", "3h")
    assert (run.returncode, run.stderr) == (0, "")
    run = status_all(tmp_path, "--max-cordoned-for", "60")
    assert run.returncode == EXIT_HELD_TOO_LONG
    err = run.stderr
    assert "a-held-long" in err and "b-held-briefly" in err and "h-uncordoned" not in err


def test_the_last_result_is_shown_when_a_journal_carries_it(cluster: FakeKube, tmp_path: Path) -> None:
    cluster.mutate("c-idle", lambda n: n["metadata"]["annotations"].update(
        {ANNOTATION: journal("Idle", False, timedelta(minutes=3), last_result="succeeded")}))
    table = columns(status_all(tmp_path).stdout)
    assert table["NODE"][-1] == "LAST RESULT"
    assert table["c-idle"][-1] == "succeeded" and table["e-never-cleaned"][-1] == "-"


def test_a_journal_written_by_anyone_is_shown_escaped(cluster: FakeKube, tmp_path: Path) -> None:
    cluster.mutate("c-idle", lambda n: n["metadata"]["annotations"].update(
        {ANNOTATION: journal("Idle\x1b[2J", False, timedelta(0), slot="\u202eevil")}))
    out = status_all(tmp_path).stdout
    assert "\x1b" not in out and "\u202e" not in out and "Idle\\x1b[2J" in out


@pytest.mark.parametrize("args, message", [
    (["--max-cordoned-for", "an hour"], "--max-cordoned-for='an hour' is not a duration"),
    (["--diagram", "x.svg"], "--diagram='x.svg' with --all"),
])
def test_wrong_arguments_exit_2(cluster: FakeKube, tmp_path: Path, args: list[str], message: str) -> None:
    run = status_all(tmp_path, *args)
    assert run.returncode == EXIT_CONFIG and message in run.stderr


def test_without_nodes_list_rbac_it_says_what_is_missing(cluster: FakeKube, tmp_path: Path) -> None:
    cluster.fail("GET", r"^/api/v1/nodes$", status=403)
    run = status_all(tmp_path)
    assert run.returncode == 1 and run.stdout == ""
    assert "cannot list the nodes: Kubernetes API 403 Forbidden (the service account needs nodes list: " \
           "deploy/base/rbac.yaml)" in run.stderr


def test_a_journal_whose_time_cannot_be_read_counts_as_held_too_long() -> None:
    raw = json.dumps({"state": "PruningAll", "cordoned_by_us": True, "was_unschedulable": False,
                      "since": "yesterday"})
    line = fleet.line(NodeView("n", "1", True, {ANNOTATION: raw}), NOW)
    assert line.held_for == math.inf and fleet.held_too_long([line], 3600) == [line]


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59, "59s"), (60, "1m00s"), (3599, "59m59s"),
                                           (3600, "1h00m"), (7500, "2h05m"), (86400 + 3600, "1d01h")])
def test_durations_read_at_a_glance(seconds: float, text: str) -> None:
    assert fleet.duration(seconds) == text
