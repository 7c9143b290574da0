"""Blocking pods (BLOCKING_POD_SELECTOR, after kured's --blocking-pod-selector): while a pod the selector
names runs on the node, the removals that could break it wait for the next tick.

A BinderHub build pod pulls a base image and builds on top of it: removing images, dangling images or
build cache under it can fail the build. Stopped containers break nothing and may still go. Past the
critical level the disk comes first: a full disk fails the build anyway, and every other pod with it.

The decision is pure; the port lists the pods (one call per cycle), and ``NoSelector`` stands in when
no selector is set, so that nothing is listed then.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

# A Pending pod is bound to the node and about to start (pulling its images, say); Succeeded, Failed
# and Unknown ones run nothing that a removal could break.
ACTIVE_PHASES = frozenset({"Pending", "Running"})
SHOWN = 3  # pods named in a log line; the rest are counted


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    phase: str


def active(pods: Sequence[Pod]) -> list[Pod]:
    return [p for p in pods if p.phase in ACTIVE_PHASES]


def removals_blocked(pods: Sequence[Pod], usage: float, critical: float | None) -> bool:
    """Whether images, dangling images and build cache must wait: a matching pod is running or about
    to, and usage (in the thresholds' unit) is below the critical level (None: no such level)."""
    return bool(active(pods)) and (critical is None or usage < critical)


def named(pods: Sequence[Pod]) -> str:
    """'pod ns/a' or 'pods ns/a, ns/b and 2 more', for a log line."""
    names = [f"{p.namespace}/{p.name}" for p in pods[:SHOWN]]
    more = f" and {len(pods) - SHOWN} more" if len(pods) > SHOWN else ""
    return f"pod{'s' if len(pods) > 1 else ''} {', '.join(names)}{more}"


def waiting(pods: Sequence[Pod], selector: str) -> str:
    """The log line (and Event message) of a cycle whose removals wait for blocking pods."""
    running = active(pods)
    verb = "runs" if len(running) == 1 else "run"
    return (f"waiting: {named(running)} (selector {selector}) {verb} on this node; images, dangling "
            "images and build cache stay until the next tick")


def notice(pods: Sequence[Pod], selector: str, blocked: bool, usage: str) -> tuple[str, str] | None:
    """The Event reason and log line of a cycle that found ``pods`` running: waiting for them, or, at the
    critical level (``blocked`` False; ``usage`` as the log shows it), removing anyway. None: none ran."""
    running = active(pods)
    if not running:
        return None
    if blocked:
        return "RemovalsDeferred", waiting(running, selector)
    return "CriticalUsage", (f"{named(running)} (selector {selector}) on this node, but usage {usage} is at "
                             "the critical level: removing anyway")


class PodApi(Protocol):
    """What the listing needs of the Kubernetes API (kube.Kube; devtools.fakes.FakeNodeApi)."""

    def pods_on_node(self, selector: str, timeout: tuple[float, float]) -> list[Pod]: ...


class Pods(Protocol):
    selector: str

    def list(self) -> list[Pod]: ...


class PodsOnNode:
    """The pods on this node that the selector names, in every namespace: one list call."""

    def __init__(self, api: PodApi, selector: str, timeout: Callable[[], tuple[float, float]]):
        self.api, self.selector, self.timeout = api, selector, timeout

    def list(self) -> list[Pod]:
        return self.api.pods_on_node(self.selector, self.timeout())


class NoSelector:
    """BLOCKING_POD_SELECTOR unset: no pod blocks anything, and nothing is listed."""

    selector = ""

    def list(self) -> list[Pod]:
        return []
