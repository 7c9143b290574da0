"""What goes and what stays, on the real dockerd bed: use history, MIN_AGE, KEEP, superseded versions,
the state file across restarts, and a dry run's plan against the real run that follows it.

Images days old are made by loading a saved image whose config says it was created then (Docker ranks
by that time, and a build can only stamp "now"). A `load` is an event the watcher counts as a use, so
each test first writes a state file whose cursor is "now": the agent follows the node from there, as
one that had been running when these images arrived days ago.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path

import docker.errors
import pytest

from devtools.testbed import DockerBed
from fsm_cleaner import history
from tests.conftest import Run, agent_env, run_agent, settled_usage

HOUR = 3600
IMAGE_MB = 20  # on the bed's 600 MiB disk: about 3.3 % each


def exists(bed: DockerBed, image: str) -> bool:
    try:
        bed.client().images.get(image)
        return True
    except docker.errors.ImageNotFound:
        return False


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def old_image(bed: DockerBed, tag: str | None, hours_ago: float, size_mb: float = IMAGE_MB) -> str:
    """An image of `size_mb` of its own whose creation time is `hours_ago`; untagged if `tag` is None."""
    api = bed.client().api
    built = bed.build_image(None, size_mb)
    src = tarfile.open(fileobj=io.BytesIO(b"".join(api.get_image(built))))  # noqa: SIM115 (in memory)
    manifest = json.load(src.extractfile("manifest.json"))  # type: ignore[arg-type]
    config = json.load(src.extractfile(manifest[0]["Config"]))  # type: ignore[arg-type]
    config["created"] = datetime.fromtimestamp(time.time() - hours_ago * HOUR, timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")
    raw_config = json.dumps(config).encode()
    digest = hashlib.sha256(raw_config).hexdigest()
    old_config, manifest[0]["Config"], manifest[0]["RepoTags"] = manifest[0]["Config"], f"{digest}.json", (
        [tag] if tag else None)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as dst:
        for member in src.getmembers():
            if member.name not in (old_config, "manifest.json", "repositories"):
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        _add(dst, f"{digest}.json", raw_config)
        _add(dst, "manifest.json", json.dumps(manifest).encode())
    api.load_image(out.getvalue())
    api.remove_image(built)
    return f"sha256:{digest}"


def follow_from_now(tmp_path: Path) -> Path:
    """A state file with no images and the event cursor at now (see the module's docstring)."""
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    history.path_in(state).write_text(json.dumps({"version": 1, "cursor_ns": time.time_ns(), "images": {}}))
    return state


def env(bed: DockerBed, tmp_path: Path, free: float | None, margin: float = 0.5,
        **settings: object) -> dict[str, str]:
    """High threshold `margin` percent below the bed's usage; a low one `free` percent below it (None:
    unset, so everything that may go goes unless the dangling images bring usage under the high one)."""
    usage = max(settled_usage(bed))
    if free is not None:
        settings["FSM_CLEANER_THRESHOLD_LOW"] = round(usage - free, 2)
    return agent_env(bed, tmp_path, node=False, FSM_CLEANER_THRESHOLD_HIGH=round(usage - margin, 2),
                     **settings)


ONE_IMAGE = 1.5  # percent: less than one image's worth, so the plan is one image long


def removed(run: Run) -> list[str]:
    """The images a run removed (or would remove), in order, by name."""
    return re.findall(r"(?:removed|would remove) image (\S+) \[", run.log)


def test_an_image_used_a_minute_ago_stays_and_an_older_used_one_goes(docker_bed: DockerBed,
                                                                    tmp_path: Path) -> None:
    used = old_image(docker_bed, "fsmtest/used:1", 48)  # the older by creation: oldest-first takes it
    idle = old_image(docker_bed, "fsmtest/idle:1", 24)
    follow_from_now(tmp_path)
    docker_bed.run_container(used, running=False)
    run = run_agent(env(docker_bed, tmp_path, ONE_IMAGE))
    assert run.code == 0, run.log
    assert removed(run) == ["fsmtest/idle:1"], run.log
    assert exists(docker_bed, used) and not exists(docker_bed, idle)
    assert re.search(r"removed image fsmtest/idle:1 \[least needed: 0 uses, last 24\.0 h ago\]", run.log)


@pytest.mark.parametrize("state_file", ["kept", "corrupt"])
def test_the_use_history_outlives_the_agent_and_dockerd(docker_bed: DockerBed, tmp_path: Path,
                                                         state_file: str) -> None:
    never = old_image(docker_bed, "fsmtest/never:1", 72)
    used = old_image(docker_bed, "fsmtest/used:1", 48)
    idle = old_image(docker_bed, "fsmtest/idle:1", 24)
    state = follow_from_now(tmp_path)
    t_used = time.time()
    docker_bed.run_container(used, running=False)
    first = run_agent(env(docker_bed, tmp_path, ONE_IMAGE))
    assert first.code == 0, first.log
    assert removed(first) == ["fsmtest/never:1"], first.log
    assert history.load(state).snapshot()[used].last_used >= t_used  # kept before its container went
    # Docker forgets its events when it restarts, and the container is gone: only the file remembers.
    docker_bed.stop_daemon()
    docker_bed.start_daemon()
    if state_file == "corrupt":
        history.path_in(state).write_bytes(b'{"version":1,"cursor_ns":17961214,"images":{"sha256:')

    second = run_agent(env(docker_bed, tmp_path, ONE_IMAGE))

    assert second.code == 0, second.log
    assert not exists(docker_bed, never)
    if state_file == "kept":
        assert "use history: " in second.log and "images on record" in second.log
        assert removed(second) == ["fsmtest/idle:1"], second.log
    else:  # rebuilt from what Docker still knows: creation times alone, so the older goes
        assert "is unreadable" in second.log and "rebuilding it" in second.log
        assert removed(second) == ["fsmtest/used:1"], second.log
        assert idle in history.load(state).snapshot()  # written anew, whole
    assert exists(docker_bed, idle) != (state_file == "kept")


def test_images_younger_than_min_age_stay(docker_bed: DockerBed, tmp_path: Path) -> None:
    old = old_image(docker_bed, "fsmtest/old:1", 24, 10)
    old_dangling = old_image(docker_bed, None, 24, 10)
    young = docker_bed.build_image("fsmtest/young:1", 10)
    [young_dangling] = docker_bed.make_dangling(1, 10)  # as a build in progress leaves its last step
    follow_from_now(tmp_path)
    run = run_agent(env(docker_bed, tmp_path, None, margin=3, FSM_CLEANER_MIN_AGE="1h"))
    assert run.code == 0, run.log
    assert not exists(docker_bed, old) and not exists(docker_bed, old_dangling)
    assert exists(docker_bed, young) and exists(docker_bed, young_dangling)
    assert "removed 1 dangling images" in run.log
    assert re.search(r"\d+ images stay: (\d+ [a-z ]+, )*[3-9] too young", run.log), run.log  # and the base


def test_a_target_out_of_reach_is_said_once(docker_bed: DockerBed, tmp_path: Path) -> None:
    old = old_image(docker_bed, "fsmtest/old:1", 24, 10)
    young = docker_bed.build_image("fsmtest/young:1", 10)
    follow_from_now(tmp_path)
    run = run_agent(env(docker_bed, tmp_path, None, FSM_CLEANER_THRESHOLD_LOW="0", FSM_CLEANER_MIN_AGE="1h"))
    assert run.code == 0, run.log
    assert not exists(docker_bed, old) and exists(docker_bed, young)
    warnings = [line for line in run.log.splitlines() if "still above the target" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0] and "too young" in warnings[0], run.log


def test_a_keep_match_stays(docker_bed: DockerBed, tmp_path: Path) -> None:
    hub = old_image(docker_bed, "quay.io/jupyterhub/k8s-hub:3.0", 48)
    other = old_image(docker_bed, "fsmtest/other:1", 24)
    follow_from_now(tmp_path)
    run = run_agent(env(docker_bed, tmp_path, None, FSM_CLEANER_KEEP="quay.io/jupyterhub/*"))
    assert run.code == 0, run.log
    assert exists(docker_bed, hub) and not exists(docker_bed, other)
    assert re.search(r"\d+ images stay: .*\b1 kept\b", run.log), run.log


def test_a_superseded_version_goes_before_the_current_one(docker_bed: DockerBed, tmp_path: Path) -> None:
    other = old_image(docker_bed, "fsmtest/other:1", 96)  # the oldest: oldest-first would take it
    v1 = old_image(docker_bed, "fsmtest/web:1", 72)
    v2 = old_image(docker_bed, "fsmtest/web:2", 48)
    follow_from_now(tmp_path)
    run = run_agent(env(docker_bed, tmp_path, ONE_IMAGE))
    assert run.code == 0, run.log
    assert removed(run) == ["fsmtest/web:1"], run.log
    assert "[superseded: a newer image of docker.io/fsmtest/web is here]" in run.log
    assert exists(docker_bed, other) and exists(docker_bed, v2) and not exists(docker_bed, v1)


def test_the_dry_run_plan_is_what_a_real_run_then_removes(docker_bed: DockerBed, tmp_path: Path) -> None:
    old_image(docker_bed, "fsmtest/other:1", 96)
    old_image(docker_bed, "fsmtest/web:1", 72)
    old_image(docker_bed, "fsmtest/web:2", 48)
    used = old_image(docker_bed, "fsmtest/used:1", 120)
    old_image(docker_bed, None, 30, 5)
    docker_bed.build_image("fsmtest/young:1", 5)
    follow_from_now(tmp_path)
    docker_bed.run_container(used, running=False)
    settings = env(docker_bed, tmp_path, 2 * 3.3 + 1.5, FSM_CLEANER_MIN_AGE="10m")  # three images' worth

    dry = run_agent(settings, "--dry-run")
    plan = re.findall(r"plan \d+\. (\S+): ", dry.log)
    real = run_agent(settings)

    assert dry.code == 0 and real.code == 0, (dry.log, real.log)
    assert plan == removed(dry) == removed(real) == ["fsmtest/web:1", "fsmtest/other:1", "fsmtest/web:2"], (
        dry.log, real.log)
    assert "removed 1 dangling images" in real.log and "would remove 1 dangling images" in dry.log
