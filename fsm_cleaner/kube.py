"""Port to the Kubernetes API: read the node, write a journal patch, emit an Event, list the pods on the
node, list and write the cordon slots' Leases (and read the DaemonSet's node count for a MAX_CORDONED
percentage); and, for `fsm-cleaner status --all`, list the nodes.

The RBAC in deploy/ grants exactly these calls: nodes get, patch and list, events create (a
ClusterRole); leases list, create and update and daemonsets get, in the agent's namespace (a
Role); pods list only in the optional component deploy/components/blocking-pods (BLOCKING_POD_SELECTOR).
"""

from __future__ import annotations

import functools
import json
import logging
import math
from datetime import datetime
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from .blocking import Pod
from .config import BY_NAME
from .journal import ANNOTATION, NodeChanged, NodeView, Patch, now_rfc3339
from .retry import short_error
from .slots import PREFIX, Lease, SlotConflict

log = logging.getLogger("fsm_cleaner")


# (connect, read) seconds. The read part is the setting API_TIMEOUT_SECONDS (its default here, for
# commands that read no configuration); the agent clips both to what is left of the stop bound.
CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = (CONNECT_TIMEOUT, float(BY_NAME["API_TIMEOUT_SECONDS"].default or 0))
EVENT_TIMEOUT = (2, 5)


class NodeGone(RuntimeError):
    """The node does not exist (404): nothing to cordon or journal on."""


class SlotsUnusable(RuntimeError):
    """The cordon budget cannot work as configured (403 on Leases, no such DaemonSet): TakingSlot fails
    with this message, which says what to change."""

    def __init__(self, why: str = "the service account may not write the cordon slots' Leases: install "
                 "the Role and RoleBinding of deploy/base in the agent's namespace (NAMESPACE), or set "
                 "CORDON=false") -> None:
        super().__init__(why)


class PodsForbidden(RuntimeError):
    """The service account may not list pods (403): BLOCKING_POD_SELECTOR without its RBAC."""


def _view(node: Any) -> NodeView:
    return NodeView(
        name=node.metadata.name,
        resource_version=node.metadata.resource_version,
        unschedulable=bool(node.spec and node.spec.unschedulable),
        annotations=dict(node.metadata.annotations or {}),
    )


def connect() -> client.CoreV1Api:
    """In-cluster credentials, else KUBECONFIG / ~/.kube/config."""
    try:
        config.load_incluster_config()
        configuration = client.Configuration.get_default_copy()
    except config.ConfigException:
        configuration = client.Configuration()
        config.load_kube_config(client_configuration=configuration)
    configuration.retries = 0  # urllib3 would retry GETs on its own; tenacity decides instead
    return client.CoreV1Api(client.ApiClient(configuration))


def _pointer(*keys: str) -> str:
    """RFC 6901: ``~`` and ``/`` inside a key are escaped."""
    return "".join("/" + key.replace("~", "~0").replace("/", "~1") for key in keys)


def json_patch(seen: NodeView, patch: Patch) -> list[dict[str, Any]]:
    """``patch`` as RFC 6902 operations, conditional on what the decision read: first ``test`` the
    journal and every annotation the patch changes, and spec.unschedulable, against their values as
    read (null: absent, which the API server's test accepts for a missing key), then change them."""
    annotations = {ANNOTATION: seen.annotations.get(ANNOTATION)} | {
        key: seen.annotations.get(key) for key in patch.annotations}
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": _pointer("metadata", "annotations", key), "value": value}
        for key, value in annotations.items()]
    ops.append({"op": "test", "path": "/spec/unschedulable", "value": True if seen.unschedulable else None})
    for key, value in patch.annotations.items():
        path = _pointer("metadata", "annotations", key)
        if value is not None:
            ops.append({"op": "add", "path": path, "value": value})  # add replaces an existing key
        elif key in seen.annotations:
            ops.append({"op": "remove", "path": path})
    if patch.unschedulable is not None:
        ops.append({"op": "add", "path": "/spec/unschedulable", "value": patch.unschedulable})
    return ops


# The API server's whole answer when a JSON patch does not apply (a `test` failed, or a path it changes
# is gone); it drops the patch library's own error. Validation and admission policies say more.
NOT_APPLIED = "the server rejected our request due to an error in our request"


def _not_applied(e: ApiException) -> bool:
    """A 422 because our JSON patch did not apply to the node as it is now: the node changed since the
    read (a retry re-reads), as opposed to a 422 from validation or an admission policy (no retry helps)."""
    try:
        return e.status == 422 and json.loads(e.body or "")["message"] == NOT_APPLIED
    except (ValueError, TypeError, KeyError):
        return False


SLOT_LABELS = {"app.kubernetes.io/name": "fsm-cleaner", "app.kubernetes.io/component": "cordon-slot"}


def _micro(when: datetime | None) -> datetime | None:
    """The client writes a datetime with isoformat(), which drops a zero fraction, and the API server
    parses a MicroTime only with six fractional digits: never send a whole second."""
    return when.replace(microsecond=1) if when is not None and when.microsecond == 0 else when


def _lease_view(lease: Any) -> Lease:
    spec = lease.spec
    return Lease(name=lease.metadata.name, holder=(spec and spec.holder_identity) or "",
                 renewed=spec and (spec.renew_time or spec.acquire_time),
                 duration=float((spec and spec.lease_duration_seconds) or 0),
                 resource_version=lease.metadata.resource_version or "",
                 transitions=(spec and spec.lease_transitions) or 0, acquired=spec and spec.acquire_time)


class Kube:
    def __init__(self, api: client.CoreV1Api, node_name: str, events_namespace: str = "default", *,
                 namespace: str = "default", daemonset: str = "fsm-cleaner"):
        self.api = api
        self.node_name = node_name
        self.events_namespace = events_namespace
        self.namespace = namespace  # the agent's: the cordon slots' Leases and its DaemonSet
        self.daemonset = daemonset

    @functools.cached_property
    def coordination_api(self) -> client.CoordinationV1Api:
        return client.CoordinationV1Api(self.api.api_client)

    @functools.cached_property
    def apps_api(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api.api_client)

    # --- the cordon budget (slots.py) ---
    def slot_leases(self, timeout: Any = REQUEST_TIMEOUT) -> list[Lease]:
        selector = ",".join(f"{k}={v}" for k, v in SLOT_LABELS.items())
        try:
            found = self.coordination_api.list_namespaced_lease(self.namespace, label_selector=selector,
                                                                _request_timeout=timeout)
        except ApiException as e:
            if e.status == 403:
                raise SlotsUnusable() from None
            raise
        return [_lease_view(item) for item in found.items if item.metadata.name.startswith(PREFIX)]

    def put_lease(self, lease: Lease, timeout: Any = REQUEST_TIMEOUT) -> None:
        """Create the slot's Lease (``resource_version`` empty) or replace it conditionally on the
        resourceVersion read; SlotConflict when another writer got there first (409)."""
        body = client.V1Lease(
            metadata=client.V1ObjectMeta(name=lease.name, labels=SLOT_LABELS,
                                         resource_version=lease.resource_version or None),
            spec=client.V1LeaseSpec(holder_identity=lease.holder or None,
                                    lease_duration_seconds=int(math.ceil(lease.duration)),
                                    acquire_time=_micro(lease.acquired),
                                    renew_time=_micro(lease.renewed), lease_transitions=lease.transitions))
        try:
            if lease.resource_version:
                self.coordination_api.replace_namespaced_lease(lease.name, self.namespace, body,
                                                               _request_timeout=timeout)
            else:
                self.coordination_api.create_namespaced_lease(self.namespace, body, _request_timeout=timeout)
        except ApiException as e:
            if e.status == 409:
                raise SlotConflict(f"lease {lease.name} changed since it was read (409)") from None
            if e.status == 403:
                raise SlotsUnusable() from None
            raise

    def daemonset_nodes(self, timeout: Any = REQUEST_TIMEOUT) -> int:
        try:
            ds = self.apps_api.read_namespaced_daemon_set(self.daemonset, self.namespace,
                                                          _request_timeout=timeout)
        except ApiException as e:
            if e.status in (403, 404):
                raise SlotsUnusable(
                    f"cannot read DaemonSet {self.namespace}/{self.daemonset} ({e.status}), whose node count "
                    "a MAX_CORDONED percentage is of: set DAEMONSET_NAME (and NAMESPACE) to the agents' "
                    "DaemonSet, install the Role of deploy/base, or give MAX_CORDONED as a count") from None
            raise
        return int((ds.status and ds.status.desired_number_scheduled) or 0)

    def read(self, timeout: Any = REQUEST_TIMEOUT) -> NodeView:
        try:
            node = self.api.read_node(self.node_name, _request_timeout=timeout)
        except ApiException as e:
            if e.status == 404:
                raise NodeGone(f"node {self.node_name!r} not found") from None
            raise
        return _view(node)

    def pods_on_node(self, selector: str, timeout: Any = REQUEST_TIMEOUT) -> list[Pod]:
        """The pods bound to this node whose labels match ``selector``, in every namespace."""
        try:
            found = self.api.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={self.node_name}", label_selector=selector,
                _request_timeout=timeout)
        except ApiException as e:
            if e.status == 403:
                raise PodsForbidden(
                    "the service account may not list pods, which BLOCKING_POD_SELECTOR needs: install "
                    "deploy/components/blocking-pods (or unset BLOCKING_POD_SELECTOR)") from None
            raise
        return [Pod(p.metadata.namespace, p.metadata.name, (p.status and p.status.phase) or "Unknown")
                for p in found.items]

    def write(self, seen: NodeView, patch: Patch, timeout: Any = REQUEST_TIMEOUT) -> None:
        """One patch, conditional on what the decision read; NodeChanged when that has changed.

        A JSON patch whose tests check our data only (see ``json_patch``), so the kubelet's status
        updates, ten a second on a busy node, do not make every write lose. A node with no annotations
        at all gets a merge patch with a resourceVersion precondition instead: a JSON patch cannot
        create the map without an `add` of the whole map, which would drop any annotation another
        writer added since our read. Kubelets annotate every node they register, so this is a test
        cluster's case and never the busy node's.
        """
        body: list[dict[str, Any]] | dict[str, Any]
        if seen.annotations:
            body = json_patch(seen, patch)
        else:
            # The client sends a dict as a strategic-merge patch; for these fields (annotations, with
            # null deleting a key, and spec.unschedulable) it means the same as a JSON merge patch.
            body = {"metadata": {"resourceVersion": seen.resource_version, "annotations": patch.annotations}}
            if patch.unschedulable is not None:
                body["spec"] = {"unschedulable": patch.unschedulable}
        try:
            self.api.patch_node(self.node_name, body, _request_timeout=timeout)
        except ApiException as e:
            if e.status == 404:
                raise NodeGone(f"node {self.node_name!r} not found") from None
            if _not_applied(e):
                raise NodeChanged(f"node {self.node_name} changed since it was read: the JSON patch's tests "
                                  "failed (422)") from None
            raise

    def event(self, reason: str, message: str, warning: bool = False, timeout: Any = EVENT_TIMEOUT) -> None:
        """Best effort: an Event on the node (kubectl describe node shows it); never fails a step."""
        now = now_rfc3339()
        body = {
            "metadata": {"generateName": f"{self.node_name}.fsm-cleaner."},
            "involvedObject": {"kind": "Node", "name": self.node_name, "uid": self.node_name,
                               "apiVersion": "v1"},
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": "fsm-cleaner", "host": self.node_name},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.api.create_namespaced_event(self.events_namespace, body, _request_timeout=timeout)
        except Exception as e:  # events are advisory: a cycle never fails over one, but say so
            log.warning("could not emit event %s: %s", reason, short_error(e))


class Cluster:
    """Reads across the cluster, for `fsm-cleaner status --all`."""

    def __init__(self, api: client.CoreV1Api):
        self.api = api

    def nodes(self, timeout: Any = REQUEST_TIMEOUT) -> list[NodeView]:
        return [_view(n) for n in self.api.list_node(_request_timeout=timeout).items]
