"""Settings from the environment (the old cleaner's names too) and the command line.

Precedence, highest first: command-line flag, ``FSM_CLEANER_<NAME>``, ``DOCKER_IMAGE_CLEANER_<NAME>``,
default. Every value is validated before the agent touches Docker or the node: a bad one raises
``ConfigError`` whose message names the variable, the value and what would be accepted.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import selector

NEW_PREFIX = "FSM_CLEANER_"
OLD_PREFIX = "DOCKER_IMAGE_CLEANER_"


class ConfigError(ValueError):
    """A setting the agent cannot run with (exit code 2)."""


@dataclass(frozen=True)
class Setting:
    name: str  # the suffix after the prefix, e.g. "THRESHOLD_HIGH"
    default: str | None
    help: str
    legacy: bool  # also read as DOCKER_IMAGE_CLEANER_<name>

    @property
    def env_names(self) -> tuple[str, ...]:
        names = (NEW_PREFIX + self.name,)
        return names + (OLD_PREFIX + self.name,) if self.legacy else names


SETTINGS: tuple[Setting, ...] = (
    Setting("NODE_NAME", None, "node to cordon and journal on; unset: no cluster", True),
    Setting("PATH_TO_CHECK", "/var/lib/docker", "path whose filesystem is measured", True),
    Setting("INTERVAL_SECONDS", "300", "seconds between measurements", True),
    Setting("DELAY_SECONDS", "1", "pause between two image removals", True),
    Setting("THRESHOLD_TYPE", "relative", "relative (percent of blocks/inodes) or absolute (bytes)", True),
    Setting("THRESHOLD_HIGH", "80", "start a cycle above this (percent, or bytes in absolute mode)", True),
    Setting("THRESHOLD_LOW", None, "stop removing at or below this; unset: the old tool's behaviour", True),
    Setting("TIMEOUT_SECONDS", "300", "Docker API timeout per call", True),
    Setting("API_TIMEOUT_SECONDS", "15", "Kubernetes API read timeout per request", False),
    Setting("RETRY_ATTEMPTS", "5", "attempts per step before it is given up", False),
    Setting("RETRY_MAX_WAIT_SECONDS", "30", "longest backoff between two attempts", False),
    Setting("RETRY_TOTAL_SECONDS", "120", "time cap for one step's attempts", False),
    Setting("UNCORDON_RETRY_SECONDS", "600", "time cap for the uncordon's attempts while running", False),
    Setting("STOP_TIMEOUT_SECONDS", "25", "bound on a graceful stop (SIGTERM) including uncordon", False),
    Setting("HEARTBEAT_FILE", "/tmp/fsm-cleaner/heartbeat", "file the loop touches (liveness)", False),
    Setting("HEARTBEAT_MAX_AGE_SECONDS", "900", "healthcheck fails when the heartbeat is older", False),
    Setting("EVENTS_NAMESPACE", "default", "namespace of the Events emitted for the node", False),
    Setting("DRY_RUN", "false", "measure and report, never cordon nor remove", False),
    Setting("LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR", False),
    # retention and build cache (issues 9 and 10)
    Setting("MIN_AGE", "30m", "images and build cache younger than this stay (seconds, or 90s, 30m, 2h, 1d)",
            False),
    # metrics (issue 11)
    Setting("METRICS_PORT", None, "serve Prometheus metrics on this port at /metrics; unset, empty or 0: off",
            False),
    Setting("METRICS_ADDRESS", "0.0.0.0", "address the metrics endpoint listens on (:: for IPv6)", False),
    # blocking pods (issue 11)
    Setting("BLOCKING_POD_SELECTOR", None, "label selector of pods while which (on this node) images, "
            "dangling images and build cache stay, e.g. component=binderhub-build; unset: none", False),
    # retention: the use history and the keep list (issue 10)
    Setting("STATE_DIR", "/var/lib/fsm-cleaner", "directory of the use history (history.json); unwritable: "
            "kept in memory only", False),
    Setting("KEEP", None, "images never removed: comma-separated reference patterns (quay.io/jupyterhub/*)",
            False),
    # build cache (issue 10)
    Setting("BUILD_CACHE_MAX", None, "build cache kept by a cycle: bytes (10Gi) or a share of the disk "
            "(10%); unset: none beyond MIN_AGE", False),
    # fleet safety (issue 11)
    Setting("CORDON", "true", "cordon the node while cleaning; false: never cordon (single-node clusters)",
            False),
    Setting("MAX_CORDONED", "1", "nodes cordoned by fsm-cleaner at once, cluster-wide: a count, or a "
            "percentage of the nodes the DaemonSet runs on (20%)", False),
    Setting("CRITICAL_THRESHOLD", None, "above this usage a node cleans even with no cordon slot free and "
            "with blocking pods running; unset: 95 (or THRESHOLD_HIGH if above) in relative mode, none in "
            "absolute mode", False),
    Setting("SLOT_LEASE_SECONDS", "120", "a cordon slot not renewed for this long is free (its holder died)",
            False),
    Setting("NAMESPACE", None, "namespace of the cordon slots' Leases; unset: POD_NAMESPACE (downward API), "
            "else default", False),
    Setting("DAEMONSET_NAME", "fsm-cleaner", "the DaemonSet whose node count a MAX_CORDONED percentage is "
            "of", False),
)
BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Config:
    node_name: str | None
    path_to_check: str
    interval_seconds: float
    delay_seconds: float
    threshold_type: str
    threshold_high: float
    threshold_low: float | None
    timeout_seconds: float
    api_timeout_seconds: float
    retry_attempts: int
    retry_max_wait_seconds: float
    retry_total_seconds: float
    uncordon_retry_seconds: float
    stop_timeout_seconds: float
    heartbeat_file: str
    heartbeat_max_age_seconds: float
    events_namespace: str
    dry_run: bool
    log_level: str
    min_age_seconds: float
    # metrics
    metrics_port: int | None  # None: no endpoint
    metrics_address: str
    # blocking pods (issue 11)
    blocking_pod_selector: str | None
    # retention (issue 10)
    state_dir: str
    keep: tuple[str, ...]
    build_cache_max: Budget  # the build cache a cycle leaves (entries younger than MIN_AGE on top)
    # fleet safety (issue 11)
    cordon: bool = True
    max_cordoned: float = 1
    max_cordoned_percent: bool = False  # max_cordoned is a percentage of the DaemonSet's nodes
    critical_threshold: float | None = None  # in the thresholds' unit; None: no critical level
    slot_lease_seconds: float = 120
    namespace: str = "default"  # the Leases'
    daemonset_name: str = "fsm-cleaner"

    @property
    def unit(self) -> str:
        return "%" if self.threshold_type == "relative" else "bytes"


# A number as float() reads it (40e9, 1_000, surrounding spaces: docker-image-cleaner's parse), then an
# optional unit.
_SIZE = re.compile(r"^\s*(.+?)\s*([KMGT]i?)?B?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
# Any Docker data directory holds more than this, so a lower THRESHOLD_HIGH would start a cycle at every
# measurement; it catches "40" meant as GB. (docker-image-cleaner's floor was 1 GiB.)
MIN_ABSOLUTE_HIGH = 2**20
# A Kubernetes request in flight when SIGTERM lands runs to its read timeout (API_TIMEOUT_SECONDS); only
# the requests after it are cut to the stop bound. What the bound must still hold after it: the stop's
# 3 s margin for the last round trip (agent.py) and 2 s for a last uncordon attempt.
STOP_ROOM_SECONDS = 5
# The critical level in relative mode when CRITICAL_THRESHOLD is unset (or THRESHOLD_HIGH if higher).
DEFAULT_CRITICAL = 95.0
# Every retry waits at least this long (retry.py), so RETRY_MAX_WAIT_SECONDS cannot be lower.
RETRY_MIN_WAIT_SECONDS = 0.5


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _number(var: str, raw: str, *, minimum: float = 0, integer: bool = False) -> float:
    kind = "a whole number" if integer else "a number"
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not {kind}; accepted: {kind} >= {minimum:g}") from None
    if not math.isfinite(value) or value < minimum:
        raise ConfigError(f"{var}={raw!r} is out of range; accepted: {kind} >= {minimum:g}")
    return value


def _threshold(var: str, raw: str, kind: str, *, floor: float = 0) -> float:
    if kind == "relative":
        value = _float(raw)
        if not 0 <= value <= 100:
            raise ConfigError(f"{var}={raw!r} is not a percentage; accepted: a number from 0 to 100 "
                              "(or set THRESHOLD_TYPE=absolute for a size in bytes)")
        return value
    match = _SIZE.match(raw)
    value = _float(match[1]) * _UNITS[(match[2] or "").lower()] if match else math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(
            f"{var}={raw!r} is not a size in bytes; accepted: a number of bytes such as 40e9 or "
            "40000000000, optionally with a unit K, M, G, T (powers of 1000) or Ki, Mi, Gi, Ti (powers "
            "of 1024), e.g. 50Gi"
        )
    if value < floor:
        raise ConfigError(
            f"{var}={raw!r} is below 1 MiB: every measurement would start a cycle; accepted: a size of "
            "at least 1Mi (1048576 bytes), e.g. 40e9 or 50Gi (absolute mode counts bytes, not GB)"
        )
    return value


# Kubernetes names nodes with DNS-1123 subdomains; anything else can only 404.
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _node_name(var: str, raw: str) -> str | None:
    name = raw.strip()
    if name and (len(name) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(name)):
        raise ConfigError(
            f"{var}={raw!r} is not a Kubernetes node name; accepted: a DNS-1123 subdomain (lower-case "
            "letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 "
            "characters), as the downward API's spec.nodeName gives it"
        )
    return name or None


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(var: str, raw: str) -> float:
    """Seconds as a number, or a duration such as 90s, 30m, 2h, 1h30m, 1d."""
    text = raw.strip().lower()
    value = _float(text)
    if math.isnan(value) and text and _DURATION.sub("", text) == "":
        value = sum(float(n) * _SECONDS[u] for n, u in _DURATION.findall(text))
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{var}={raw!r} is not a duration; accepted: seconds (e.g. 1800) or a duration "
                          "such as 90s, 30m, 2h, 1h30m, 1d")
    return value


def _port(var: str, raw: str) -> int | None:
    """A TCP port; 0 means none (as an empty value does)."""
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError(f"{var}={raw!r} is not a port; accepted: a whole number from 1 to 65535, or 0 or "
                          "empty for no metrics endpoint")
    return port or None


def _address(var: str, raw: str) -> str:
    try:
        return str(ipaddress.ip_address(raw.strip()))
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not an IP address; accepted: an IPv4 or IPv6 address, e.g. "
                          "0.0.0.0 (every IPv4 interface), :: (every interface) or 127.0.0.1") from None


def _label_selector(var: str, raw: str) -> str | None:
    try:
        selector.parse(raw)
    except selector.SelectorError as e:
        raise ConfigError(f"{var}={raw!r} is not a label selector: {e}; accepted: a Kubernetes label "
                          "selector such as component=binderhub-build, 'app in (build,push)', '!ci' or "
                          "tier!=web (requirements separated by commas, all must hold)") from None
    return raw.strip() or None


def _absolute_path(var: str, raw: str) -> str:
    path = raw.strip()
    if not os.path.isabs(path) or "\0" in path:
        raise ConfigError(f"{var}={raw!r} is not an absolute path; accepted: a directory such as "
                          "/var/lib/fsm-cleaner (created if missing)")
    return os.path.normpath(path)


# A reference as Docker writes it ([registry[:port]/]name[:tag][@digest]) with shell wildcards * ? [...]
_PATTERN = re.compile(r"[a-z0-9*?\[\]!._/-]+(:[\w*?\[\]!.-]+)?(@[\w*?\[\]!:.-]+)?")


def _patterns(var: str, raw: str) -> tuple[str, ...]:
    """Comma-separated image reference patterns, e.g. ``quay.io/jupyterhub/*, busybox:1.36``."""
    patterns = tuple(p.strip() for p in raw.split(","))
    for p in patterns:
        # a registry's port (localhost:5000/app) is the one colon before the last slash
        name = p.rsplit("/", 1)
        bare = f"{re.sub(r':[0-9*?]+$', '', name[0])}/{name[1]}" if len(name) == 2 else p
        if not _PATTERN.fullmatch(bare) or p.count("[") != p.count("]"):
            raise ConfigError(
                f"{var}={raw!r} has the pattern {p!r}, which no image reference can match; accepted: "
                "comma-separated references with shell wildcards, lower-case before the tag, e.g. "
                "quay.io/jupyterhub/*, busybox (every tag), python:3.1?, localhost:5000/app")
    return patterns


def _count_or_percent(var: str, raw: str) -> tuple[float, bool]:
    text = raw.strip()
    percent = text.endswith("%")
    value = _float(text[:-1] if percent else text)
    if not (math.isfinite(value) and (0 < value <= 100 if percent else value >= 1 and value == int(value))):
        raise ConfigError(f"{var}={raw!r} is not a node count; accepted: a whole number of nodes >= 1 "
                          "(e.g. 2), or a percentage of the nodes the DaemonSet runs on, above 0% and at "
                          "most 100% (e.g. 20%; at least 1 node)")
    return value, percent


_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# what Kubernetes accepts as a namespace's and as a DaemonSet's name: (pattern, length, what it is)
_NAMES = {"namespace": (_DNS1123_LABEL, 63, "a DNS-1123 label (lower-case letters, digits and '-', at most "
                        "63 characters), e.g. kube-system"),
          "object": (_DNS1123_SUBDOMAIN, 253, "a DNS-1123 subdomain such as fsm-cleaner")}


def _kube_name(kind: str) -> Callable[[str, str], str]:
    pattern, limit, accepted = _NAMES[kind]

    def parse(var: str, raw: str) -> str:
        name = raw.strip()
        if len(name) > limit or not pattern.fullmatch(name):
            raise ConfigError(f"{var}={raw!r} is not a Kubernetes {kind} name; accepted: {accepted}")
        return name
    return parse


_namespace, _name = _kube_name("namespace"), _kube_name("object")


def _bool(var: str, raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{var}={raw!r} is not a boolean; accepted: true or false (also 1/0, yes/no)")


def _choice(var: str, raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in choices:
        raise ConfigError(f"{var}={raw!r} is not accepted; accepted: {', '.join(choices)}")
    return value


def _lookup(name: str, env: Mapping[str, str], overrides: Mapping[str, Any]) -> tuple[str, str | None]:
    """Return (where it came from, raw value) for a setting, by precedence."""
    if overrides.get(name) is not None:
        return "--" + name.lower().replace("_", "-"), str(overrides[name])
    for var in BY_NAME[name].env_names:
        if env.get(var, "") != "":
            return var, env[var]
    return f"the default {name}", BY_NAME[name].default


def raw(name: str, env: Mapping[str, str] | None = None, **overrides: Any) -> str | None:
    """One setting's unvalidated value, by precedence (for commands that need only that one)."""
    return _lookup(name, os.environ if env is None else env, overrides)[1]


# The settings a command reads alone (status, healthcheck), with their parsers.
_ALONE: dict[str, Callable[[str, str], Any]] = {
    "NODE_NAME": _node_name,
    "HEARTBEAT_MAX_AGE_SECONDS": functools.partial(_number, minimum=1),
}


def one(name: str, env: Mapping[str, str] | None = None, **overrides: Any) -> Any:
    """One setting validated as load() validates it, for the commands that read only that one."""
    var, value = _lookup(name, os.environ if env is None else env, overrides)
    return None if value is None else _ALONE[name](var, value)


def load(env: Mapping[str, str] | None = None, **overrides: Any) -> Config:
    """Read and validate every setting; ``overrides`` are command-line values by setting name."""
    env = os.environ if env is None else env

    def get(name: str, parse: Callable[[str, str], Any] | None = None) -> Any:
        var, raw = _lookup(name, env, overrides)
        if raw is None or parse is None:
            return raw
        return parse(var, raw)

    kind = get("THRESHOLD_TYPE", lambda v, r: _choice(v, r, ("relative", "absolute")))
    high_var, _ = _lookup("THRESHOLD_HIGH", env, overrides)
    if kind == "absolute" and high_var.startswith("the default"):
        # 80 bytes would mean "always clean"; docker-image-cleaner refused it too (below 1 GB)
        raise ConfigError("THRESHOLD_HIGH is unset in absolute mode; accepted: a size such as 50Gi in "
                          "FSM_CLEANER_THRESHOLD_HIGH or DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH")
    high = get("THRESHOLD_HIGH", lambda v, r: _threshold(v, r, kind, floor=MIN_ABSOLUTE_HIGH))
    low = get("THRESHOLD_LOW", lambda v, r: _threshold(v, r, kind))
    if low is not None and low > high:
        var_low, raw_low = _lookup("THRESHOLD_LOW", env, overrides)
        var_high, raw_high = _lookup("THRESHOLD_HIGH", env, overrides)
        raise ConfigError(
            f"{var_low}={raw_low!r} is above {var_high}={raw_high!r}; accepted: a low threshold at or "
            "below the high one"
        )
    path_var, path = _lookup("PATH_TO_CHECK", env, overrides)
    if not os.path.isdir(path or ""):
        raise ConfigError(f"{path_var}={path!r} does not exist; accepted: an existing directory")
    api_timeout = get("API_TIMEOUT_SECONDS", lambda v, r: _number(v, r, minimum=0.1))
    stop_timeout = get("STOP_TIMEOUT_SECONDS", lambda v, r: _number(v, r, minimum=1))
    if api_timeout > stop_timeout - STOP_ROOM_SECONDS:
        (api_var, api_raw), (stop_var, stop_raw) = (_lookup(n, env, overrides) for n in
                                                    ("API_TIMEOUT_SECONDS", "STOP_TIMEOUT_SECONDS"))
        raise ConfigError(
            f"{api_var}={api_raw!r} breaks the stop bound {stop_var}={stop_raw!r}: a request in flight "
            f"when SIGTERM lands may take that long, and the stop needs {STOP_ROOM_SECONDS} s more; "
            f"accepted: API_TIMEOUT_SECONDS <= STOP_TIMEOUT_SECONDS - {STOP_ROOM_SECONDS} (here at most "
            f"{stop_timeout - STOP_ROOM_SECONDS:g}), or a larger STOP_TIMEOUT_SECONDS with the pod's "
            "terminationGracePeriodSeconds above it"
        )
    node_name = get("NODE_NAME", _node_name)
    blocking_pod_selector = get("BLOCKING_POD_SELECTOR", _label_selector)
    if blocking_pod_selector and node_name is None:
        var, raw = _lookup("BLOCKING_POD_SELECTOR", env, overrides)
        raise ConfigError(f"{var}={raw!r} needs NODE_NAME: the blocking pods are looked up on that node; "
                          "accepted: BLOCKING_POD_SELECTOR with NODE_NAME set, or unset")
    critical = get("CRITICAL_THRESHOLD", lambda v, r: _threshold(v, r, kind))
    if critical is None and kind == "relative":
        critical = max(DEFAULT_CRITICAL, high)
    if critical is not None and critical < high:
        var_c, raw_c = _lookup("CRITICAL_THRESHOLD", env, overrides)
        var_high, raw_high = _lookup("THRESHOLD_HIGH", env, overrides)
        raise ConfigError(f"{var_c}={raw_c!r} is below {var_high}={raw_high!r}: every cycle would be "
                          "critical and clean without a cordon slot; accepted: a critical level at or above "
                          "the high threshold (default 95 in relative mode)")
    max_cordoned, percent = get("MAX_CORDONED", _count_or_percent)
    namespace = get("NAMESPACE", _namespace) or _namespace("POD_NAMESPACE",
                                                            env.get("POD_NAMESPACE") or "default")
    return Config(
        node_name=node_name,
        path_to_check=path,
        interval_seconds=get("INTERVAL_SECONDS", lambda v, r: _number(v, r, minimum=1)),
        delay_seconds=get("DELAY_SECONDS", _number),
        threshold_type=kind,
        threshold_high=high,
        threshold_low=low,
        timeout_seconds=get("TIMEOUT_SECONDS", lambda v, r: _number(v, r, minimum=1)),
        api_timeout_seconds=api_timeout,
        retry_attempts=get("RETRY_ATTEMPTS", lambda v, r: _number(v, r, minimum=1, integer=True)),
        retry_max_wait_seconds=get("RETRY_MAX_WAIT_SECONDS",
                                   lambda v, r: _number(v, r, minimum=RETRY_MIN_WAIT_SECONDS)),
        retry_total_seconds=get("RETRY_TOTAL_SECONDS", _number),
        uncordon_retry_seconds=get("UNCORDON_RETRY_SECONDS", _number),
        stop_timeout_seconds=stop_timeout,
        heartbeat_file=get("HEARTBEAT_FILE"),
        heartbeat_max_age_seconds=get("HEARTBEAT_MAX_AGE_SECONDS", _ALONE["HEARTBEAT_MAX_AGE_SECONDS"]),
        events_namespace=get("EVENTS_NAMESPACE"),
        dry_run=get("DRY_RUN", _bool),
        min_age_seconds=get("MIN_AGE", _duration),
        log_level=get("LOG_LEVEL", lambda v, r: _choice(v, r, ("debug", "info", "warning", "error"))).upper(),
        metrics_port=get("METRICS_PORT", _port),
        metrics_address=get("METRICS_ADDRESS", _address),
        blocking_pod_selector=blocking_pod_selector,
        state_dir=get("STATE_DIR", _absolute_path),
        keep=get("KEEP", _patterns) or (),
        build_cache_max=get("BUILD_CACHE_MAX", _budget) or Budget(0),
        cordon=get("CORDON", _bool),
        max_cordoned=max_cordoned,
        max_cordoned_percent=percent,
        critical_threshold=critical,
        slot_lease_seconds=get("SLOT_LEASE_SECONDS", lambda v, r: _number(v, r, minimum=4)),
        namespace=namespace,
        daemonset_name=get("DAEMONSET_NAME", _name),
    )


# --- build cache (issue 10) ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Budget:
    """Bytes, or a percentage of the disk under PATH_TO_CHECK (resolved when the disk is measured)."""

    value: float
    percent: bool = False

    def bytes(self, disk_bytes: int) -> int:
        return int(disk_bytes * self.value / 100 if self.percent else self.value)


def _budget(var: str, raw: str) -> Budget:
    text = raw.strip()
    if text.endswith("%"):
        value = _float(text[:-1])
        if not 0 <= value <= 100:
            raise ConfigError(f"{var}={raw!r} is not a percentage of the disk; accepted: 0% to 100%, "
                              "e.g. 10%")
        return Budget(value, percent=True)
    match = _SIZE.match(text)
    value = _float(match[1]) * _UNITS[(match[2] or "").lower()] if match else math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{var}={raw!r} is not a size; accepted: bytes such as 10e9, optionally with a "
                          "unit K, M, G, T (powers of 1000) or Ki, Mi, Gi, Ti (powers of 1024), e.g. 10Gi, "
                          "or a percentage of the disk such as 10%")
    return Budget(value)
