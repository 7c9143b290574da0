"""The liveness heartbeat: a write that fails is said in the log, once, and so is its recovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from fsm_cleaner.heartbeat import Heartbeat


def test_an_unwritable_heartbeat_is_logged_once_then_its_recovery(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "run"
    blocker.write_text("a file where the heartbeat's directory should be")  # fails even for root
    heartbeat = Heartbeat(str(blocker / "heartbeat"))
    with caplog.at_level("INFO", logger="fsm_cleaner"):
        for _ in range(3):
            heartbeat.beat()
        assert [r.levelname for r in caplog.records] == ["ERROR"]
        assert f"cannot write the heartbeat {blocker / 'heartbeat'}" in caplog.text
        assert "liveness probe will restart" in caplog.text
        blocker.unlink()
        heartbeat.beat()
        heartbeat.beat()
    assert [r.levelname for r in caplog.records] == ["ERROR", "INFO"]
    assert "heartbeat written again" in caplog.records[-1].getMessage()
    assert (blocker / "heartbeat").is_file()
