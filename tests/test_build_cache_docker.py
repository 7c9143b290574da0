"""PruningBuildCache against the real test-bed dockerd (20.10, Engine API 1.41) with real BuildKit cache.

The cache comes from `DOCKER_BUILDKIT=1 /usr/bin/docker build --network host` (Debian's docker.io CLI
has BuildKit built in; the bed's daemon has no bridge). Each repository's image is an env layer and a
code layer that changes with COMMIT; rebuilding a tag leaves the previous version dangling, and once
PruningDangling has removed it, its code layer is held by the build cache alone.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.testbed import BASE_TAG, SYSTEM_PATH, DockerBed
from fsm_cleaner.docker_runtime import _epoch
from tests.conftest import agent_env, run_agent, settled_usage

MIN_AGE = 20  # seconds: the old entries are made older than this, the young ones are not
CODE_MB = 6


def buildkit_build(bed: DockerBed, work: Path, repo: str, commit: int) -> None:
    ctx = work / repo
    ctx.mkdir(parents=True, exist_ok=True)
    (ctx / "Dockerfile").write_text(
        f"FROM {BASE_TAG}\n"
        f"RUN echo {repo} > /repo && dd if=/dev/urandom of=/env bs=1M count=2 2>/dev/null\n"
        "ARG COMMIT\n"
        f"RUN dd if=/dev/urandom of=/code bs=1M count={CODE_MB} 2>/dev/null && echo $COMMIT > /commit\n")
    done = subprocess.run(
        ["/usr/bin/docker", "build", "--network", "host", "--build-arg", f"COMMIT={commit}",
         "-t", f"bc/{repo}:latest", str(ctx)],
        env={"PATH": SYSTEM_PATH, "DOCKER_HOST": bed.host, "DOCKER_BUILDKIT": "1", "HOME": str(work)},
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def cache(bed: DockerBed) -> dict[str, dict]:
    return {r["ID"]: r for r in bed.client().df().get("BuildCache") or []}


def unshared(entries: dict[str, dict]) -> int:
    return sum(r["Size"] for r in entries.values() if not r["Shared"])


@pytest.fixture
def scene(docker_bed: DockerBed, tmp_path: Path) -> Iterator[dict[str, set[str]]]:
    """Old cache (repository a, three versions, unused for MIN_AGE) and young cache (repository b, two
    versions, built just now); each current image is held by a running container. Returns the ids of
    the unshared entries, old and young, as they will be once the dangling images are gone."""
    client = docker_bed.client()
    client.api.prune_builds(all=True)
    for commit in range(3):
        buildkit_build(docker_bed, tmp_path, "a", commit)
    old = set(cache(docker_bed))
    newest = max(_epoch(r["LastUsedAt"]) or 0 for r in cache(docker_bed).values())
    while time.time() < newest + MIN_AGE + 1:  # the old entries' age passes MIN_AGE
        time.sleep(0.2)
    for commit in range(2):
        buildkit_build(docker_bed, tmp_path, "b", commit)
    young = set(cache(docker_bed)) - old
    for repo in ("a", "b"):
        docker_bed.run_container(f"bc/{repo}:latest", running=True)
    yield {"old": old, "young": young}
    docker_bed.reset()
    client.api.prune_builds(all=True)


def env(bed: DockerBed, tmp_path: Path, **settings: object) -> dict[str, str]:
    """A cycle starts (high threshold just below usage); it stops once usage is back under it."""
    high = round(settled_usage(bed)[0] - 0.5, 2)
    return agent_env(bed, tmp_path, node=False, DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH=high,
                     FSM_CLEANER_MIN_AGE=f"{MIN_AGE}s", **settings)


def removed_entries(log: str) -> tuple[str, int]:
    m = re.search(r"(removed|would remove) (\d+) build cache entries", log)
    assert m, log
    return m[1], int(m[2])


def test_the_cache_is_pruned_down_to_its_budget_and_young_entries_stay(
        docker_bed: DockerBed, scene: dict[str, set[str]], tmp_path: Path) -> None:
    budget = 2 * CODE_MB * 2**20  # room for the young unshared entry and one old one
    used_before = settled_usage(docker_bed)[0]
    run = run_agent(env(docker_bed, tmp_path, FSM_CLEANER_BUILD_CACHE_MAX=budget))
    assert run.code == 0, run.log
    assert "PruningBuildCache" in run.states()
    after = cache(docker_bed)
    assert scene["young"] <= set(after), "an entry younger than MIN_AGE was pruned"
    assert unshared(after) <= budget
    gone = scene["old"] - set(after)
    assert gone, "nothing old was pruned"
    what, count = removed_entries(run.log)
    assert (what, count) == ("removed", len(gone))
    # the budget kept the most recently used old entry that is not an image's
    assert any(not r["Shared"] for i, r in after.items() if i in scene["old"])
    assert settled_usage(docker_bed)[0] < used_before - 0.5  # and the disk really got the bytes back


def test_without_a_budget_every_entry_unused_for_min_age_goes(
        docker_bed: DockerBed, scene: dict[str, set[str]], tmp_path: Path) -> None:
    run = run_agent(env(docker_bed, tmp_path))
    assert run.code == 0, run.log
    after = cache(docker_bed)
    assert scene["young"] <= set(after)
    assert not [r for i, r in after.items() if i in scene["old"] and not r["Shared"] and not r["InUse"]
                and r["Type"] not in ("internal", "frontend")], after


def test_a_dry_run_prunes_nothing_and_tells_what_the_real_run_then_removes(
        docker_bed: DockerBed, scene: dict[str, set[str]], tmp_path: Path) -> None:
    settings = env(docker_bed, tmp_path)
    # A dry run removes no dangling image, so the daemon still lists their layers as shared (a dry run
    # cannot count them): with the dangling images gone first, both runs see the same cache.
    docker_bed.client().api.prune_images(filters={"dangling": True})
    before = cache(docker_bed)
    dry = run_agent(settings, "--dry-run")
    assert dry.code == 0, dry.log
    assert cache(docker_bed) == before
    real = run_agent(settings)
    assert real.code == 0, real.log
    assert removed_entries(dry.log)[1] == removed_entries(real.log)[1] > 0
