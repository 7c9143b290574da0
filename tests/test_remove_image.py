"""Removing one image on the real test-bed dockerd: whole, or not at all (issue 9, item 9).

The agent plans its removals from one listing and removes them one at a time, DELAY_SECONDS apart, so
the node changes under the plan: a container starts on a planned image, a build makes a child of it.
Each case checks the image's tags afterwards, because a half-done removal keeps the image but loses
tags that a later `docker run TAG` needs.
"""

from __future__ import annotations

import io
import os
import tarfile
from typing import Any

import docker
import docker.errors
import pytest

from devtools.testbed import DockerBed
from fsm_cleaner.docker_runtime import Docker
from fsm_cleaner.runtime import Image


@pytest.fixture
def port(docker_bed: DockerBed) -> Docker:
    return Docker(lambda: docker_bed.client().api)


def _tagged(bed: DockerBed, *tags: str) -> Image:
    """A fresh image carrying ``tags``, as the agent's listing shows it when it plans."""
    image_id = bed.build_image(tags[0], 1)
    api = bed.client().api
    for tag in tags[1:]:
        repo, _, name = tag.rpartition(":")
        api.tag(image_id, repo, name)
    return next(i for i in Docker(lambda: api).images() if i.id == image_id)


def _tags_now(bed: DockerBed, image_id: str) -> set[str] | None:
    """The image's tags now, or None when it is gone."""
    try:
        return set(bed.client().api.inspect_image(image_id)["RepoTags"])
    except docker.errors.ImageNotFound:
        return None


def _child_of(bed: DockerBed, parent_tag: str, tag: str) -> str:
    """A one-step build FROM ``parent_tag`` (the legacy builder records the parent)."""
    ctx = io.BytesIO()
    with tarfile.open(fileobj=ctx, mode="w") as tar:
        for name, data in (("Dockerfile", f"FROM {parent_tag}\nCOPY x /x\n".encode()), ("x", os.urandom(64))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    ctx.seek(0)
    out = list(bed.client().api.build(fileobj=ctx, custom_context=True, tag=tag, rm=True, forcerm=True,
                                      network_mode="none", pull=False, decode=True))
    return next(o["aux"]["ID"] for o in out if "aux" in o)


def _create(bed: DockerBed, ref: str, state: str) -> str:
    """A container on ``ref``: running, stopped (exited), or created and never started."""
    if state == "created":
        return bed.client().api.create_container(ref, command=["true"], network_disabled=True)["Id"]
    return bed.run_container(ref, running=state == "running")


def test_an_image_with_several_tags_is_removed_whole(docker_bed: DockerBed, port: Docker) -> None:
    image = _tagged(docker_bed, "fsmtest/app:v1", "fsmtest/app:v2", "fsmtest/other:latest")
    assert port.remove_image(image) is None
    assert _tags_now(docker_bed, image.id) is None
    left = {t for r in docker_bed.client().api.images() for t in r.get("RepoTags") or ()}
    assert left.isdisjoint(image.tags)


@pytest.mark.parametrize("tags", [("fsmtest/parent:1",), ("fsmtest/parent:1", "fsmtest/parent:stable")])
def test_a_parent_keeps_all_its_tags(docker_bed: DockerBed, port: Docker, tags: tuple[str, ...]) -> None:
    parent = _tagged(docker_bed, *tags)
    _child_of(docker_bed, tags[0], "fsmtest/child:1")
    why = port.remove_image(parent)
    assert why is not None and ("child" in why or "parent" in why), why
    assert _tags_now(docker_bed, parent.id) == set(tags)


@pytest.mark.parametrize("state", ["running", "stopped", "created"])
@pytest.mark.parametrize("tags", [("fsmtest/app:v1",), ("fsmtest/app:v1", "fsmtest/app:v2")])
def test_a_container_created_after_planning_keeps_the_image_and_all_its_tags(
        docker_bed: DockerBed, port: Docker, tags: tuple[str, ...], state: str) -> None:
    planned = _tagged(docker_bed, *tags)  # planned for removal: no container used it then
    _create(docker_bed, tags[-1], state)  # meanwhile a container starts on its last tag
    why = port.remove_image(planned)
    assert why is not None and "container" in why, why
    assert _tags_now(docker_bed, planned.id) == set(tags)


class _RaceBeforeRemoval:
    """The Docker API, with ``race`` run right before the removal call: after the agent's fresh look."""

    def __init__(self, api: docker.APIClient, race: Any):
        self._api, self._race = api, race

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)

    def remove_image(self, *args: Any, **kwargs: Any) -> Any:
        self._race()
        return self._api.remove_image(*args, **kwargs)


def test_a_container_started_between_the_fresh_look_and_the_removal_keeps_every_tag(
        docker_bed: DockerBed) -> None:
    image = _tagged(docker_bed, "fsmtest/app:v1", "fsmtest/app:v2")
    api = docker_bed.client().api
    port = Docker(lambda: _RaceBeforeRemoval(api, lambda: _create(docker_bed, "fsmtest/app:v2", "running")))
    why = port.remove_image(image)
    assert why is not None and "running container" in why, why  # dockerd refuses even when forced
    assert _tags_now(docker_bed, image.id) == set(image.tags)


def test_the_remaining_window_costs_the_tags_but_not_the_container(docker_bed: DockerBed) -> None:
    """The documented limit: a container created, not started, in the milliseconds between the look and
    the forced removal. The image and its tags go; the container keeps its layers and still runs."""
    image = _tagged(docker_bed, "fsmtest/app:v1", "fsmtest/app:v2")
    api = docker_bed.client().api
    created: list[str] = []

    def create() -> None:
        created.append(api.create_container("fsmtest/app:v2", command=["cat", "/data/.nonce"],
                                            network_disabled=True)["Id"])

    port = Docker(lambda: _RaceBeforeRemoval(api, create))
    assert port.remove_image(image) is None
    assert _tags_now(docker_bed, image.id) is None
    api.start(created[0])
    assert api.wait(created[0], timeout=60)["StatusCode"] == 0


def test_an_image_used_by_a_stopped_container_is_kept_never_forced(docker_bed: DockerBed,
                                                                   port: Docker) -> None:
    image = _tagged(docker_bed, "fsmtest/app:v1")
    docker_bed.run_container("fsmtest/app:v1", running=False)
    why = port.remove_image(image)
    assert why is not None and "stopped container" in why, why
    assert _tags_now(docker_bed, image.id) == {"fsmtest/app:v1"}
