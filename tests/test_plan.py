"""Threshold rules and removal order, and which failures are worth another attempt."""

import dataclasses

import docker.errors
import requests
from kubernetes.client.exceptions import ApiException

from fsm_cleaner import config, plan
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
