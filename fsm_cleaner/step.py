"""A state's side effect under its retry policy; StepFailed when it fails for good."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from .config import Config
from .retry import policy, short_error
from .shutdown import Shutdown

log = logging.getLogger("fsm_cleaner")
T = TypeVar("T")


class StepFailed(Exception):
    """A state's side effect failed for good (retries exhausted, or not retryable)."""


def run(cfg: Config, shutdown: Shutdown, step: str, fn: Callable[[], T], *, patient: bool = False) -> T:
    """Run ``fn`` under the step's retry policy, within the stop bound; a final failure is StepFailed."""
    try:
        return policy(cfg, step, patient=patient, deadline=shutdown.retry_deadline,
                      sleep=shutdown.backoff)(fn)
    except Exception as e:
        log.error("%s failed: %s", step, short_error(e))
        raise StepFailed(f"{step}: {short_error(e)}") from e
