"""Prometheus metrics: their definitions, the record_* helpers that update them, and the /metrics server.

The metrics live in a registry of their own, always: recording costs a dict update whether anyone
scrapes or not, so nothing asks "are metrics on?". Only the HTTP server is optional (METRICS_PORT).
The helpers are called from three places: the transition callback (state, cordon), the cycle report
(usage, removals, results, durations) and the retry policy (retries).
"""

from __future__ import annotations

import platform
from importlib import metadata

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    start_http_server,
)

from . import disk, machine
from .config import ConfigError

# No *_created series beside each counter and histogram: one more series each, and nothing here needs
# them (the flag is the library's, for the whole process: this process exposes only this registry).
disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=True)
PREFIX = "fsm_cleaner_"
# Seconds to hours: a quiet cycle takes seconds, a node with thousands of images hours.
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800)
# What a removal removed. Reasons are free text ("least needed", the planner's words) made label-safe.
KINDS = ("container", "dangling", "image", "build_cache")
RESULTS = ("done", "dry_run", "failed", "stopped", "skipped")

STATE = Gauge(PREFIX + "state", "1 for the state the agent is in, 0 for the others", ["state"],
              registry=REGISTRY)
NODE_CORDONED = Gauge(PREFIX + "node_cordoned",
                      "1 from the cordon until the node is handed back (fsm-cleaner may hold it cordoned)",
                      registry=REGISTRY)
SLOT_HELD = Gauge(PREFIX + "cordon_slot_held",
                  "1 while this node holds one of the cluster's MAX_CORDONED cordon slots", registry=REGISTRY)
DISK_USAGE = Gauge(PREFIX + "disk_usage_ratio", "Used share of PATH_TO_CHECK's filesystem, as df computes it",
                   ["kind"], registry=REGISTRY)
CYCLES = Counter(PREFIX + "cycles", "Cycles by result; skipped: usage was below the high threshold",
                 ["result"], registry=REGISTRY)
CYCLE_DURATION = Histogram(PREFIX + "cycle_duration_seconds", "From the measurement to the cycle summary",
                           buckets=DURATION_BUCKETS, registry=REGISTRY)
CORDON_DURATION = Histogram(PREFIX + "cordon_duration_seconds", "From the cordon to the uncordon",
                            buckets=DURATION_BUCKETS, registry=REGISTRY)
RECLAIMED = Counter(PREFIX + "reclaimed_bytes", "Bytes the runtime reported freed (dry run: would free)",
                    ["kind", "reason"], registry=REGISTRY)
REMOVED = Counter(PREFIX + "removed_objects", "Objects removed (dry run: would remove)", ["kind", "reason"],
                  registry=REGISTRY)
SKIPPED = Counter(PREFIX + "removals_skipped", "Images that could not go, by the rule that kept them",
                  ["reason"], registry=REGISTRY)
RETRIES = Counter(PREFIX + "retries", "Retries of a step's side effect after a transient failure", ["step"],
                  registry=REGISTRY)
BUILD = Info(PREFIX + "build", "fsm-cleaner's version and the Python running it", registry=REGISTRY)


def _label(reason: str) -> str:
    return reason.strip().replace(" ", "_")


def record_state(state: str, *, cordoned: bool, slot_held: bool = False) -> None:
    for name in machine.STATE_NAMES:
        STATE.labels(name).set(1 if name == state else 0)
    NODE_CORDONED.set(1 if cordoned else 0)
    SLOT_HELD.set(1 if slot_held else 0)


def record_usage(stats: disk.FsStats) -> None:
    DISK_USAGE.labels("blocks").set(stats.block_percent / 100)
    inodes = stats.inode_percent
    if inodes is None:  # no inode table (btrfs, overlay): no series rather than a made-up 0
        DISK_USAGE.remove("inodes")
    else:
        DISK_USAGE.labels("inodes").set(inodes / 100)


def record_removal(kind: str, reason: str, reclaimed: int, count: int = 1) -> None:
    """``count`` objects of ``kind`` removed for ``reason``, freeing ``reclaimed`` bytes (as reported)."""
    if kind not in KINDS:
        raise ValueError(f"removal kind {kind!r} is none of {KINDS}")
    REMOVED.labels(kind, _label(reason)).inc(count)
    RECLAIMED.labels(kind, _label(reason)).inc(reclaimed)


def record_skipped(reason: str, n: int = 1) -> None:
    SKIPPED.labels(_label(reason)).inc(n)


def record_retry(step: str) -> None:
    RETRIES.labels(step).inc()


def record_cycle(result: str, seconds: float | None = None, cordon_seconds: float | None = None) -> None:
    """A cycle ended with ``result``; the durations of one that ran (a skipped cycle has none)."""
    if result not in RESULTS:
        raise ValueError(f"cycle result {result!r} is none of {RESULTS}")
    CYCLES.labels(result).inc()
    if seconds is not None:
        CYCLE_DURATION.observe(seconds)
    if cordon_seconds is not None:
        CORDON_DURATION.observe(cordon_seconds)


def _version() -> str:
    try:
        return metadata.version("fsm-cleaner")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _initialise() -> None:
    """Every series a dashboard or alert expects exists from the start, at 0."""
    record_state("Starting", cordoned=False)
    for result in RESULTS:
        CYCLES.labels(result)
    BUILD.info({"version": _version(), "python": platform.python_version()})


def serve(port: int, address: str) -> None:
    """Serve /metrics from a daemon thread; a port that cannot be bound is a configuration error."""
    try:
        start_http_server(port, address, registry=REGISTRY)
    except OSError as e:
        raise ConfigError(f"METRICS_PORT={port}: cannot listen on {address}:{port} ({e.strerror or e}); "
                          "accepted: a port nothing else on the pod's network listens on, or 0 or empty "
                          "for no metrics endpoint") from None


_initialise()
