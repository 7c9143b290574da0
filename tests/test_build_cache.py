"""The build cache state without dockerd: what a prune removes, the query per Engine API version, the
BUILD_CACHE_MAX setting, and the agent's PruningBuildCache against the fake runtime (fast)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from devtools.fakes import FakeRuntime
from fsm_cleaner import config
from fsm_cleaner.build_cache import CacheEntry, prunable
from fsm_cleaner.config import Budget, ConfigError
from fsm_cleaner.docker_runtime import _epoch, build_prune_params
from fsm_cleaner.runtime import DryRun
from tests.test_agent import Bed, MiB

NOW = 1_800_000_000.0
HOUR = 3600.0


def entry(id: str, size: int = 10, idle: float | None = 2 * HOUR, **kw) -> CacheEntry:
    return CacheEntry(id, size, None if idle is None else NOW - idle, **kw)


def ids(entries: list[CacheEntry]) -> list[str]:
    return [e.id for e in entries]


# --- which entries a prune removes ------------------------------------------------------------------

@pytest.mark.parametrize("entries,min_age,keep,expected", [
    # no budget: every entry old enough, oldest first; never used counts as oldest
    ([entry("a", idle=HOUR), entry("b", idle=3 * HOUR), entry("c", idle=None)], 1800, 0, ["c", "b", "a"]),
    # younger than MIN_AGE: stays, with or without a budget
    ([entry("young", idle=60), entry("old")], 1800, 0, ["old"]),
    ([entry("young", size=100, idle=60), entry("old", size=1)], 1800, 5, ["old"]),
    # a budget: least recently used first, until what is left fits
    ([entry("a", idle=HOUR), entry("b", idle=2 * HOUR), entry("c", idle=3 * HOUR)], 0, 20, ["c"]),
    ([entry("a", idle=HOUR), entry("b", idle=2 * HOUR), entry("c", idle=3 * HOUR)], 0, 9, ["c", "b", "a"]),
    # already within the budget: nothing
    ([entry("a"), entry("b")], 0, 20, []),
    # shared with an image (frees nothing), in use by a build, BuildKit's own records: never
    ([entry("s", shared=True), entry("u", in_use=True), entry("f", type="frontend"),
      entry("i", type="internal"), entry("ok", type="source.local")], 0, 0, ["ok"]),
    # shared bytes do not count against the budget
    ([entry("s", size=100, shared=True), entry("a", idle=HOUR), entry("b", idle=2 * HOUR)], 0, 10, ["b"]),
    # a parent is listed in use while its children exist: it goes after them, and stays if one stays
    ([entry("p", idle=5 * HOUR, in_use=True), entry("c1", idle=HOUR, parents=("p",)),
      entry("c2", idle=2 * HOUR, parents=("p",))], 0, 0, ["c2", "c1", "p"]),
    ([entry("p", idle=5 * HOUR, in_use=True), entry("c1", idle=60, parents=("p",))], 1800, 0, []),
])
def test_prunable(entries: list[CacheEntry], min_age: float, keep: int, expected: list[str]) -> None:
    assert ids(prunable(entries, NOW, min_age, keep)) == expected


# --- the query for the daemon's API version ------------------------------------------------------------

def query(params: dict[str, str]) -> dict:
    out = {k: v for k, v in params.items() if k != "filters"}
    if "filters" in params:
        out["filters"] = json.loads(params["filters"])
    return out


@pytest.mark.parametrize("version,min_age,keep,expected", [
    # dockerd 20.10 (1.41): keep-storage, and `until` only as a Go duration
    ("1.41", 1800, 5 * MiB, {"filters": {"until": ["1800s"]}, "keep-storage": str(5 * MiB)}),
    ("1.47", 90.5, 1, {"filters": {"until": ["90s"]}, "keep-storage": "1"}),
    # Docker 28 (1.48) renamed keep-storage and added max-used-space; later ones drop keep-storage
    ("1.48", 1800, 7, {"filters": {"until": ["1800s"]}, "max-used-space": "7", "reserved-space": "7"}),
    ("1.52", 60, 7, {"filters": {"until": ["60s"]}, "max-used-space": "7", "reserved-space": "7"}),
    # no age, no budget: nothing to ask for (every entry the daemon may prune)
    ("1.41", 0, 0, {}),
    ("1.48", 0, 0, {}),
])
def test_build_prune_params(version: str, min_age: float, keep: int, expected: dict) -> None:
    assert query(build_prune_params(version, min_age, keep)) == expected


def test_docker_times_with_nanoseconds() -> None:
    assert _epoch("2026-12-01T11:18:56.226976562Z") == pytest.approx(1796123936.226976562)
    assert _epoch("2026-12-01T11:18:56Z") == 1796123936
    assert _epoch(None) is None and _epoch("") is None


# --- BUILD_CACHE_MAX ---------------------------------------------------------------------------------

@pytest.mark.parametrize("raw,budget,of_100", [
    ("10%", Budget(10, percent=True), 10), ("0%", Budget(0, percent=True), 0),
    ("10Gi", Budget(10 * 2**30), 10 * 2**30), ("5e9", Budget(5e9), 5_000_000_000),
    (" 2 GB ", Budget(2e9), 2e9), ("0", Budget(0), 0),
])
def test_build_cache_max(raw: str, budget: Budget, of_100: int, tmp_path: Path) -> None:
    cfg = config.load({"FSM_CLEANER_PATH_TO_CHECK": str(tmp_path), "FSM_CLEANER_BUILD_CACHE_MAX": raw})
    assert cfg.build_cache_max == budget and cfg.build_cache_max.bytes(100) == int(of_100)


def test_build_cache_max_unset_keeps_nothing_beyond_min_age(tmp_path: Path) -> None:
    assert config.load({"FSM_CLEANER_PATH_TO_CHECK": str(tmp_path)}).build_cache_max.bytes(10**12) == 0


@pytest.mark.parametrize("raw", ["abc", "120%", "-1", "nan", "inf", "10%%", "-5%", "1 parsec"])
def test_build_cache_max_refused(raw: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"FSM_CLEANER_BUILD_CACHE_MAX=.*accepted:.*10%"):
        config.load({"FSM_CLEANER_PATH_TO_CHECK": str(tmp_path), "FSM_CLEANER_BUILD_CACHE_MAX": raw})


# --- the state, against the fake runtime ------------------------------------------------------------------

def test_the_budget_is_kept_and_images_go_next(tmp_path: Path) -> None:
    """BUILD_CACHE_MAX=6% of the 100 MiB disk: the most recently used 5 MiB entry stays."""
    bed = Bed(tmp_path, env={"FSM_CLEANER_BUILD_CACHE_MAX": "6%"})
    bed.fill(images=3)
    for n in range(4):
        bed.runtime.add_cache(f"e{n}", 5 * MiB, idle=(n + 1) * HOUR)
    assert bed.run() == 0
    assert set(bed.runtime.cache) == {"e0"}
    assert ("next", "PruningBuildCache", "PruningAll") in bed.taken  # 76 % is not clean enough
    assert bed.disk.used() <= 50 * MiB and bed.handed_back()


def test_a_runtime_without_build_cache_skips_the_state_with_one_line_per_process(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bed = Bed(tmp_path)
    bed.runtime.has_build_cache = False
    bed.fill()
    refill = lambda: bed.fill()  # noqa: E731  a second cycle, during the Idle wait
    bed.clock.at(30, refill)
    bed.clock.at(90, bed.stop)
    with caplog.at_level(logging.INFO, logger="fsm_cleaner"):
        assert bed.run(once=False) == 0
    skipped = [r for r in caplog.records if "PruningBuildCache skipped" in r.getMessage()]
    assert len(skipped) == 1 and skipped[0].levelno == logging.INFO
    assert "no build cache endpoint" in skipped[0].getMessage()
    assert bed.taken.count(("next", "PruningBuildCache", "PruningAll")) == 2  # two cycles, neither failed
    assert bed.runtime.faults.calls.count("prune_build_cache") == 1  # not asked again
    assert not bed.agent.cycle.failed and bed.handed_back()


def test_a_dry_run_reports_the_cache_it_would_free_and_prunes_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bed = Bed(tmp_path, env={"FSM_CLEANER_DRY_RUN": "true"})
    bed.fill(images=0)
    for n in range(4):
        bed.runtime.add_cache(f"old{n}", 10 * MiB, idle=2 * HOUR)
    bed.runtime.add_cache("fresh", 5 * MiB, idle=60)
    before = dict(bed.runtime.cache)
    with caplog.at_level(logging.INFO, logger="fsm_cleaner"):
        assert bed.run() == 0
    assert bed.runtime.cache == before
    assert "would remove 4 build cache entries (40.0 MiB)" in caplog.text
    # the projection counts what it would free: the target is met without touching images
    assert ("next", "PruningBuildCache", "Uncordoning") in bed.taken


def test_dry_run_stand_in_lists_through_the_real_runtime() -> None:
    real = FakeRuntime(now=lambda: NOW)
    real.add_cache("old", 7, idle=2 * HOUR)
    real.add_cache("young", 5, idle=60)
    real.add_cache("shared", 100, idle=2 * HOUR, shared=True)
    removed = DryRun(real, now=real.now).prune_build_cache(1800, 0)
    assert (removed.count, removed.bytes) == (1, 7) and len(real.cache) == 3
