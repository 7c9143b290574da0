"""Retry policies (tenacity) for the side effects of each state, and what counts as transient."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import docker.errors
import requests.exceptions
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_any,
    stop_before_delay,
    wait_exponential_jitter,
)

from . import metrics
from .config import RETRY_MIN_WAIT_SECONDS, Config
from .journal import NodeChanged

log = logging.getLogger("fsm_cleaner")

# Docker answers 409 to a prune while another prune runs; that one is worth waiting for.
_DOCKER_BUSY = "a prune operation is already running"


def is_transient(exc: BaseException | None) -> bool:
    """Failures that another attempt can cure: network, timeouts, 5xx, 429, 409 conflicts, a node
    changed since it was read."""
    if exc is None:
        return False
    if isinstance(exc, NodeChanged):
        return True
    if isinstance(exc, ApiException):
        return exc.status in (0, 409, 429) or exc.status >= 500
    if isinstance(exc, docker.errors.APIError):
        status = exc.status_code or 0
        return status >= 500 or (status == 409 and _DOCKER_BUSY in str(exc.explanation or exc))
    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                        urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)):
        return True
    # The docker SDK wraps a refused connection at client creation in a plain DockerException.
    return isinstance(exc, docker.errors.DockerException) and is_transient(exc.__cause__ or exc.__context__)


def short_error(exc: BaseException | None) -> str:
    if exc is None:
        return "no error"
    if isinstance(exc, ApiException):
        return f"Kubernetes API {exc.status} {exc.reason}".strip()
    if isinstance(exc, docker.errors.APIError):
        return f"Docker API {exc.status_code}: {exc.explanation}"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def retry_after(exc: BaseException | None) -> float:
    """The seconds a Kubernetes answer (429, 503) asked us to wait before the next request; 0 if none.

    The API server sends whole seconds; anything else (an HTTP date, garbage) is ignored.
    """
    headers = exc.headers if isinstance(exc, ApiException) else None
    for key, value in (headers or {}).items():
        if key.lower() == "retry-after":
            try:
                seconds = float(value)
            except ValueError:
                return 0.0
            return seconds if math.isfinite(seconds) and seconds > 0 else 0.0
    return 0.0


def retrying(step: str, state: RetryCallState) -> None:
    """Before each retry's wait: the log line and the metric."""
    metrics.record_retry(step)
    log.warning("%s: attempt %d failed (%s); retrying in %.1f s", step, state.attempt_number,
                short_error(state.outcome.exception() if state.outcome else None), state.upcoming_sleep)


def policy(cfg: Config, step: str, *, patient: bool = False,
           deadline: Callable[[], float | None] = lambda: None,
           sleep: Callable[[float], object] = time.sleep,
           hold: Callable[[float], object] = time.sleep,
           clock: Callable[[], float] = time.monotonic) -> Retrying:
    """The policy for one state's side effect.

    ``patient`` (the uncordon) keeps trying, attempts unbounded, for UNCORDON_RETRY_SECONDS. Any
    policy also stops once its next attempt would start past ``deadline()`` (``clock()`` seconds; set
    when a stop was requested).

    Every retry waits at least RETRY_MIN_WAIT_SECONDS, and at least what the server asked
    (Retry-After). The floor is slept with ``hold``, which nothing cuts short, so a retry never follows
    at once; the rest with ``sleep``, which a stop cuts short. Once stopping (``deadline()`` set) the
    backoff is dropped and the server's wait held too: the deadline check below sees all of it.
    """
    budget = cfg.uncordon_retry_seconds if patient else cfg.retry_total_seconds
    backoff = wait_exponential_jitter(multiplier=0.5, max=cfg.retry_max_wait_seconds, jitter=0.5)
    held = RETRY_MIN_WAIT_SECONDS  # the part of the coming wait that is slept with hold

    def wait(state: RetryCallState) -> float:
        nonlocal held
        asked = max(RETRY_MIN_WAIT_SECONDS, retry_after(state.outcome.exception() if state.outcome else None))
        stopping = deadline() is not None
        held = asked if stopping else RETRY_MIN_WAIT_SECONDS
        return asked if stopping else max(asked, backoff(state))

    def pause(seconds: float) -> None:
        hold(min(held, seconds))
        if seconds > held:
            sleep(seconds - held)

    def past_deadline(state: RetryCallState) -> bool:
        # upcoming_sleep is at least the floor: an attempt that could only follow at once stops here.
        limit = deadline()
        return limit is not None and clock() + (state.upcoming_sleep or 0) >= limit

    stop = stop_any(stop_before_delay(budget), past_deadline)
    if not patient:
        stop = stop_any(stop, stop_after_attempt(cfg.retry_attempts))
    return Retrying(
        stop=stop,
        wait=wait,
        retry=retry_if_exception(is_transient),
        sleep=pause,
        before_sleep=lambda s: retrying(step, s),
        reraise=True,
    )
