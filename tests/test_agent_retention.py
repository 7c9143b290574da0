"""The retention wiring in process, on the fakes of tests/test_agent.py: the plan follows the use history,
the history is seeded and written before stopped containers go, MIN_AGE and KEEP hold, a dry run lists
what a real run removes, and STATE_DIR never stops the agent. Fast: no root, no dockerd.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fsm_cleaner import config, history
from fsm_cleaner.agent import Agent
from fsm_cleaner.cli import build_agent
from fsm_cleaner.config import ConfigError
from fsm_cleaner.history import History, Usage
from fsm_cleaner.tracking import UseTracking, writable
from tests.test_agent import Bed

MiB = 2**20
A, B, C = (f"sha256:{c * 64}" for c in "abc")


@dataclass
class RetentionBed(Bed):
    """Bed with a use history: three old unused 10 MiB images a, b, c (a the oldest), 85 MiB used."""

    uses: UseTracking = field(default_factory=lambda: UseTracking(History()))

    def __post_init__(self) -> None:
        super().__post_init__()
        for image_id, tag in ((A, "app/a:1"), (B, "app/b:1"), (C, "app/c:1")):
            self.runtime.add_image(image_id, 10 * MiB, tag)
        self.disk.base = 55 * MiB

    @property
    def agent(self) -> Agent:
        if self._agent is None:
            env = {"FSM_CLEANER_PATH_TO_CHECK": str(self.tmp), "FSM_CLEANER_THRESHOLD_HIGH": "80",
                   "FSM_CLEANER_THRESHOLD_LOW": "78", "FSM_CLEANER_HEARTBEAT_FILE": str(self.tmp / "hb"),
                   "FSM_CLEANER_DELAY_SECONDS": "0", "FSM_CLEANER_MIN_AGE": "0"} | self.env
            self._agent = build_agent(config.load(env), self.runtime, None, clock=self.clock, disk=self.disk,
                                      uses=self.uses)
        return self._agent

    def run_logged(self, caplog: pytest.LogCaptureFixture) -> str:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="fsm_cleaner"):
            assert self.run() == 0
        return caplog.text


def removed(log: str) -> list[str]:
    return re.findall(r"(?:removed|would remove) image (\S+) \[", log)


def test_the_plan_follows_the_use_history(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    now = time.time()
    bed = RetentionBed(tmp_path, uses=UseTracking(History({A: Usage(now - 60, 30), B: Usage(now - 7200, 2)})))
    log = bed.run_logged(caplog)
    # c: never used; b: twice, two hours ago; a, the oldest, thirty times a minute ago: it stays
    assert removed(log) == ["app/c:1"]
    assert bed.runtime.removed == [C]
    assert "removal plan: 1 of 3 images, 10.0 MiB unique bytes; target: 7.0 MiB to reach 78.0%" in log
    assert "2 images stay: 2 not needed for the target" in log


def test_without_threshold_low_every_image_that_may_go_goes(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    bed = RetentionBed(tmp_path, env={"FSM_CLEANER_THRESHOLD_LOW": ""})
    bed.runtime.add_container(A, running=True)
    log = bed.run_logged(caplog)
    assert sorted(bed.runtime.removed) == [B, C]
    assert "THRESHOLD_LOW unset, as docker-image-cleaner did" in log and "1 images stay: 1 in use" in log


def test_stopped_containers_are_seeded_and_saved_before_they_go(tmp_path: Path) -> None:
    """With no watcher subscribed yet, the agent seeds itself; the record is on disk before the prune."""
    state = tmp_path / "state"
    finished = time.time() - 60
    uses = UseTracking(History(), seed_inputs=lambda now: ({A: 1.0, B: 1.0, C: 1.0}, [(A, finished)]),
                       state_dir=str(state))
    bed = RetentionBed(tmp_path, uses=uses)
    bed.runtime.add_container(A, running=False)
    on_disk: list[dict[str, Usage]] = []
    bed.runtime.faults.add("prune_containers", lambda: on_disk.append(history.load(state).snapshot()))
    bed.run()
    assert on_disk and on_disk[0][A] == Usage(finished, 1)
    assert len(bed.runtime.removed) == 1 and A in bed.runtime.store  # a, the oldest, used a minute ago


def test_the_watchers_seed_is_not_repeated(tmp_path: Path) -> None:
    seeds: list[float] = []

    class Subscribed:  # a watcher that has subscribed and seeded once
        subscriptions = 1

    uses = UseTracking(History(), watcher=Subscribed(),  # type: ignore[arg-type]
                       seed_inputs=lambda now: (seeds.append(now), ({}, []))[1])
    RetentionBed(tmp_path, uses=uses).run()
    assert seeds == []


def test_min_age_keeps_young_images_and_dangling_images(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    bed = RetentionBed(tmp_path, env={"FSM_CLEANER_MIN_AGE": "30m", "FSM_CLEANER_THRESHOLD_LOW": "0"})
    young = bed.runtime.add_image("sha256:" + "d" * 64, 10 * MiB, "app/d:1", created=int(time.time()) - 60)
    dangling = bed.runtime.add_image("sha256:" + "e" * 64, 10 * MiB, created=int(time.time()) - 60)
    log = bed.run_logged(caplog)
    assert young.id in bed.runtime.store and dangling.id in bed.runtime.store
    assert sorted(bed.runtime.removed) == [A, B, C]
    assert "removed 0 dangling images" in log and "2 images stay: 2 too young" in log
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "still above the target 0.0% and nothing else may go: 2 too young" in warning.getMessage()


def test_keep_patterns_are_honoured(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bed = RetentionBed(tmp_path, env={"FSM_CLEANER_KEEP": "app/a:*, docker.io/app/b",
                                      "FSM_CLEANER_THRESHOLD_LOW": ""})
    log = bed.run_logged(caplog)
    assert bed.runtime.removed == [C]
    assert "2 images stay: 2 kept" in log


@pytest.mark.parametrize("raw", ["App/a", "a,,b", "busy box", "x,[ab", "quay.io/ä"])
def test_a_keep_pattern_no_reference_can_match_is_refused(tmp_path: Path, raw: str) -> None:
    with pytest.raises(ConfigError, match=r"FSM_CLEANER_KEEP=.* no image reference can match; accepted"):
        config.load({"FSM_CLEANER_PATH_TO_CHECK": str(tmp_path), "FSM_CLEANER_KEEP": raw})


def test_state_dir_must_be_absolute(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="FSM_CLEANER_STATE_DIR='state' is not an absolute path"):
        config.load({"FSM_CLEANER_PATH_TO_CHECK": str(tmp_path), "FSM_CLEANER_STATE_DIR": "state"})


def test_a_dry_run_lists_what_a_real_run_removes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def scene(path: Path, **env: str) -> RetentionBed:
        path.mkdir()
        bed = RetentionBed(path, env=env | {"FSM_CLEANER_THRESHOLD_LOW": "70"})
        bed.runtime.add_image("sha256:" + "9" * 64, 5 * MiB, parent=A)  # dangling, on top of a
        bed.runtime.add_container(B, running=False)  # b is free once its stopped container goes
        return bed

    dry = scene(tmp_path / "dry", FSM_CLEANER_DRY_RUN="true")
    dry_log = dry.run_logged(caplog)
    real = scene(tmp_path / "real")
    real_log = real.run_logged(caplog)
    plan = re.findall(r"plan \d+\. (\S+): ", dry_log)
    assert plan == removed(dry_log) == removed(real_log) == ["app/a:1", "app/b:1"]
    assert dry.runtime.removed == [] and real.runtime.removed[1:] == [A, B]
    summary = re.compile(r"(would free|freed) ([\d.]+ MiB) .*(would remove|removed) (1 containers and "
                         r"3 images)")
    assert summary.search(dry_log).group(2, 4) == summary.search(real_log).group(2, 4)  # type: ignore[union-attr]


def test_an_unwritable_state_dir_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "file").write_text("")
    with caplog.at_level(logging.WARNING, logger="fsm_cleaner"):
        assert writable(str(tmp_path / "file" / "state")) is None
    assert "cannot write the use history in STATE_DIR=" in caplog.text and "in memory only" in caplog.text


def test_a_dry_run_reads_the_state_file_and_never_writes_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    stale = state / ".history.json.abc.tmp"  # left by a killed writer
    stale.write_text("{")
    history.path_in(state).write_text(json.dumps({"version": 1, "cursor_ns": 5, "images": {A: [10.0, 3]}}))
    before = history.path_in(state).read_bytes()
    env = {"FSM_CLEANER_PATH_TO_CHECK": str(tmp_path), "FSM_CLEANER_STATE_DIR": str(state)}

    dry = UseTracking.for_docker(config.load(env | {"FSM_CLEANER_DRY_RUN": "true"}), lambda: None)  # type: ignore
    assert dry.snapshot() == {A: Usage(10.0, 3)}
    dry.history.record(B, 20.0)
    dry.save()
    dry.stop()
    assert history.path_in(state).read_bytes() == before and stale.exists()

    live = UseTracking.for_docker(config.load(env), lambda: None)  # type: ignore
    assert not stale.exists()  # the live agent owns the directory: leftovers go
    live.history.record(B, 20.0)
    live.stop()
    assert history.load(state).snapshot() == {A: Usage(10.0, 3), B: Usage(20.0, 1)}
