"""Threshold rules and removal order, and which failures are worth another attempt."""

import dataclasses
import math

import docker.errors
import pytest
import requests
from kubernetes.client.exceptions import ApiException

from fsm_cleaner import config, plan
from fsm_cleaner.plan import ImageRecord
from fsm_cleaner.retry import is_transient
from fsm_cleaner.runtime import Image


def cfg(tmp_path, low: float | None) -> config.Config:
    base = config.load({"FSM_CLEANER_PATH_TO_CHECK": str(tmp_path)})
    return dataclasses.replace(base, threshold_high=80, threshold_low=low)


def test_without_low_threshold_the_old_rule_applies(tmp_path) -> None:
    c = cfg(tmp_path, None)
    assert plan.above_high(80, c) and not plan.above_high(79.9, c)
    assert plan.clean_enough(79.9, c) and not plan.clean_enough(80, c)


def test_low_threshold_is_the_target(tmp_path) -> None:
    c = cfg(tmp_path, 60)
    assert not plan.clean_enough(70, c)
    assert plan.clean_enough(60, c)


def test_removal_order_is_oldest_first_and_skips_images_in_use() -> None:
    images = [Image("c", 30, 1), Image("a", 10, 1), Image("b", 20, 1), Image("z", 10, 1)]
    assert [i.id for i in plan.removal_order(images, {"b"}, {})] == ["a", "z", "c"]


def test_children_go_before_their_parents_and_ancestors_of_images_in_use_stay() -> None:
    # base <- mid <- app (legacy builder chains, through an untagged intermediate "i1"), and
    # base <- live, which a running container uses
    images = [Image("base", 1, 5), Image("mid", 2, 5), Image("app", 3, 5), Image("solo", 4, 5)]
    parents = {"i1": "base", "mid": "i1", "app": "mid"}
    assert [i.id for i in plan.removal_order(images, set(), parents)] == ["app", "solo", "mid", "base"]
    parents["live"] = "base"
    assert [i.id for i in plan.removal_order(images, {"live"}, parents)] == ["app", "solo", "mid"]


def test_transient_failures() -> None:
    assert is_transient(ApiException(status=500))
    assert is_transient(ApiException(status=409))
    assert not is_transient(ApiException(status=403))
    assert not is_transient(ApiException(status=404))
    assert is_transient(requests.exceptions.ConnectionError())
    busy = docker.errors.APIError("x", explanation="a prune operation is already running")
    busy.response = type("R", (), {"status_code": 409})()
    assert is_transient(busy)
    in_use = docker.errors.APIError("x", explanation="image is being used by running container")
    in_use.response = type("R", (), {"status_code": 409})()
    assert not is_transient(in_use)


# --- the removal planner --------------------------------------------------------------------------
HOUR = 3600.0
NOW = 1_000 * HOUR
GiB = 2**30


def rec(image_id: str, *refs: str, **fields) -> ImageRecord:
    fields.setdefault("created", NOW - 100 * HOUR)
    fields.setdefault("unique", GiB)
    return ImageRecord(image_id, refs, **fields)


def removed(images: list[ImageRecord], to_free: float = math.inf, keep: tuple[str, ...] = (),
            min_age: float = 0) -> list[str]:
    return [r.image.id for r in plan.plan_removals(images, to_free, keep, min_age, NOW).removals]


def skipped(images: list[ImageRecord], keep: tuple[str, ...] = (), min_age: float = 0) -> dict[str, str]:
    return {s.image.id: s.why for s in plan.plan_removals(images, math.inf, keep, min_age, NOW).skipped}


@pytest.mark.parametrize("ref, full", [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest"),
    ("docker.io/library/busybox:latest", "docker.io/library/busybox:latest"),
    ("index.docker.io/library/busybox", "docker.io/library/busybox:latest"),
    ("jupyterhub/k8s-hub:3.0", "docker.io/jupyterhub/k8s-hub:3.0"),
    ("quay.io/jupyterhub/k8s-hub", "quay.io/jupyterhub/k8s-hub:latest"),
    ("localhost:5000/app", "localhost:5000/app:latest"),
    ("localhost/app:1", "localhost/app:1"),
    ("busybox@sha256:abc", "docker.io/library/busybox@sha256:abc"),
])
def test_references_are_compared_in_their_fully_qualified_form(ref: str, full: str) -> None:
    assert plan.normalize_reference(ref) == full


@pytest.mark.parametrize("pattern, ref, kept", [
    ("busybox", "busybox:latest", True),
    ("busybox", "docker.io/library/busybox:1.36", True),  # no tag in the pattern: every tag
    ("busybox", "busyboxplus:1", False),
    ("busybox:1.36", "busybox:latest", False),
    ("docker.io/library/busybox:latest", "busybox", True),
    ("quay.io/jupyterhub/*", "quay.io/jupyterhub/k8s-hub:3.0", True),
    ("quay.io/jupyterhub/*", "docker.io/jupyterhub/k8s-hub:3.0", False),
    ("jupyterhub/*", "jupyterhub/k8s-hub:3.0", True),  # Docker Hub, as docker pull would read it
    ("jupyterhub/*", "quay.io/jupyterhub/k8s-hub:3.0", False),
    ("*/jupyterhub/*", "quay.io/jupyterhub/k8s-hub:3.0", True),
    ("python:3.1?", "python:3.11", True),
    ("localhost:5000/app", "localhost:5000/app:7", True),
])
def test_keep_patterns(pattern: str, ref: str, kept: bool) -> None:
    images = [rec("a", ref)]
    assert removed(images, keep=(pattern,)) == ([] if kept else ["a"])
    assert skipped(images, keep=(pattern,)) == ({"a": "kept"} if kept else {})


def test_images_a_container_uses_and_their_ancestors_stay() -> None:
    # base <- mid <- app, which a created or running container uses; a chain through the untagged
    # intermediate i1 (legacy builder) is followed through ``ancestry``
    images = [rec("base", "base:1"), rec("mid", "mid:1", parent="base"),
              rec("app", "app:1", parent="mid", in_use=True), rec("other", "other:1", parent="i1")]
    result = plan.plan_removals(images, math.inf, (), 0, NOW, ancestry={"i1": "base"})
    assert [r.image.id for r in result.removals] == ["other"]
    assert {s.image.id: s.why for s in result.skipped} == {
        "app": "in use", "mid": "parent of an image that stays", "base": "parent of an image that stays"}


def test_parents_of_kept_and_young_images_stay_too() -> None:
    images = [rec("base", "base:1"), rec("kept", "keep/me:1", parent="base"),
              rec("mid", "mid:1"), rec("young", "young:1", parent="mid", created=NOW - 60)]
    assert skipped(images, keep=("keep/*",), min_age=HOUR) == {
        "kept": "kept", "young": "too young", "base": "parent of an image that stays",
        "mid": "parent of an image that stays"}


@pytest.mark.parametrize("fields, young", [
    ({"created": NOW - 59 * 60}, True),  # built a moment ago: may still be being pushed
    ({"created": NOW - 61 * 60}, False),
    ({"created": NOW - 900 * HOUR, "arrived": NOW - 10 * 60}, True),  # old image pulled a moment ago
    ({"created": NOW - 900 * HOUR, "arrived": NOW - 2 * HOUR}, False),
    ({"created": NOW - 900 * HOUR, "last_used": NOW - 60}, False),  # recent use is the ranking's business
])
def test_min_age_counts_from_creation_or_arrival(fields: dict, young: bool) -> None:
    images = [rec("a", "a:1", **fields)]
    assert skipped(images, min_age=HOUR) == ({"a": "too young"} if young else {})
    assert removed(images, min_age=HOUR) == ([] if young else ["a"])


def test_dangling_then_superseded_then_least_likely_needed() -> None:
    images = [
        rec("popular", "hub/popular:v1", uses=40, last_used=NOW - 5 * HOUR),
        rec("once", "hub/once:v1", uses=1, last_used=NOW - 1 * HOUR),
        rec("old", "hub/app:v1", created=NOW - 50 * HOUR, uses=90, last_used=NOW - HOUR),
        rec("new", "hub/app:v2", created=NOW - 10 * HOUR, uses=1, last_used=NOW - 9 * HOUR),
        rec("dangling", uses=0),
    ]
    order = plan.plan_removals(images, math.inf, (), 0, NOW).removals
    assert [(r.image.id, r.why) for r in order] == [
        ("dangling", "dangling"), ("old", "superseded"), ("new", "least needed"), ("once", "least needed"),
        ("popular", "least needed")]


def test_frequency_and_recency_both_count() -> None:
    # equal uses: the one idle longer goes first; equal idleness: the one used less goes first
    a = rec("a", "a:1", uses=5, last_used=NOW - 20 * HOUR)
    b = rec("b", "b:1", uses=5, last_used=NOW - 2 * HOUR)
    c = rec("c", "c:1", uses=1, last_used=NOW - 2 * HOUR)
    assert removed([b, a]) == ["a", "b"]
    assert removed([b, c]) == ["c", "b"]
    # a once-popular image idle for weeks goes before a recent one-off
    stale = rec("stale", "stale:1", uses=10, created=NOW - 900 * HOUR, last_used=NOW - 500 * HOUR)
    assert removed([c, stale]) == ["stale", "c"]


def test_superseded_means_every_repository_has_a_newer_image() -> None:
    images = [
        rec("v1", "busybox:1.35", "other:x", created=NOW - 30 * HOUR, uses=50, last_used=NOW),
        rec("v2", "docker.io/library/busybox:1.36", created=NOW - 20 * HOUR, uses=50, last_used=NOW),
        rec("w1", "tool:1", created=NOW - 30 * HOUR, uses=50, last_used=NOW),
        rec("w2", "tool:2", created=NOW - 20 * HOUR, uses=50, last_used=NOW),
    ]
    whys = {r.image.id: r.why for r in plan.plan_removals(images, math.inf, (), 0, NOW).removals}
    assert whys == {"w1": "superseded", "v1": "least needed", "v2": "least needed", "w2": "least needed"}


def test_children_go_before_their_parents_whatever_their_rank() -> None:
    images = [rec("base", "base:1", uses=1, last_used=NOW - 90 * HOUR),
              rec("mid", "mid:1", parent="i1", uses=50, last_used=NOW),
              rec("app", "app:1", parent="mid", uses=60, last_used=NOW),
              rec("solo", "solo:1", uses=30, last_used=NOW)]
    result = plan.plan_removals(images, math.inf, (), 0, NOW, ancestry={"i1": "base"})
    assert [r.image.id for r in result.removals] == ["solo", "app", "mid", "base"]


def test_the_plan_stops_where_unique_bytes_reach_the_target() -> None:
    images = [rec(f"i{n}", f"r{n}:1", uses=n + 1, last_used=NOW - HOUR, unique=n * GiB) for n in range(1, 5)]
    assert removed(images, to_free=0) == []
    assert removed(images, to_free=1) == ["i1"]
    assert removed(images, to_free=3 * GiB) == ["i1", "i2"]
    assert removed(images, to_free=3 * GiB + 1) == ["i1", "i2", "i3"]
    assert removed(images, to_free=100 * GiB) == ["i1", "i2", "i3", "i4"]  # short of the target
    result = plan.plan_removals(images, 4 * GiB, (), 0, NOW)
    assert result.unique_bytes == 6 * GiB and result.skipped == ()


def test_a_parent_cycle_in_the_ancestry_does_not_hang() -> None:
    images = [rec("a", "a:1", parent="b"), rec("b", "b:1", parent="a")]
    assert removed(images) == []  # each waits for the other: neither can be removed safely
