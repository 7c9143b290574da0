"""`fsm-cleaner run` start-up: what the CLI checks before the agent touches Docker or the node."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.fakes import FakeNodeApi, FakeRuntime
from fsm_cleaner import cli, docker_runtime


def test_a_node_that_does_not_exist_at_start_is_a_configuration_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A typo in NODE_NAME must not turn cordoning off (the agent used to prune uncordoned, exit 0)."""
    api = FakeNodeApi("node-1")
    api.exists = False
    runtime = FakeRuntime()
    monkeypatch.setattr(cli, "_kube", lambda name, namespace="default", cfg=None: api)
    monkeypatch.setattr(docker_runtime.Docker, "from_env", classmethod(lambda cls, t: runtime))
    monkeypatch.setenv("FSM_CLEANER_PATH_TO_CHECK", str(tmp_path))
    monkeypatch.setenv("FSM_CLEANER_NODE_NAME", "node-1")
    monkeypatch.setenv("FSM_CLEANER_HEARTBEAT_FILE", str(tmp_path / "heartbeat"))
    monkeypatch.setenv("FSM_CLEANER_STATE_DIR", str(tmp_path / "state"))  # never the host's /var/lib
    assert cli.main(["run", "--once"]) == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert "configuration error: NODE_NAME='node-1': no such node in the cluster; accepted:" in err
    assert runtime.faults.calls == [] and api.patches == []  # no Docker call, no write
