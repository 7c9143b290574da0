"""The `fsm-cleaner` command: run, status, diagrams, healthcheck."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import stat
import sys
import time
import unicodedata
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Protocol

from . import config
from .config import SETTINGS, ConfigError

if TYPE_CHECKING:  # the Kubernetes client is imported only when a node name is set
    from .agent import Agent
    from .blocking import PodApi, Pods
    from .clock import Clock
    from .kube import Kube
    from .node import Node, NodeApi
    from .runtime import Runtime
    from .slots import LeaseApi, Slots
    from .tracking import UseTracking
    from .usage import Disk

    class ClusterApi(NodeApi, PodApi, LeaseApi, Protocol):
        """What the agent needs of the API: its node, the pods on it, the cordon slots."""

log = logging.getLogger("fsm_cleaner")
EXIT_CONFIG = 2
EXIT_HELD_TOO_LONG = 3  # status --all: a node cordoned by fsm-cleaner for longer than --max-cordoned-for


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fsm-cleaner",
        description="Frees node disk by pruning Docker containers and images, with the node cordoned "
        "while it works. Every setting is also read from FSM_CLEANER_<NAME> and the old "
        "DOCKER_IMAGE_CLEANER_<NAME> variables; a flag wins over both, the new name over the old.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the cleaning loop")
    run.add_argument("--once", action="store_true", help="one cycle; exit 0 if it succeeded, 1 if not")
    run.add_argument("--dry-run", action="store_true", default=None,
                     help="measure and report what would be removed; never cordon nor remove")
    for s in SETTINGS:
        if s.name != "DRY_RUN":
            run.add_argument("--" + s.name.lower().replace("_", "-"), dest=s.name, metavar="VALUE",
                             help=f"{s.help} (env {' or '.join(s.env_names)}; default {s.default})"
                             .replace("%", "%%"))  # argparse formats help with %
    status = sub.add_parser("status", help="print the node's journal; --all: every node's, a line each")
    status.add_argument("--node-name", dest="NODE_NAME", metavar="NODE")
    status.add_argument("--all", action="store_true",
                        help="a line per node of the cluster; exit 3 when fsm-cleaner has held a node "
                             "cordoned for longer than --max-cordoned-for")
    status.add_argument("--max-cordoned-for", metavar="DURATION", default="1h",
                        help="with --all: the longest cordon that is normal, seconds or a duration such as "
                             "30m, 2h (default: %(default)s)")
    status.add_argument("--diagram", metavar="FILE",
                        help="also render the machine with the current state highlighted")
    diagrams = sub.add_parser("diagrams", help="render state_diagrams/ (SVG, PNG, Mermaid, RUNBOOK.md)")
    diagrams.add_argument("--out", default="state_diagrams", help="output folder (default: %(default)s)")
    sub.add_parser("healthcheck", help="exit 0 while the loop's heartbeat is fresh (liveness probe)")
    return p


def _logging(level: str) -> None:
    logging.Formatter.converter = time.gmtime
    logging.basicConfig(stream=sys.stderr, level=level,
                        format="%(asctime)s.%(msecs)03dZ %(levelname)-7s %(message)s",
                        datefmt="%Y-%m-%dT%H:%M:%S")
    for noisy in ("urllib3", "docker", "kubernetes", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.contextmanager
def _credentials(needs: str) -> Iterator[None]:
    """A failure to load Kubernetes credentials, as a ConfigError (``needs``: who needs them)."""
    import yaml
    from kubernetes.config import ConfigException

    try:
        yield
    except (ConfigException, OSError, yaml.YAMLError, ValueError, TypeError, KeyError, AttributeError) as e:
        # Loading credentials touches no network: any failure here is the kubeconfig's content or its
        # absence (the client reports malformed YAML as YAMLError, the wrong shape as TypeError...).
        where = os.environ.get("KUBECONFIG") or "~/.kube/config"
        reason = (str(e).splitlines() or [""])[0][:200]
        raise ConfigError(
            f"{needs} but no Kubernetes credentials could be loaded: not in a pod "
            f"with a service account, and kubeconfig {where!r} is unusable ({type(e).__name__}: {reason}); "
            "accepted: a service account, or KUBECONFIG naming a readable kubeconfig file"
        ) from None


def _kube(node_name: str | None, events_namespace: str = "default", cfg: config.Config | None = None
          ) -> Kube | None:
    if node_name is None:
        return None
    from .kube import Kube, connect

    with _credentials(f"NODE_NAME={node_name!r} is set"):
        if cfg is None:
            return Kube(connect(), node_name, events_namespace)
        return Kube(connect(), node_name, events_namespace, namespace=cfg.namespace,
                    daemonset=cfg.daemonset_name)


def build_agent(cfg: config.Config, runtime: Runtime, kube: ClusterApi | None, *,
                clock: Clock | None = None, disk: Disk | None = None,
                uses: UseTracking | None = None) -> Agent:
    """Choose, once, what the agent talks to: a runtime that prunes or one that only lists (dry run),
    a node that is written to or a stand-in that says why nothing is, pods listed or none, a cordon
    budget or none (no cluster, dry run, CORDON=false), a use history (by default one in memory that
    nothing feeds: images ranked by creation time)."""
    from .agent import Agent
    from .blocking import NoSelector, PodsOnNode
    from .clock import RealClock
    from .history import History
    from .kube import CONNECT_TIMEOUT
    from .node import DryRunNode, NoCluster, NodeWriter
    from .runtime import DryRun
    from .shutdown import Shutdown
    from .slots import CordonBudget, NeverCordon, Unlimited
    from .tracking import UseTracking

    clock = clock or RealClock()
    shutdown = Shutdown(cfg.stop_timeout_seconds, clock)
    node: Node = NoCluster("dry run" if cfg.dry_run else "no cluster")
    pods: Pods = NoSelector()
    slots: Slots = Unlimited()
    if not cfg.cordon:
        slots = NeverCordon()
    elif kube is not None:
        slots = Unlimited("dry run") if cfg.dry_run else CordonBudget(kube, cfg, shutdown, kube.node_name)
    if kube is not None:
        node = DryRunNode(kube, cfg, shutdown) if cfg.dry_run else NodeWriter(kube, cfg, shutdown)
        if cfg.blocking_pod_selector:  # a read: a dry run lists them too, and says it would wait
            pods = PodsOnNode(kube, cfg.blocking_pod_selector,
                              lambda: (CONNECT_TIMEOUT, cfg.api_timeout_seconds))
    from . import disk as real_disk

    return Agent(cfg, DryRun(runtime) if cfg.dry_run else runtime, node, shutdown, clock, disk or real_disk,
                 pods, uses or UseTracking(History()), slots)


def cmd_run(args: argparse.Namespace) -> int:
    overrides = {s.name: getattr(args, s.name, None) for s in SETTINGS}
    overrides["DRY_RUN"] = "true" if args.dry_run else None
    cfg = config.load(**overrides)
    _logging(cfg.log_level)
    if cfg.metrics_port is not None:  # the metrics are recorded either way; only the endpoint is optional
        from . import metrics

        metrics.serve(cfg.metrics_port, cfg.metrics_address)
        log.info("metrics at http://%s/metrics", _host_port(cfg.metrics_address, cfg.metrics_port))
    kube = _kube(cfg.node_name, cfg.events_namespace, cfg)
    import docker

    from .runtimes import Detected
    from .tracking import UseTracking

    def connect() -> docker.APIClient:  # DOCKER_HOST etc. as the docker CLI reads them
        return docker.from_env(timeout=int(cfg.timeout_seconds)).api

    uses = UseTracking.for_docker(cfg, connect)
    # Docker or Podman, from the daemon's version answer (logged once); the same settings for both
    runtime = Detected(connect, os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock")
    agent = build_agent(cfg, runtime, kube, uses=uses)
    agent.shutdown.install_signal_handlers()
    log.info("fsm-cleaner starting: node %s, path %s, %s threshold high %s low %s, interval %g s%s",
             cfg.node_name or "(none: no cluster)", cfg.path_to_check, cfg.threshold_type,
             cfg.threshold_high, cfg.threshold_low, cfg.interval_seconds, ", DRY RUN" if cfg.dry_run else "")
    uses.start()  # the event watcher: a thread of its own, never in the machine's way
    try:
        return agent.run(once=args.once)
    finally:
        uses.stop()


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def cmd_status(args: argparse.Namespace) -> int:
    if args.all:
        return _status_all(args)
    kube = _kube(config.one("NODE_NAME", NODE_NAME=args.NODE_NAME))
    if kube is None:
        raise ConfigError("NODE_NAME is not set; accepted: --node-name NODE or FSM_CLEANER_NODE_NAME")
    import urllib3.exceptions
    from kubernetes.client.exceptions import ApiException

    from .journal import ANNOTATION, LEGACY_ANNOTATION, JournalError
    from .kube import NodeGone
    from .retry import short_error

    try:
        node = kube.read()
    except (NodeGone, ApiException, urllib3.exceptions.HTTPError) as e:
        print(f"fsm-cleaner: cannot read node {kube.node_name!r}: {short_error(e)}", file=sys.stderr)
        return 1
    print(f"node:         {node.name}")
    print(f"schedulable:  {'no (cordoned)' if node.unschedulable else 'yes'}")
    state = None
    try:
        entry = node.journal()
    except JournalError as e:
        print(f"journal:      UNREADABLE — {_printable(str(e))}")
    else:
        if entry is None:
            print(f"journal:      none (no {ANNOTATION} annotation: fsm-cleaner never cleaned this node)")
        else:
            state = entry.state
            since = _printable(entry.since) + _ago(entry.since)
            print(f"state:        {_printable(entry.state)} since {since}, "
                  f"written by {_printable(entry.holder)}")
            print(f"cordoned by fsm-cleaner: {'yes' if entry.cordoned_by_us else 'no'}; "
                  f"unschedulable before the cycle: {'yes' if entry.was_unschedulable else 'no'}")
            if entry.slot and entry.in_progress:
                print(f"cordon slot:  {_printable(entry.slot)} (a Lease in the agents' namespace)")
    if LEGACY_ANNOTATION in node.annotations:
        print(f"legacy:       {LEGACY_ANNOTATION} present (docker-image-cleaner cordoned it; "
              "fsm-cleaner removes it on start)")
    if args.diagram:
        from .diagrams import render_highlighted

        render_highlighted(state, args.diagram)
        print(f"diagram:      {args.diagram}")
    return 0


def _status_all(args: argparse.Namespace) -> int:
    if args.diagram:
        raise ConfigError(f"--diagram={args.diagram!r} with --all; accepted: --diagram for one node "
                          "(--node-name), where it highlights that node's state")
    limit = config._duration("--max-cordoned-for", args.max_cordoned_for)
    import urllib3.exceptions
    from kubernetes.client.exceptions import ApiException

    from . import fleet
    from .kube import Cluster, connect
    from .retry import short_error

    with _credentials("`fsm-cleaner status --all` reads every node"):
        cluster = Cluster(connect())
    try:
        nodes = cluster.nodes()
    except (ApiException, urllib3.exceptions.HTTPError) as e:
        hint = (" (the service account needs nodes list: deploy/base/rbac.yaml)"
                if isinstance(e, ApiException) and e.status == 403 else "")
        print(f"fsm-cleaner: cannot list the nodes: {short_error(e)}{hint}", file=sys.stderr)
        return 1
    now = datetime.now(timezone.utc)
    lines = sorted((fleet.line(n, now) for n in nodes), key=lambda x: x.node)
    with_result = any(x.last_result is not None for x in lines)

    def shown(value: object) -> str:
        return "-" if value is None else _printable(value)

    rows = [["NODE", "STATE", "SINCE", "CORDONED", "SLOT"] + (["LAST RESULT"] if with_result else [])]
    for x in lines:
        since = "-" if x.since is None else shown(x.since) + (
            f" ({fleet.duration(x.age)} ago)" if x.age is not None else "")
        rows.append([x.node, shown(x.state), since, x.cordoned, shown(x.slot)]
                    + ([shown(x.last_result)] if with_result else []))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    over = fleet.held_too_long(lines, limit)
    for x in over:
        held = "an unknown time" if x.held_for == float("inf") else fleet.duration(x.held_for or 0)
        print(f"fsm-cleaner: {x.node} has been cordoned by fsm-cleaner for {held} ({shown(x.state)} since "
              f"{shown(x.since)}), longer than --max-cordoned-for {args.max_cordoned_for}: see the runbook, "
              "\"The node has been cordoned for an hour\"", file=sys.stderr)
    return EXIT_HELD_TOO_LONG if over else 0


def _printable(value: object) -> str:
    """A journal field as the terminal may show it: a non-string as JSON, control and format
    characters (escape sequences, bidi overrides) escaped, as anyone who can patch the node wrote it."""
    text = value if isinstance(value, str) else json.dumps(value)
    return "".join(c.encode("unicode_escape").decode() if unicodedata.category(c)[0] == "C" else c
                   for c in text)


def _ago(since: object) -> str:
    """' (N s ago)' for a time with a zone; nothing for what is not a time (status shows, never guesses)."""
    if not isinstance(since, str):
        return ""
    try:
        then = datetime.fromisoformat(since.replace("Z", "+00:00"))
    except ValueError:
        return ""
    if then.tzinfo is None:
        return " (no time zone: age unknown)"
    return f" ({int((datetime.now(timezone.utc) - then).total_seconds())} s ago)"


def cmd_healthcheck(_: argparse.Namespace) -> int:
    # Only the two settings it needs: a liveness probe must not fail over an unrelated one.
    path = config.raw("HEARTBEAT_FILE") or ""
    limit = config.one("HEARTBEAT_MAX_AGE_SECONDS")
    try:
        beat = os.stat(path)
    except OSError as e:
        print(f"unhealthy: no heartbeat at {path} ({e.strerror})", file=sys.stderr)
        return 1
    if not stat.S_ISREG(beat.st_mode):  # a directory's mtime says nothing about the loop
        kind = "a directory" if stat.S_ISDIR(beat.st_mode) else "not a regular file"
        print(f"unhealthy: {path} is {kind}, not the heartbeat file (HEARTBEAT_FILE)", file=sys.stderr)
        return 1
    age = time.time() - beat.st_mtime
    if age > limit:
        print(f"unhealthy: heartbeat {age:.0f} s old (limit {limit:g} s)", file=sys.stderr)
        return 1
    print(f"healthy: heartbeat {age:.0f} s old")
    return 0


def cmd_diagrams(args: argparse.Namespace) -> int:
    from .diagrams import render_all

    for path in render_all(args.out):
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = {"run": cmd_run, "status": cmd_status, "healthcheck": cmd_healthcheck,
               "diagrams": cmd_diagrams}[args.command]
    try:
        return command(args)
    except ConfigError as e:
        print(f"fsm-cleaner: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
