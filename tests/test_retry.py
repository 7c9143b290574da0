"""Retry policies: every retry waits, a stop never turns the retries into a hot loop, Retry-After is kept.

No real sleeping: the policy's sleeps are fakes that move a fake clock, and each test counts the
attempts and the waits.
"""

from __future__ import annotations

import dataclasses

import pytest
from kubernetes.client.exceptions import ApiException

from fsm_cleaner import config
from fsm_cleaner.config import RETRY_MIN_WAIT_SECONDS
from fsm_cleaner.retry import policy

HOT_LOOP = 10_000  # attempts after which a test calls it a hot loop and ends it


class Clock:
    """A fake monotonic clock; ``hold`` is the wait a stop does not cut short, ``sleep`` the one it does."""

    def __init__(self, stopping: bool = False) -> None:
        self.now = 1000.0
        self.stopping = stopping  # a stop was requested: the interruptible sleep returns at once
        self.held: list[float] = []
        self.slept: list[float] = []

    def time(self) -> float:
        return self.now

    def hold(self, seconds: float) -> None:
        self.held.append(seconds)
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if not self.stopping:
            self.now += seconds


class Api:
    """A Kubernetes API that answers every request with the same error, and logs when it was asked."""

    def __init__(self, clock: Clock, status: int = 503, retry_after: str | None = None) -> None:
        self.clock, self.status, self.retry_after = clock, status, retry_after
        self.asked: list[float] = []

    def __call__(self) -> None:
        self.asked.append(self.clock.now)
        if len(self.asked) >= HOT_LOOP:
            raise RuntimeError("hot loop")
        error = ApiException(status=self.status, reason="Service Unavailable")
        if self.retry_after is not None:
            error.headers = {"Retry-After": self.retry_after}
        raise error


@pytest.fixture
def cfg(tmp_path) -> config.Config:
    return config.load({"FSM_CLEANER_PATH_TO_CHECK": str(tmp_path)})


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def run(cfg: config.Config, clock: Clock, api: Api, *, patient: bool = False, deadline: float | None = None):
    retrying = policy(cfg, "Uncordoning", patient=patient, deadline=lambda: deadline, sleep=clock.sleep,
                      hold=clock.hold, clock=clock.time)
    with pytest.raises(ApiException):  # the last error, re-raised (not the test's "hot loop")
        retrying(api)


def test_after_a_stop_the_uncordon_waits_between_attempts_until_the_deadline(cfg) -> None:
    # SIGTERM, then the API server answers 503: the backoff sleeps return at once (a stop cuts them
    # short), yet every retry still waits the floor, and the attempts end at the stop deadline.
    clock = Clock(stopping=True)
    api = Api(clock)
    window = 20.0
    run(cfg, clock, api, patient=True, deadline=clock.now + window)
    assert len(api.asked) == window / RETRY_MIN_WAIT_SECONDS  # 40, not 25,828
    assert min(gaps(api.asked)) >= RETRY_MIN_WAIT_SECONDS
    # the last attempt is the last one that could still wait the floor before the deadline
    assert api.asked[-1] < api.asked[0] + window <= api.asked[-1] + RETRY_MIN_WAIT_SECONDS
    assert clock.slept == []  # stopping: nothing left to cut short


def test_no_max_wait_still_waits_the_floor(cfg) -> None:
    clock = Clock()
    api = Api(clock)
    run(dataclasses.replace(cfg, retry_max_wait_seconds=0), clock, api)
    assert len(api.asked) == cfg.retry_attempts
    assert min(gaps(api.asked)) >= RETRY_MIN_WAIT_SECONDS


def test_backoff_grows_and_a_stop_can_cut_all_but_the_floor(cfg) -> None:
    clock = Clock()
    api = Api(clock)
    run(cfg, clock, api)
    waits = gaps(api.asked)
    assert waits[-1] > waits[0] >= RETRY_MIN_WAIT_SECONDS
    assert clock.held == [RETRY_MIN_WAIT_SECONDS] * len(waits)  # only the floor is not interruptible


def test_a_429_retry_after_is_honoured(cfg) -> None:
    clock = Clock()
    api = Api(clock, status=429, retry_after="7")
    run(cfg, clock, api)
    assert len(api.asked) == cfg.retry_attempts
    assert min(gaps(api.asked)) >= 7
    # not stopping yet: beyond the floor the wait stays interruptible, so a SIGTERM keeps its bound
    assert clock.held == [RETRY_MIN_WAIT_SECONDS] * (cfg.retry_attempts - 1)


def test_retry_after_is_honoured_while_stopping_and_never_past_the_deadline(cfg) -> None:
    clock = Clock(stopping=True)
    api = Api(clock, status=429, retry_after="3")
    run(cfg, clock, api, patient=True, deadline=clock.now + 10)
    assert gaps(api.asked) == [3, 3, 3]
    assert clock.held == [3, 3, 3]  # stopping: the interruptible sleep would return at once
    clock = Clock(stopping=True)
    api = Api(clock, status=429, retry_after="60")
    run(cfg, clock, api, patient=True, deadline=clock.now + 10)
    assert len(api.asked) == 1  # the server asked for more than the stop bound leaves: give up now


@pytest.mark.parametrize("header", ["soon", "-5", "nan", "Wed, 21 Oct 2026 07:28:00 GMT"])
def test_a_retry_after_that_is_not_seconds_falls_back_to_the_backoff(cfg, header: str) -> None:
    clock = Clock()
    api = Api(clock, status=429, retry_after=header)
    run(cfg, clock, api)
    assert len(api.asked) == cfg.retry_attempts
    assert min(gaps(api.asked)) >= RETRY_MIN_WAIT_SECONDS


def test_near_the_deadline_a_retry_stops_instead_of_hot_looping(cfg) -> None:
    clock = Clock(stopping=True)
    api = Api(clock)
    run(dataclasses.replace(cfg, retry_max_wait_seconds=0), clock, api, patient=True,
        deadline=clock.now + RETRY_MIN_WAIT_SECONDS / 2)
    assert len(api.asked) == 1
    clock = Clock(stopping=True)
    api = Api(clock)
    run(cfg, clock, api, patient=True, deadline=clock.now - 1)  # already past
    assert len(api.asked) == 1
