"""The commands an operator types: status, and the documentation of every setting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from devtools.fakekube import FakeKube
from fsm_cleaner.cli import main
from fsm_cleaner.config import SETTINGS
from fsm_cleaner.journal import ANNOTATION, LEGACY_ANNOTATION, Journal
from tests.conftest import NODE, REPO, agent_env


def status(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fsm_cleaner", "status", *args],
                          env=agent_env(None, tmp_path), capture_output=True, text=True, cwd=REPO, timeout=60)


def test_status_shows_the_journal_for_the_on_call_engineer(cluster: FakeKube, tmp_path) -> None:
    entry = Journal("PruningAll", True, False, "2026-11-29T03:00:00Z", "fsm-cleaner-x7k2p",
                    slot="fsm-cleaner-slot-1")

    def cordoned_mid_cycle(node: dict) -> None:
        node["spec"]["unschedulable"] = True
        node["metadata"]["annotations"].update({ANNOTATION: entry.encode(), LEGACY_ANNOTATION: "true"})

    cluster.mutate(NODE, cordoned_mid_cycle)
    out = status(tmp_path, "--diagram", str(tmp_path / "now.mmd"))
    assert out.returncode == 0, out.stderr
    assert "schedulable:  no (cordoned)" in out.stdout
    assert "PruningAll since 2026-11-29T03:00:00Z" in out.stdout and "fsm-cleaner-x7k2p" in out.stdout
    assert "cordoned by fsm-cleaner: yes" in out.stdout
    assert "cordon slot:  fsm-cleaner-slot-1" in out.stdout
    assert LEGACY_ANNOTATION in out.stdout
    assert "class PruningAll current" in (tmp_path / "now.mmd").read_text()


def test_status_says_when_the_journal_cannot_be_read(cluster: FakeKube, tmp_path) -> None:
    cluster.mutate(NODE, lambda n: n["metadata"]["annotations"].update({ANNOTATION: "{half"}))
    out = status(tmp_path)
    assert out.returncode == 0
    assert "UNREADABLE" in out.stdout and "{half" in out.stdout


def test_status_without_a_node_name_is_a_configuration_error(tmp_path) -> None:
    out = subprocess.run([sys.executable, "-m", "fsm_cleaner", "status"], capture_output=True, text=True,
                         env=agent_env(None, tmp_path, node=False), cwd=REPO, timeout=60)
    assert out.returncode == 2
    assert "NODE_NAME" in out.stderr and "accepted:" in out.stderr


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    missing = [s.name for s in SETTINGS if f"`{s.name}`" not in readme]
    assert not missing, f"README.md's configuration table lacks {missing}"


def test_status_refuses_a_node_name_kubernetes_cannot_have(cluster: FakeKube, tmp_path) -> None:
    out = status(tmp_path, "--node-name", "Node_1")
    assert out.returncode == 2, out.stderr
    assert "--node-name='Node_1' is not a Kubernetes node name" in out.stderr and "DNS-1123" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("kubeconfig", ["apiVersion: v1\nclusters: [\n  - {name: x\n", "- a\n- b\n",
                                        "clusters: 5\ncontexts: 7\ncurrent-context: x\n", "\x00\xff"])
def test_a_malformed_kubeconfig_is_a_configuration_error(tmp_path, kubeconfig: str) -> None:
    path = tmp_path / "kubeconfig"
    path.write_bytes(kubeconfig.encode("latin-1"))
    env = agent_env(None, tmp_path) | {"KUBECONFIG": str(path), "FSM_CLEANER_PATH_TO_CHECK": str(tmp_path)}
    for command in (["status"], ["run", "--once", "--dry-run"]):
        out = subprocess.run([sys.executable, "-m", "fsm_cleaner", *command], capture_output=True, text=True,
                             env=env, cwd=REPO, timeout=60)
        assert out.returncode == 2, out.stderr
        assert "Traceback" not in out.stderr
        assert f"kubeconfig {str(path)!r}" in out.stderr and "accepted:" in out.stderr


def healthcheck(monkeypatch, capsys, heartbeat, max_age: str | None = None) -> tuple[int, str]:
    monkeypatch.setenv("FSM_CLEANER_HEARTBEAT_FILE", str(heartbeat))
    if max_age is not None:
        monkeypatch.setenv("FSM_CLEANER_HEARTBEAT_MAX_AGE_SECONDS", max_age)
    code = main(["healthcheck"])
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize("max_age", ["nan", "inf", "-5", "0", "soon"])
def test_healthcheck_refuses_a_max_age_that_cannot_work(monkeypatch, capsys, tmp_path, max_age: str) -> None:
    (tmp_path / "heartbeat").touch()
    code, out = healthcheck(monkeypatch, capsys, tmp_path / "heartbeat", max_age)
    assert code == 2
    assert f"FSM_CLEANER_HEARTBEAT_MAX_AGE_SECONDS={max_age!r}" in out and "accepted: a number >= 1" in out


def test_healthcheck_judges_the_heartbeats_age(monkeypatch, capsys, tmp_path) -> None:
    beat = tmp_path / "heartbeat"
    beat.touch()
    assert healthcheck(monkeypatch, capsys, beat, "60")[0] == 0
    old = time.time() - 120
    os.utime(beat, (old, old))
    code, out = healthcheck(monkeypatch, capsys, beat, "60")
    assert code == 1 and "unhealthy: heartbeat 120 s old (limit 60 s)" in out
    code, out = healthcheck(monkeypatch, capsys, tmp_path / "none", "60")
    assert code == 1 and "no heartbeat" in out


def test_a_directory_is_not_a_heartbeat(monkeypatch, capsys, tmp_path) -> None:
    # e.g. HEARTBEAT_FILE set to the emptyDir's mount point: its mtime says nothing about the loop
    code, out = healthcheck(monkeypatch, capsys, tmp_path)
    assert code == 1
    assert f"unhealthy: {tmp_path} is a directory, not the heartbeat file" in out


ESC = "\x1b]0;pwned\x07\x1b[2J\u202e"  # retitle the terminal, clear it, reverse the text


@pytest.mark.parametrize("fields,shown", [
    ({"since": 1764385200}, "since 1764385200,"),
    ({"since": None}, "since null,"),
    ({"since": "2026-11-29T03:00:00"}, "since 2026-11-29T03:00:00 (no time zone: age unknown),"),
    ({"since": "yesterday"}, "since yesterday,"),
    ({"since": "0001-01-01T00:00:00+14:00"}, "since 0001-01-01T00:00:00+14:00"),
    ({"since": ["2026"], "holder": {"pod": 1}}, 'written by {"pod": 1}'),
    ({"state": "PruningAll" + ESC, "holder": "pod" + ESC},
     "PruningAll\\x1b]0;pwned\\x07\\x1b[2J\\u202e since"),
], ids=["numeric since", "null since", "no zone", "not a time", "year 1", "odd types", "escapes"])
def test_status_shows_any_journal_without_a_traceback_or_raw_control_characters(
        cluster: FakeKube, tmp_path, fields: dict, shown: str) -> None:
    entry = {"state": "PruningAll", "cordoned_by_us": True, "was_unschedulable": False,
             "since": "2026-11-29T03:00:00Z", "holder": "pod-a"} | fields
    cluster.mutate(NODE, lambda n: n["metadata"]["annotations"].update({ANNOTATION: json.dumps(entry)}))
    out = status(tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    assert shown in out.stdout
    assert not any(c in out.stdout for c in "\x1b\x07\u202e")


def test_status_escapes_an_unreadable_journal(cluster: FakeKube, tmp_path) -> None:
    cluster.mutate(NODE, lambda n: n["metadata"]["annotations"].update({ANNOTATION: "{half" + ESC}))
    out = status(tmp_path)
    assert out.returncode == 0, out.stderr
    assert "UNREADABLE" in out.stdout and "\\x1b" in out.stdout
    assert not any(c in out.stdout for c in "\x1b\x07\u202e")


def test_status_of_a_node_that_does_not_exist_says_so(cluster: FakeKube, tmp_path) -> None:
    out = status(tmp_path, "--node-name", "no-such-node")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr and "node 'no-such-node' not found" in out.stderr
